"""Per-vertex uncertainty of a fit: the model posterior given the final correspondences.

The shape model is conditioned (``ShapeModel.posterior``) on the final correspondences,
each with the scan noise estimated from the residuals; its marginal per-vertex
covariance is small where the scan saw the surface and large where it did not (the back
of the head in a frontal scan). Detail outside the model's span is uncertain by about
the size of the detail non-rigid ICP had to add where the scan was seen, so that
variance is added where it was not. Correspondences from neighbouring scan points are
not independent; ``correlation`` (effective observations per independent one) keeps
the posterior from being over-confident.

Reported: ``stddev_mm`` (N,) = sqrt(E|error|^2), the RMS 3D error to expect at each
vertex, in mm.
"""

from __future__ import annotations

import time

import numpy as np

from ssm.fitting.config import UncertaintyConfig
from ssm.fitting.model_fit.basis import scaled_basis
from ssm.fitting.model_fit.correspondence import Correspondences, robust_sigma_mm
from ssm.fitting.problem import FitProblem
from ssm.fitting.refine.expression_model import expression_augmented
from ssm.fitting.state import FitState, StageReport, StageResult
from ssm.geometry.similarity import Similarity
from ssm.models.shape_model import ShapeModel

MIN_NOISE_MM = 0.05  # the scan noise never counts as less: no scanner is more exact


def uncertainty(problem: FitProblem, state: FitState) -> StageResult:
    """The state's ``stddev``: the posterior of the model (with the expression basis
    when one was fitted) around the model shape, given the final correspondences, plus
    the landmark warp's variance in its region."""
    t0 = time.perf_counter()
    corr, correlation = state.correspondences, problem.config.uncertainty.uncertainty_correlation
    if state.expression_coeffs is not None:  # the posterior of identity and expression, around their fit
        model = expression_augmented(problem.model, problem.expression_model)
        stddev = fit_stddev(model, corr, state.pose, state.model_shape, state.shape, correlation)
    else:
        stddev = fit_stddev(problem.model, corr, state.pose, state.identity, state.shape, correlation)
    if state.field_variance is not None:  # where the model does not hold, the landmarks' GP says how well
        stddev = np.sqrt(stddev ** 2 + state.field_variance)
    return StageResult(state.replace(stddev=stddev), StageReport(
        "uncertainty", time.perf_counter() - t0, float("nan"), float("nan"), 0 if corr is None else len(corr),
        extra={"stddev_median_mm": float(np.nanmedian(stddev))}))


def fit_stddev(model: ShapeModel, corr: Correspondences, pose: Similarity, x_model: np.ndarray,
               x_final: np.ndarray, correlation: float = UncertaintyConfig.uncertainty_correlation) -> np.ndarray:
    """(N,) RMS 3D standard deviation (mm) of each fitted vertex.

    corr : final correspondences (targets in the scan frame); pose : model -> scan;
    x_model : (N, 3) model-only fit; x_final : (N, 3) final fit (model frame, mm).
    """
    n = model.n_vertices
    if corr is None or len(corr) < 3 or model.n_components == 0:
        return np.full(n, np.nan)
    s2 = max(robust_sigma_mm(corr.distance_mm) ** 2, MIN_NOISE_MM ** 2)  # per-axis scan noise, mm^2
    # posterior covariance of the coefficients, S = (I + Q^T W Q / s2)^-1 (the same as
    # ShapeModel.posterior, without forming the posterior model), then the marginal
    # E|e_v|^2 = trace(Phi_v S Phi_v^T) for every vertex, in float32 products
    phi = scaled_basis(model)  # (N, 3, K)
    k = phi.shape[2]
    q = phi[corr.vertex].reshape(-1, k)
    pw = np.repeat(corr.weight / (correlation * s2), 3).astype(np.float32)
    a = np.eye(k) + ((q * pw[:, None]).T @ q).astype(np.float64)
    s_post = np.linalg.inv(a).astype(np.float32)
    pf = phi.reshape(-1, k)
    var_model = ((pf @ s_post) * pf).sum(1).reshape(n, 3).sum(1).astype(np.float64)  # E|e|^2, model part
    seen = np.zeros(n, bool)
    seen[corr.vertex] = True
    detail = x_final - x_model
    var_detail = float((detail[seen] ** 2).sum(1).mean()) if seen.any() else 0.0
    var_detail = max(var_detail, 3.0 * model.noise_variance)
    # seen vertices: the posterior holds what the data left open (the scan noise is
    # averaged over many points); unseen ones also lack the detail the model cannot span
    var = var_model + np.where(seen, 0.0, var_detail)
    return np.sqrt(var)
