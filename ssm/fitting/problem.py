"""One fitting problem: the model, the scan, the landmarks, the units, the settings, the
device and the random streams, checked and converted once (:func:`fit_problem`)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from ssm.device import device_name
from ssm.errors import InputFileError, SSMError
from ssm.fitting.config import FitConfig
from ssm.fitting.prepare.landmarks import MatchedLandmarks, check_landmarks_on_scan, match_landmarks
from ssm.fitting.prepare.scan import Scan, load_scan, scan_from_arrays
from ssm.geometry.similarity import Similarity
from ssm.models.model_units import in_millimetres, scaled_model
from ssm.models.shape_model import ShapeModel
from ssm.units import check_head_units, mm_per_unit

# Each stage draws from its own stream: a fresh generator each time it is asked for, so a
# stage's draws depend on the seed alone, never on what ran before it. The value is the
# stream's offset from FitConfig.seed. The automatic search keeps the model fit's value:
# its result still depends on its sample on hard scans (a head with hair and no
# landmarks is placed 33 mm off by one sample in four), and a new sample would move
# those fits; the other stages' draws are their own.
STREAMS = {
    "model_fit": 0,  # vertex, scan and solve subsets of every model fit
    "search": 0,  # the automatic search's samples (see above)
    "nicp": 1,  # non-rigid ICP's scan samples
    "pose_refine": 2,  # the final pose's scan samples
    "occlusion": 3,  # the occlusion test's scan samples
    "head_windows": 4,  # head-sized windows over a whole body
    "landmark_init": 5,  # RANSAC samples of the landmark similarity
    "window_search": 7,  # window starts: samples and k-means
    "field_basis": 8,  # Nystroem points of a Euclidean deformation field
}


@dataclass(frozen=True)
class RandomStreams:
    """Named random streams of one fit (:data:`STREAMS`), all from one seed."""

    seed: int = 0

    def rng(self, name: str) -> np.random.Generator:
        """A fresh generator of stream ``name`` (a KeyError names an unknown stream)."""
        return np.random.default_rng(self.seed + STREAMS[name])


@dataclass(frozen=True, eq=False)
class FitProblem:
    """Everything a fit is given, as the stages read it.

    model : the model in mm (a model in other units is scaled: ``model_mm_per_unit``).
    scan : the scan as read, its searches on ``device``.
    landmarks : the given landmarks matched to the model's (scan frame), or None.
    initial_pose : a given model (mm) -> scan pose, or None.
    units : the scan's units as given ("mm", ...), or None to estimate them;
        units_per_mm : scan units per mm, or None.
    fixed_scale : the model -> scan scale when the fit must keep it (units given, a model
        not aligned with scale), else None; the automatic search assumes
        ``units_per_mm`` whenever the units are given.
    config, device, streams : settings, torch device name, random streams.
    expression_model : the model's expression basis (mm), or None.
    """

    model: ShapeModel
    scan: Scan
    landmarks: MatchedLandmarks | None
    initial_pose: Similarity | None
    units: str | None
    units_per_mm: float | None
    fixed_scale: float | None
    config: FitConfig
    device: str
    streams: RandomStreams
    expression_model: ShapeModel | None
    model_mm_per_unit: float

    @property
    def pinned(self) -> bool:
        """Whether landmarks pin the fit along the surface (3 or more given)."""
        return self.landmarks is not None and len(self.landmarks) >= 3

    def kept_landmarks(self, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None] | None:
        """(vertex (L',), points (L', 3) scan frame, covariances (L', 3, 3) or None) of the
        landmarks ``mask`` (L,) keeps (all for None), or None without landmarks."""
        lms = self.landmarks
        if lms is None:
            return None
        keep = np.ones(len(lms), bool) if mask is None else mask
        return lms.vertex[keep], lms.points[keep], None if lms.covariances is None else lms.covariances[keep]

    def n_kept_landmarks(self, mask: np.ndarray | None) -> int:
        """How many landmarks ``mask`` keeps (all for None; 0 without landmarks)."""
        if self.landmarks is None:
            return 0
        return int(len(self.landmarks) if mask is None else np.count_nonzero(mask))


def check_expression_model(model: ShapeModel, expression: ShapeModel) -> None:
    """Raise SSMError unless ``expression`` is an expression model of ``model``'s mesh."""
    if expression.n_vertices != model.n_vertices:
        raise SSMError(f"the expression model has {expression.n_vertices} vertices but the model "
                       f"{model.n_vertices}: it belongs to another mesh")


def fit_problem(model: ShapeModel, scan, landmarks=None, pose=None, units: str | None = "auto",
                device: str = "auto", config: FitConfig | None = None,
                expression_model: ShapeModel | None = None) -> FitProblem:
    """The :class:`FitProblem` of :func:`ssm.fit`'s arguments (see there), checked:
    raises :class:`ssm.errors.SSMError` for unusable input."""
    cfg = config or FitConfig()
    if not isinstance(cfg, FitConfig):
        raise TypeError(f"config must be a FitConfig, got {type(cfg).__name__}")
    if expression_model is not None:
        check_expression_model(model, expression_model)
    model, model_mm = in_millimetres(model)
    if model_mm != 1.0 and expression_model is not None:
        expression_model = scaled_model(expression_model, model_mm)
    sc = _as_scan(scan)
    path = str(landmarks) if isinstance(landmarks, (str, os.PathLike)) else "landmarks"
    lms = _as_landmarks(model, landmarks)
    if lms is not None:
        check_landmarks_on_scan(lms.points, sc.tree, sc.diagonal, path)
    init_pose = _as_pose(pose)
    if init_pose is not None and model_mm != 1.0:  # given for the model's units: from mm
        init_pose = init_pose.compose(Similarity(1.0 / model_mm, np.eye(3), np.zeros(3)))
    dev = device_name(device)
    given_units = None if units in (None, "auto") else units
    units_per_mm = None if given_units is None else 1.0 / mm_per_unit(given_units)
    if given_units is not None:  # a scan in other units than given fails to fit, obscurely
        check_head_units(sc.points, given_units, sc.path, trim=0.01)
    similarity_model = str(model.provenance.get("align", "similarity")) == "similarity"
    fixed_scale = units_per_mm if (units_per_mm is not None and not similarity_model) else None
    return FitProblem(model, sc.on(dev), lms, init_pose, given_units, units_per_mm, fixed_scale, cfg, dev,
                      RandomStreams(cfg.seed), expression_model, model_mm)


def _as_scan(scan) -> Scan:
    if isinstance(scan, Scan):
        return scan
    if isinstance(scan, (str, os.PathLike)):
        return load_scan(scan)
    if isinstance(scan, tuple):
        return scan_from_arrays(*scan)
    return scan_from_arrays(np.asarray(scan))


def _as_landmarks(model: ShapeModel, landmarks) -> MatchedLandmarks | None:
    if landmarks is None or isinstance(landmarks, MatchedLandmarks):
        return landmarks
    from ssm.io.landmarks import LandmarkPoints, read_landmark_points

    path = "landmarks"
    if isinstance(landmarks, (str, os.PathLike)):
        path = str(landmarks)
        landmarks = read_landmark_points(landmarks)
    elif not isinstance(landmarks, LandmarkPoints):
        landmarks = LandmarkPoints(np.asarray(landmarks, dtype=np.float64))
    return match_landmarks(dict(model.landmarks), landmarks, path, model.n_vertices)


def _as_pose(pose) -> Similarity | None:
    if pose is None or isinstance(pose, Similarity):
        return pose
    if isinstance(pose, (str, os.PathLike)):
        try:
            m = np.loadtxt(pose, ndmin=2, delimiter=None)
        except ValueError as exc:
            raise InputFileError(pose, "is not a 4x4 matrix of numbers", "write 4 rows of 4 numbers") from exc
        if m.shape != (4, 4):
            raise InputFileError(pose, f"holds a {m.shape} matrix", "the pose must be 4x4 (model -> scan)")
        try:
            return Similarity.from_matrix(m)
        except ValueError as exc:
            raise InputFileError(pose, str(exc), "give a rotation/scale/translation matrix") from exc
    return Similarity.from_matrix(np.asarray(pose, dtype=np.float64))
