"""Whether a fit converged: evidence that separates a fit on the scan's head from one
that slid, shrank, turned or landed elsewhere, and a message that says which rule failed
and what to try.

The rules, each from what a right fit shows on any scan (the thresholds sit between the
right fits of held-out and real scans and the wrong fits of the tests' cases):
the residuals are small over enough correspondences; the fit explains the scan (or, for
a head that is a small part of it, the scan near it); the model's face lies on the scan;
its normals agree with the scan's there; its coefficients are within the model's reach;
a free scale agrees with the units given; the landmarks used agree with the fit.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from ssm.fitting.model_fit.basis import instance_normals
from ssm.fitting.model_fit.iterate import fit_model
from ssm.fitting.model_fit.schedule import rigid_schedule
from ssm.fitting.prepare.scan import EXPLAINED_WITHIN_MM, scan_explained
from ssm.fitting.problem import FitProblem
from ssm.fitting.state import FitState, residual_stats
from ssm.models.shape_model import ShapeModel
from ssm.units import MM_PER_UNIT

RESIDUAL_MAX_MM = 3.0  # a converged fit's final median residual is below this
MIN_MATCHED = 0.05  # ... over at least this share of the model's vertices
# a converged fit has this share of the scan's points within EXPLAINED_WITHIN_MM of it;
# or, when the head is a small part of the scan (a whole body, a room), this share of the
# points within EXPLAINED_REACH_MM of it and this share of its vertices within
# EXPLAINED_WITHIN_MM of the scan (a fit shrunk onto a small part of the face covers few)
EXPLAINED_MIN = 0.3
EXPLAINED_REACH_MM = 50.0
EXPLAINED_NEAR_MIN = 0.6
COVERED_MIN = 0.2
# the share of the model's face within EXPLAINED_WITHIN_MM of the scan: a profile view
# still shows about 40 % of it; a fit placed on the back of the head, a torso or another
# part of the scan shows far less
FACE_SEEN_MIN = 0.3
FACE_REACH_MM = 30.0  # without face regions, the face is the vertices this near a landmark
# median cosine between the face's normals and the scan's where the face lies on the scan
# (a right fit: 0.99): a fit turned inside out, or mirrored onto the scan, faces the other way
NORMALS_AGREE_MIN = 0.5
# mean square standardised coefficient: about 1 for the model's population, up to about
# 2.5 for real people outside a model's span; far beyond, the model was bent into
# something it does not describe (a slid fit, another kind of head)
COEFF_MEAN_SQUARE_MAX = 4.0
UNIT_SCALE_TOLERANCE = 1.3  # with units given, a free scale further than this from theirs says they are wrong
FREE_SCALE_ITERATIONS = 20  # iterations of the rigid fit that measures the free scale
LANDMARK_FAIL_MM = 10.0  # median distance of the accepted landmarks that flags a fit as failed
UNIT_MATCH = 1.2  # a fitted scale within this factor of a named unit's is named so


@dataclass(frozen=True)
class Verdict:
    """converged : the fit is right by every rule; message : why not, and what to try
    ("" when it is); scan_explained : the share of the scan within
    :data:`EXPLAINED_WITHIN_MM` of the fit; evidence : every measure the rules read;
    face : (F,) the model's face vertices the rules judged (:func:`face_vertices`), or None."""

    converged: bool
    message: str
    scan_explained: float
    evidence: dict
    face: np.ndarray | None = None


def face_vertices(model: ShapeModel) -> np.ndarray | None:
    """(F,) the model's face: its ``narrow_face`` or ``face`` region, else the vertices
    within :data:`FACE_REACH_MM` of a landmark on the mean, else None."""
    for name in ("narrow_face", "face"):
        if name in model.regions and len(model.regions[name]):
            return np.asarray(model.regions[name], np.int64)
    if model.landmarks:
        mean = np.asarray(model.mean, np.float64)
        lm = mean[np.fromiter(model.landmarks.values(), np.int64)]
        d = np.min(np.linalg.norm(mean[:, None] - lm[None], axis=2), axis=1)
        return np.flatnonzero(d < FACE_REACH_MM)
    return None


