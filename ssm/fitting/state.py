"""What the fitting stages hand on (:class:`FitState`) and what each returns
(:class:`StageResult`: the new state and the stage's :class:`StageReport`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from ssm.fitting.model_fit.correspondence import Correspondences
from ssm.fitting.prepare.scan import Scan
from ssm.geometry.similarity import Similarity


@dataclass(frozen=True)
class StageReport:
    """One stage: name, wall time (s), residuals (mm) and stage-specific extras."""

    name: str
    seconds: float
    residual_mean_mm: float
    residual_median_mm: float
    n_correspondences: int
    converged: bool = True
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class FitState:
    """The fit so far; every stage takes one and returns a new one.

    scan : the scan with its normals' sides taken from the fit so far (its frame and units).
    pose : model (mm) -> scan similarity.
    coeffs : (K,) float64 standardised identity coefficients.
    landmark_mask : (L,) bool, the given landmarks the fit uses (the robust
        initialisation's inliers), or None for all of them.
    correspondences : the last matching's, in the scan frame, or None.
    occluded : (N,) bool, vertices covered by something other than skin, or None.
    identity : (N, 3) float64 model frame, mm: the identity instance, or None before
        the model fit.
    model_shape : (N, 3) float64 model frame, mm: the identity with what the
        refinements' fields added (a deformation field, an expression, the landmark
        warp): where non-rigid ICP starts; None before the model fit.
    shape : (N, 3) float64 model frame, mm: the fitted shape (``model_shape`` plus
        non-rigid ICP's detail, smoothed), or None before the model fit.
    region : (N,) bool, where the landmark warp found the model off, or None.
    field_variance : (N,) mm^2, the landmark warp's posterior variance there, or None.
    expression_coeffs : (E,) standardised coefficients of the model's expression
        basis when one was fitted, else None.
    stddev : (N,) mm, RMS 3D standard deviation of each vertex, or None before it is known.
    initialised_by : how the start was found: "pose" (given), "landmarks" or "search".
    """

    scan: Scan
    pose: Similarity
    coeffs: np.ndarray
    landmark_mask: np.ndarray | None = None
    correspondences: Correspondences | None = None
    occluded: np.ndarray | None = None
    identity: np.ndarray | None = None
    model_shape: np.ndarray | None = None
    shape: np.ndarray | None = None
    region: np.ndarray | None = None
    field_variance: np.ndarray | None = None
    expression_coeffs: np.ndarray | None = None
    stddev: np.ndarray | None = None
    initialised_by: str = "pose"

    def replace(self, **changes) -> "FitState":
        """A copy with ``changes`` (field name -> value)."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True, eq=False)
class StageResult:
    """What a stage returns: the state after it and its report."""

    state: FitState
    report: StageReport


def residual_stats(d: np.ndarray) -> tuple[float, float]:
    """(mean, median) of residual distances (mm), NaN-safe; NaN for none."""
    d = np.asarray(d, dtype=np.float64)
    d = d[np.isfinite(d)]
    if not d.size:
        return float("nan"), float("nan")
    return float(d.mean()), float(np.median(d))


def correspondence_report(name: str, seconds: float, state: FitState, converged: bool = True,
                          extra: dict | None = None) -> StageReport:
    """A stage's report with the residuals of ``state``'s correspondences."""
    corr = state.correspondences
    mean, med = residual_stats([] if corr is None else corr.distance_mm)
    return StageReport(name, seconds, mean, med, 0 if corr is None else len(corr), converged, extra or {})
