"""Low-frequency eigenfunctions of a mesh's Laplace-Beltrami operator (manifold harmonics).

They give kernels that follow the surface rather than space: two sheets a millimetre
apart but joined only far away (the upper and lower lip of a closed mouth, an eyelid
over the eye) are far apart for the heat kernel ``sum_i exp(-t lam_i) phi_i phi_i^T``,
and close for a Gaussian of the Euclidean distance.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as sla
import torch

from ssm.geometry.mesh_ops import face_normals
from ssm.geometry.torch_ops import cotangent_laplacian

log = logging.getLogger(__name__)

MAX_EIGENPAIRS = 600  # a cap on the eigenproblem's size: a smoother kernel beyond it


@dataclass(frozen=True)
class Harmonics:
    """eigenvalues : (k,) ascending, 1/mm^2; functions : (N, k) mass-orthonormal
    (``phi^T diag(mass) phi = I``, mass in mm^2), so that the heat kernel of time ``t``
    (mm^2) is ``phi diag(exp(-t lam)) phi^T`` per unit area."""

    eigenvalues: np.ndarray
    functions: np.ndarray


def laplace_beltrami(vertices: np.ndarray, triangles: np.ndarray) -> tuple[sp.csr_matrix, np.ndarray]:
    """Cotangent stiffness ``L`` ((N, N) csr, positive semi-definite, 1 per unit) and lumped
    (barycentric) vertex areas ``mass`` ((N,) mm^2; vertices in no triangle get a tiny
    positive area so the eigenproblem stays well posed). vertices : (N, 3) mm."""
    v = np.asarray(vertices, np.float64)
    f = np.asarray(triangles, np.int64)
    lap = cotangent_laplacian(torch.from_numpy(v.copy()), torch.from_numpy(f.copy()))
    (i, j), w = lap.indices().numpy(), lap.values().numpy()
    stiffness = -sp.csr_matrix((w, (i, j)), shape=(len(v), len(v)))
    area = 0.5 * np.linalg.norm(face_normals(v, f), axis=1)
    mass = np.bincount(f.ravel(), np.repeat(area / 3.0, 3), minlength=len(v))
    floor = 1e-9 * max(float(mass.mean()), 1e-12)
    return stiffness, np.maximum(mass, floor)


def low_harmonics(vertices: np.ndarray, triangles: np.ndarray, max_eigenvalue: float) -> Harmonics:
    """The eigenpairs ``L phi = lam M phi`` with ``lam <= max_eigenvalue`` (1/mm^2).

    Weyl's law (``count ~ area * lam / (4 pi)``) sizes a shift-invert Lanczos solve,
    repeated larger if it falls short; at most :data:`MAX_EIGENPAIRS` are kept.
    About 0.5 s for 90 eigenpairs on an 11k-vertex head.
    """
    stiffness, mass = laplace_beltrami(vertices, triangles)
    n = len(mass)
    k = int(1.2 * mass.sum() * max_eigenvalue / (4.0 * np.pi)) + 12
    op, m = stiffness.tocsc(), sp.diags(mass).tocsc()
    # a fixed start vector: ARPACK's random one makes every run's eigenvectors differ in
    # the last digits, and the fits that use them would differ from run to run
    v0 = np.random.default_rng(0).standard_normal(n)
    while True:
        k = min(k, MAX_EIGENPAIRS, n - 2)
        lam, phi = sla.eigsh(op, k=k, M=m, sigma=-1e-3 * max_eigenvalue, which="LM", v0=v0)
        order = np.argsort(lam)
        lam, phi = lam[order], phi[:, order]
        if lam[-1] > max_eigenvalue or k >= min(MAX_EIGENPAIRS, n - 2):
            break
        k = int(1.5 * k)
    if lam[-1] <= max_eigenvalue:
        log.info("kept the %d lowest manifold harmonics (up to %.3g/mm^2 of %.3g asked): a smoother kernel",
                 len(lam), lam[-1], max_eigenvalue)
    keep = lam <= max_eigenvalue
    return Harmonics(np.clip(lam[keep], 0.0, None), phi[:, keep])
