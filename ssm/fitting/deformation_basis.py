"""A smooth deformation basis over part of the model, to fit it jointly with the identity.

Where a subject leaves the model's span over a region (an expression in front of an
identity model), the identity either bends to explain it, or, fitted without the region,
loses the data there. Augmenting the model with a smooth random field over the region,
in the spirit of Gaussian-process morphable models (Luethi et al. 2018, the augmented
kernels of scalismo), lets one fit explain the region with both: the identity from the
whole scan and the landmarks, the departure from it by the field::

    x = mean + U diag(sd) c + taper(v) * sum_j b_j psi_j(v),   c, b ~ N(0, I)

``psi`` is a low-rank (Nystroem) expansion of a Gaussian kernel of length ``length_mm``
and amplitude ``amplitude_mm``, one independent field per axis, and ``taper`` (1 in the
region, a Gaussian of ``taper_mm`` outside) keeps it off the rest of the head.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from ssm.fitting.model_fit import scaled_basis
from ssm.models.shape_model import ShapeModel

NYSTROEM_POINTS = 600  # kernel points of the low-rank expansion (a 600 x 600 eigenproblem)
EIGEN_TOL = 1e-3  # eigenfunctions below this share of the largest eigenvalue are dropped


def _gaussian(a: np.ndarray, b: np.ndarray, length: float) -> np.ndarray:
    """(len(a), len(b)) Gaussian kernel between point sets, via squared norms (no (A, B, 3))."""
    d2 = (a ** 2).sum(1)[:, None] + (b ** 2).sum(1)[None] - 2.0 * a @ b.T
    return np.exp(-0.5 * np.clip(d2, 0.0, None) / length ** 2)


def smooth_deformation_basis(vertices: np.ndarray, region: np.ndarray, length_mm: float, taper_mm: float,
                             rng: np.random.Generator, points: int = NYSTROEM_POINTS) -> np.ndarray:
    """(N, M) unit-variance scalar fields ``taper * psi_j`` over ``vertices``.

    vertices : (N, 3) the fitted shape, model frame, mm; region : (N,) bool, where the
    field is free (taper 1). A sum ``sum_j b_j field_j`` with ``b ~ N(0, I)`` is a
    Gaussian process with the Gaussian kernel of ``length_mm`` (variance 1) inside the
    region, fading as ``exp(-d^2 / (2 taper_mm^2))`` with the distance ``d`` from it.
    ``M`` is the number of eigenfunctions kept (about (extent / length)^2).
    """
    v = np.asarray(vertices, np.float64)
    out = np.zeros((len(v), 0))
    if not region.any():
        return out
    d, _ = cKDTree(v[region]).query(v)
    taper = np.exp(-0.5 * (d / taper_mm) ** 2)
    support = np.flatnonzero(taper > 1e-3)
    anchors = support if len(support) <= points else rng.choice(support, points, replace=False)
    lam, q = np.linalg.eigh(_gaussian(v[anchors], v[anchors], length_mm))
    keep = lam > EIGEN_TOL * lam[-1]
    lam, q = lam[keep], q[:, keep]
    fields = np.zeros((len(v), len(lam)))
    # Nystroem: k(v, anchors) K^-1 k(anchors, w) = sum_j psi_j(v) psi_j(w), psi = k Q / sqrt(lam)
    fields[support] = (_gaussian(v[support], v[anchors], length_mm) @ q) / np.sqrt(lam) * taper[support, None]
    return fields


def augmented_model(model: ShapeModel, fields: np.ndarray, amplitude_mm: float) -> ShapeModel:
    """The model with ``3 M`` more components: ``amplitude_mm * fields`` (N, M) along x, y, z.

    The first K components are the model's, with the same standardised coefficients, so
    ``coeffs[:K]`` of a fit of the augmented model are the identity's. The basis is kept
    in float32, already scaled (variances 1), and shared with :func:`scaled_basis`;
    instances come from :func:`ssm.fitting.model_fit.basis_instance`.
    """
    phi = scaled_basis(model)  # (N, 3, K) float32
    n, _, k = phi.shape
    m = fields.shape[1]
    aug = np.zeros((n, 3, k + 3 * m), np.float32)
    aug[:, :, :k] = phi
    for axis in range(3):
        aug[:, axis, k + axis * m:k + (axis + 1) * m] = amplitude_mm * fields
    aug.setflags(write=False)
    out = ShapeModel(model.mean, aug.reshape(3 * n, -1), np.ones(k + 3 * m), triangles=model.triangles,
                     landmarks=model.landmarks, units=model.units)
    object.__setattr__(out, "_scaled_basis_f32", aug)  # the cache scaled_basis reads: no float64 copy
    return out
