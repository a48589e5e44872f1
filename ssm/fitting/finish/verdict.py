"""Whether a fit converged: evidence that separates a fit on the scan's head from one
that slid, shrank or landed elsewhere, and a message that says which rule failed."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ssm.fitting.prepare.scan import EXPLAINED_WITHIN_MM, scan_explained
from ssm.fitting.problem import FitProblem
from ssm.fitting.state import FitState, residual_stats
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
LANDMARK_FAIL_MM = 10.0  # median distance of the accepted landmarks that flags a fit as failed
UNIT_MATCH = 1.2  # a fitted scale within this factor of a named unit's is named so


@dataclass(frozen=True)
class Verdict:
    """converged : the fit is right by every rule; message : why not ("" when it is);
    scan_explained : the share of the scan within :data:`EXPLAINED_WITHIN_MM` of the fit."""

    converged: bool
    message: str
    scan_explained: float


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
    near = explained_near = None
    if explained < EXPLAINED_MIN:  # the head may be a small part of the scan (a whole body, a room)
        explained_near = scan_explained(scan, verts_scan, model.triangles, pose.scale, reach_mm=EXPLAINED_REACH_MM)
        covered = float(np.mean(distance_mm < EXPLAINED_WITHIN_MM))
        near = explained_near >= EXPLAINED_NEAR_MIN and covered >= COVERED_MIN
    converged = bool(np.isfinite(residual) and residual < RESIDUAL_MAX_MM
                     and n_corr >= MIN_MATCHED * model.n_vertices and (explained >= EXPLAINED_MIN or near))
    message = "" if converged else (f"did not converge: median residual {residual:.2f} mm "
                                    f"over {n_corr} correspondences, {explained:.0%} of the scan within "
                                    f"{EXPLAINED_WITHIN_MM} mm of the fit" + ("" if explained_near is None else
                                                                  f" ({explained_near:.0%} of the scan near it)"))
    if converged and len(kept_landmark_errors_mm) >= 3 and np.median(kept_landmark_errors_mm) > LANDMARK_FAIL_MM:
        # the surface fits, but not where the landmarks say: slid or flipped
        converged = False
        message = (f"did not converge: the landmarks are {np.median(kept_landmark_errors_mm):.1f} mm (median) "
                   f"from the fit; check the landmark order and the scan")
    return Verdict(converged, message, explained)


def units_name(units_per_mm: float) -> str:
    """The named unit within :data:`UNIT_MATCH` of a fitted scale (scan units per mm), else
    'unknown (... mm per unit)'. The fitted scale also holds the subject's size relative
    to the model, so only a clear match is named."""
    best = min(MM_PER_UNIT, key=lambda u: abs(np.log(units_per_mm * MM_PER_UNIT[u])))
    if abs(np.log(units_per_mm * MM_PER_UNIT[best])) <= np.log(UNIT_MATCH):
        return best
    return f"unknown ({1.0 / units_per_mm:.4g} mm per unit)"