def verdict(problem: FitProblem, state: FitState, verts_scan: np.ndarray, distance_mm: np.ndarray,
            kept_landmark_errors_mm: list[float]) -> Verdict:
    """The verdict on a finished fit: ``verts_scan`` (N, 3) its vertices in the scan
    frame, ``distance_mm`` (N,) their distances to the scan, ``kept_landmark_errors_mm``
    the distances of the landmarks the fit used."""
    model, scan, pose = problem.model, state.scan, state.pose
    corr = state.correspondences
    _, residual = residual_stats([] if corr is None else corr.distance_mm)
    n_corr = 0 if corr is None else len(corr)
    explained = scan_explained(scan, verts_scan, model.triangles, pose.scale)
    evidence = {"residual_median_mm": residual, "correspondences": n_corr, "scan_explained": explained,
                "coefficient_mean_square": float(np.mean(np.square(state.coeffs))) if len(state.coeffs) else 0.0}
    near = explained_near = None
    if explained < EXPLAINED_MIN:  # the head may be a small part of the scan (a whole body, a room)
        explained_near = scan_explained(scan, verts_scan, model.triangles, pose.scale, reach_mm=EXPLAINED_REACH_MM)
        covered = float(np.mean(distance_mm < EXPLAINED_WITHIN_MM))
        near = explained_near >= EXPLAINED_NEAR_MIN and covered >= COVERED_MIN
        evidence["scan_explained_near"] = explained_near
    face = face_vertices(model)
    if face is not None:
        seen = distance_mm[face] < EXPLAINED_WITHIN_MM
        evidence["face_seen"] = float(seen.mean())
        evidence["face_distance_median_mm"] = float(np.median(distance_mm[face]))
        if len(scan.faces) and model.triangles is not None and seen.sum() >= 10:
            evidence["face_normals_agree"] = _normals_agreement(model, state, verts_scan, face[seen])
    if problem.units_per_mm is not None:
        evidence["scale_to_units"] = free_scale(problem, state) / problem.units_per_mm

    problems = []
    if not (np.isfinite(residual) and residual < RESIDUAL_MAX_MM and n_corr >= MIN_MATCHED * model.n_vertices):
        problems.append(f"median residual {residual:.2f} mm over {n_corr} correspondences")
    if not (explained >= EXPLAINED_MIN or near):
        problems.append(f"{explained:.0%} of the scan within {EXPLAINED_WITHIN_MM} mm of the fit"
                        + ("" if explained_near is None else f" ({explained_near:.0%} of the scan near it)"))
    if evidence.get("face_seen", 1.0) < FACE_SEEN_MIN:
        problems.append(f"the model's face is not on the scan (only {evidence['face_seen']:.0%} of it within "
                        f"{EXPLAINED_WITHIN_MM} mm): the fit is on another part of it; give landmarks (--landmarks) "
                        f"or a pose (--pose)")
    if evidence.get("face_normals_agree", 1.0) < NORMALS_AGREE_MIN:
        problems.append("the fit faces the other way from the scan (turned or mirrored): check the landmarks' "
                        "order and left / right")
    if evidence["coefficient_mean_square"] > COEFF_MEAN_SQUARE_MAX:
        problems.append(f"the fitted shape is far outside the model (mean square coefficient "
                        f"{evidence['coefficient_mean_square']:.1f}): a slid fit, or a scan this model does not "
                        f"describe; give landmarks or another model")
    ratio = evidence.get("scale_to_units")
    if ratio is not None and not 1.0 / UNIT_SCALE_TOLERANCE <= ratio <= UNIT_SCALE_TOLERANCE:
        problems.append(f"the scan is {ratio:.2g} times a head's size in {problem.units}: try --units auto")
    if not problems and len(kept_landmark_errors_mm) >= 3 and np.median(kept_landmark_errors_mm) > LANDMARK_FAIL_MM:
        # the surface fits, but not where the landmarks say: slid or flipped
        problems.append(f"the landmarks are {np.median(kept_landmark_errors_mm):.1f} mm (median) from the fit; "
                        f"check the landmark order and the scan")
    message = "" if not problems else "did not converge: " + "; ".join(problems)
    return Verdict(not problems, message, explained, evidence, face)


def free_scale(problem: FitProblem, state: FitState) -> float:
    """The model -> scan scale (scan units per mm) of the fit's pose, or, where the units
    fix it (a model aligned without scale), the scale the model's mean takes on the scan
    when it is free: a rigid fit from the final pose with the scale let go
    (:data:`FREE_SCALE_ITERATIONS`). A head in the units given takes about their scale;
    one in other units (a scan in mm read as cm) pulls far from it."""
    if problem.fixed_scale is None:
        return float(state.pose.scale)
    free = dataclasses.replace(problem, fixed_scale=None)
    fitted = fit_model(free, state, rigid_schedule(problem.config.model_fit, FREE_SCALE_ITERATIONS),
                       landmarks=False, exact_last=False)
    return float(fitted.state.pose.scale)


def _normals_agreement(model: ShapeModel, state: FitState, verts_scan: np.ndarray, vertices: np.ndarray) -> float:
    """Median cosine between the fit's normals at ``vertices`` and those of the scan
    points nearest them (scan frame)."""
    normals = instance_normals(model, state.shape)[vertices] @ state.pose.rotation.T
    _, j = state.scan.tree.query(verts_scan[vertices])
    scan_normals = state.scan.normals[j]
    known = np.linalg.norm(scan_normals, axis=1) > 0
    if known.sum() < 10:
        return 1.0
    return float(np.median(np.einsum("vd,vd->v", normals[known], scan_normals[known])))


def units_name(units_per_mm: float) -> str:
    """The named unit within :data:`UNIT_MATCH` of a fitted scale (scan units per mm), else
    'unknown (... mm per unit)'. The fitted scale also holds the subject's size relative
    to the model, so only a clear match is named."""
    best = min(MM_PER_UNIT, key=lambda u: abs(np.log(units_per_mm * MM_PER_UNIT[u])))
    if abs(np.log(units_per_mm * MM_PER_UNIT[best])) <= np.log(UNIT_MATCH):
        return best
    return f"unknown ({1.0 / units_per_mm:.4g} mm per unit)"
