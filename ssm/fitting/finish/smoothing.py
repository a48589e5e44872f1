"""Smoothing where the fit is uncertain (torch, on the fit's device); what the scan
measured and the landmarks keep their place."""

from __future__ import annotations

import time

import numpy as np

from ssm.fitting.model_fit.correspondence import robust_sigma_mm
from ssm.fitting.prepare.scan import Scan
from ssm.fitting.problem import FitProblem
from ssm.fitting.state import FitState, StageReport, StageResult
from ssm.geometry.torch_ops import smooth_uncertain

MEASURED_MIN_MM = 0.5  # a vertex this close to the scan was measured by it, whatever the noise
MEASURED_SIGMAS = 3.0  # ... or this many robust sigmas of the final residuals


def smoothing(problem: FitProblem, state: FitState) -> StageResult:
    """Taubin smoothing (``smooth_iterations``) weighted by ``state.stddev``, the
    vertices the scan measured (:func:`measured_vertices`) and the landmarks pinned."""
    t0 = time.perf_counter()
    pins = measured_vertices(state.pose.apply(state.shape), state.scan, state.pose.scale, state.correspondences)
    if problem.landmarks is not None:
        pins[problem.landmarks.vertex] = True
    iterations = problem.config.smoothing.smooth_iterations
    shape = smooth_uncertain(state.shape, problem.model.triangles, state.stddev, iterations, pins, problem.device)
    return StageResult(state.replace(shape=shape), StageReport(
        "smoothing", time.perf_counter() - t0, float("nan"), float("nan"), 0,
        extra={"iterations": iterations, "measured_fraction": round(float(pins.mean()), 4)}))


def measured_vertices(points: np.ndarray, scan: Scan, units_per_mm: float, corr) -> np.ndarray:
    """(N,) bool: the vertices the scan measured, within its noise of a scan point.

    points : (N, 3) fitted vertices, scan frame; units_per_mm : the pose's scale; corr :
    the final correspondences, whose robust residual gives the noise sigma. Measured is
    within :data:`MEASURED_SIGMAS` sigma of the nearest scan point (at least
    :data:`MEASURED_MIN_MM`): a KD-tree query, where the surface distance would cost a
    pass over every triangle of a dense scan.
    """
    sigma = robust_sigma_mm(corr.distance_mm) if corr is not None and len(corr) else 0.0
    d, _ = scan.tree.query(points, workers=-1)
    return d / units_per_mm < max(MEASURED_SIGMAS * sigma, MEASURED_MIN_MM)
