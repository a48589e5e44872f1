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

import numpy as np

from ssm.fitting.config import FitConfig
from ssm.fitting.correspondence import Correspondences, robust_sigma_mm
from ssm.geometry.similarity import Similarity
from ssm.models.shape_model import ShapeModel


def fit_stddev(model: ShapeModel, corr: Correspondences, pose: Similarity, x_model: np.ndarray,
               x_final: np.ndarray, correlation: float = FitConfig.uncertainty_correlation) -> np.ndarray:
    """(N,) RMS 3D standard deviation (mm) of each fitted vertex.

    corr : final correspondences (targets in the scan frame); pose : model -> scan;
    x_model : (N, 3) model-only fit; x_final : (N, 3) final fit (model frame, mm).
    """
    n = model.n_vertices
    if corr is None or len(corr) < 3 or model.n_components == 0:
        return np.full(n, np.nan)
    from ssm.fitting.model_fit import scaled_basis

    s2 = max(robust_sigma_mm(corr.distance_mm) ** 2, 0.05 ** 2)  # per-axis scan noise, mm^2
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
