"""The result of a fit: the model's topology on the scan, with how it got there."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import numpy as np

from ssm.fitting.state import StageReport
from ssm.geometry.similarity import Similarity


@dataclass(frozen=True, eq=False)
class FitResult:
    """A fitted mesh in the model's topology.

    vertices : (N, 3) float64, the scan's frame and units.
    vertices_model : (N, 3) float64, model frame, mm (pose removed).
    model_fit_model : (N, 3) model frame, the model instance alone (no NICP detail).
    triangles : (M, 3) model triangles.
    pose : Similarity model (mm) -> scan frame; its scale is scan units per mm times
        the subject's size relative to the model (for similarity-aligned models).
    coefficients : (K,) standardised model coefficients.
    distance_mm : (N,) distance of each fitted vertex to the scan surface, mm.
    stages : per-stage reports (residuals in mm, seconds).
    landmark_errors_mm : model landmark name -> distance to the scan landmark (mm).
    rejected_landmarks : landmarks the robust initialisation left out.
    units : the scan's units (given, or estimated from the fitted scale).
    converged : False when the fit did not converge (the result is still written).
    stddev_mm : (N,) RMS 3D standard deviation of each vertex (mm), from the model
        posterior given the final correspondences (see ``ssm.fitting.finish.uncertainty``).
    occluded : (N,) bool, vertices where the scan is something other than skin (hair,
        a cap); they follow the model fit (see ``ssm.fitting.refine.occlusion``). None when
        no such region was found.
    expression_coefficients : (E,) standardised coefficients of the model's expression
        basis when the fit used one (``ssm.fitting.refine.expression_model``), else None;
        ``model_fit_model`` is then the identity alone (the neutral face).
    neutral_model : (N, 3) model frame, mm, the subject without that expression (the
        identity plus the detail non-rigid ICP added), or None.
    landmark_vertices : the model's landmarks, name -> vertex index: where
        :attr:`landmarks` reads the fitted ones (automatic landmarking of the scan).
    vertex_colors : (N, 3) float32 RGB in [0, 1], the scan's colours on the fit (filled
        smoothly where the scan did not see it; :mod:`ssm.fitting.outputs.colors`), or
        None for a scan without colours.
    model_mm_per_unit : 1 for a model in mm; for a model in other units, the factor it
        was scaled to mm by for the fit (:mod:`ssm.models.model_units`): every "model
        frame" array above and the pose are then in mm, not in the model's units.
    given_landmarks : the landmarks given to the fit, name -> (3,) scan frame and units.
    face_vertices : (F,) the model's face (its face region, or the vertices near its
        landmarks), or None.
    evidence : what the verdict read (:mod:`ssm.fitting.finish.verdict`): the face's
        share on the scan, its normals' agreement, the coefficients' mean square, the free
        scale against the units given, ...
    expression_weights : blendshape name -> weight in the shapes' range (0 to 1 for
        ARKit's), when the expression basis was the model's named blendshapes and an
        expression was fitted; else None.
    scan_explained : share of the scan's points (a sample of up to 5,000, stray points
        left out) within 2.5 mm of the fitted surface, or None when not measured: how
        well the fit covers what was scanned (``distance_mm`` is large on the parts of
        the model the scan did not see, the back of a head behind a frontal scan).
    """

    vertices: np.ndarray
    vertices_model: np.ndarray
    model_fit_model: np.ndarray
    triangles: np.ndarray | None
    pose: Similarity
    coefficients: np.ndarray
    distance_mm: np.ndarray
    stages: tuple[StageReport, ...]
    landmark_errors_mm: dict = field(default_factory=dict)
    rejected_landmarks: tuple[str, ...] = ()
    units: str = "mm"
    units_estimated: bool = False
    converged: bool = True
    message: str = ""
    stddev_mm: np.ndarray | None = None
    occluded: np.ndarray | None = None
    expression_coefficients: np.ndarray | None = None
    neutral_model: np.ndarray | None = None
    landmark_vertices: Mapping[str, int] = field(default_factory=dict)
    vertex_colors: np.ndarray | None = None
    model_mm_per_unit: float = 1.0
    scan_explained: float | None = None
    expression_weights: Mapping[str, float] | None = None
    evidence: Mapping[str, float] = field(default_factory=dict)
    given_landmarks: Mapping[str, np.ndarray] = field(default_factory=dict)
    face_vertices: np.ndarray | None = None

    @property
    def vertex_attributes(self) -> dict:
        """Per-vertex values written into the PLY files (``occluded`` as 0 / 1)."""
        out = {"distance_mm": self.distance_mm}
        if self.stddev_mm is not None:
            out["stddev_mm"] = self.stddev_mm
        out["occluded"] = (np.zeros(len(self.vertices)) if self.occluded is None
                           else self.occluded.astype(np.float64))
        return out

    @property
    def landmarks(self) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
        """The model's landmarks on the fit: names (L), positions (L, 3) in the scan's
        frame and units, and each one's RMS 3D standard deviation (L,) in the scan's
        units (NaN where unknown), from :attr:`stddev_mm`."""
        names = tuple(self.landmark_vertices)
        idx = np.fromiter(self.landmark_vertices.values(), dtype=np.int64, count=len(names))
        sd = np.full(len(idx), np.nan) if self.stddev_mm is None else self.stddev_mm[idx] * self.pose.scale
        return names, self.vertices[idx], sd

    @property
    def face_distance_mm(self) -> float | None:
        """Median distance (mm) of the model's face (:attr:`face_vertices`) to the scan, or None."""
        if self.face_vertices is None:
            return None
        return float(np.nanmedian(self.distance_mm[self.face_vertices]))

    @property
    def seconds(self) -> float:
        return float(sum(s.seconds for s in self.stages))

    def summary(self) -> dict:
        """JSON-serialisable summary (what fit.json holds)."""
        d = self.distance_mm
        finite = d[np.isfinite(d)]
        return {
            "converged": self.converged,
            "message": self.message,
            "units": self.units,
            "units_estimated": self.units_estimated,
            "model_mm_per_unit": self.model_mm_per_unit,
            "pose_model_to_scan": self.pose.matrix().tolist(),
            "scale": self.pose.scale,
            "coefficients": [float(c) for c in self.coefficients],
            "mahalanobis": float(np.linalg.norm(self.coefficients)),
            "expression_coefficients": None if self.expression_coefficients is None
            else [float(c) for c in self.expression_coefficients],
            "expression_weights": None if self.expression_weights is None else dict(self.expression_weights),
            "face_distance_to_scan_mm": self.face_distance_mm,
            "distance_to_scan_mm": {
                "mean": float(finite.mean()) if finite.size else None,
                "median": float(np.median(finite)) if finite.size else None,
                "p95": float(np.quantile(finite, 0.95)) if finite.size else None,
                "within_1mm": float((finite < 1.0).mean()) if finite.size else None,
            },
            "scan_within_2.5mm": self.scan_explained,
            "verdict_evidence": {k: float(v) for k, v in self.evidence.items()},
            "stddev_mm": None if self.stddev_mm is None else {
                "median": float(np.nanmedian(self.stddev_mm)),
                "median_where_seen": float(np.nanmedian(self.stddev_mm[d < 1.0])) if (d < 1.0).any() else None,
                "median_where_unseen": float(np.nanmedian(self.stddev_mm[~(d < 1.0)])) if (~(d < 1.0)).any()
                else None,
            },
            "occluded_fraction": 0.0 if self.occluded is None else float(self.occluded.mean()),
            "landmark_errors_mm": {k: float(v) for k, v in self.landmark_errors_mm.items()},
            "rejected_landmarks": list(self.rejected_landmarks),
            "fitted_landmarks": self._landmark_summary(),
            "stages": [asdict(s) for s in self.stages],
            "seconds": self.seconds,
        }

    def _landmark_summary(self) -> dict:
        """name -> {"position": scan frame and units, "stddev_mm": RMS 3D, mm or None}."""
        names, pts, sd = self.landmarks
        return {n: {"position": [float(c) for c in p],
                    "stddev_mm": float(s / self.pose.scale) if np.isfinite(s) else None}
                for n, p, s in zip(names, pts, sd)}
