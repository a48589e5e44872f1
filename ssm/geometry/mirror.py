"""Mirror symmetry of a shape: the plane a head or face is (nearly) symmetric about, and
which vertex lies at each vertex's mirror image.

Faces are nearly symmetric, and so are most of their expressions (a smile on both
sides, an open jaw, raised brows). :func:`find_mirror` finds the plane from the shape
alone (no landmark names, no axis conventions), so that a deformation field can be
told that what happens on one side tends to happen on the other
(:mod:`ssm.fitting.refine.deformation_basis`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

PLANE_ITERATIONS = 6  # plane re-estimates from the matched pairs, per candidate
# a shape is taken as symmetric when, mirrored about its best plane, its vertices land
# within this share of its bounding-box diagonal of another vertex (median; the ICT
# head: 0.65 mm of 350, 0.2 %) and at least this share of the pairs are mutual
MAX_MISMATCH = 0.01
MIN_MUTUAL = 0.8


@dataclass(frozen=True)
class Mirror:
    """A symmetry plane ``x . normal = offset`` of a shape and its vertex pairing.

    index : (N,) int, the vertex nearest each vertex's mirror image (an involution up to
    the mesh's own asymmetry); normal : (3,) unit; offset : in the shape's units;
    mismatch : median distance from a mirrored vertex to its match (shape units).
    """

    index: np.ndarray
    normal: np.ndarray
    offset: float
    mismatch: float

    def reflect_vectors(self, d: np.ndarray) -> np.ndarray:
        """(..., 3) vectors (displacements) reflected across the plane."""
        return d - 2.0 * (d @ self.normal)[..., None] * self.normal

    def frame(self) -> np.ndarray:
        """(3, 3) orthonormal rows: the plane's normal, then two directions in the plane."""
        n = self.normal
        helper = np.eye(3)[int(np.argmin(np.abs(n)))]
        u = np.cross(n, helper)
        u /= np.linalg.norm(u)
        return np.stack([n, u, np.cross(n, u)])


def _reflect(x: np.ndarray, normal: np.ndarray, offset: float) -> np.ndarray:
    return x - 2.0 * (x @ normal - offset)[:, None] * normal


def find_mirror(vertices: np.ndarray, max_mismatch: float = MAX_MISMATCH) -> Mirror | None:
    """The plane that maps ``vertices`` (N, 3) best onto themselves, or None.

    Each principal axis of the vertices, through their centroid, starts a search that
    alternates matching every mirrored vertex to its nearest vertex and re-fitting the
    plane to the pairs (normal: the main direction of the pairs' differences; offset:
    the median of their midpoints along it). The candidate with the smallest median
    mismatch wins; None when that is over ``max_mismatch`` of the bounding-box diagonal
    or fewer than :data:`MIN_MUTUAL` of the pairs are mutual (not a symmetric shape).
    """
    x = np.asarray(vertices, np.float64).reshape(-1, 3)
    if len(x) < 10 or not np.isfinite(x).all():
        return None
    tree = cKDTree(x)
    centre = x.mean(0)
    _, _, axes = np.linalg.svd(x - centre, full_matrices=False)
    best = None
    for normal in axes:
        offset = float(centre @ normal)
        for _ in range(PLANE_ITERATIONS):
            _, j = tree.query(_reflect(x, normal, offset))
            diff = x - x[j]
            _, _, v = np.linalg.svd(diff, full_matrices=False)
            normal = v[0] if v[0] @ normal >= 0 else -v[0]
            offset = float(np.median((x + x[j]) @ normal) / 2.0)
        dist, j = tree.query(_reflect(x, normal, offset))
        mismatch = float(np.median(dist))
        if best is None or mismatch < best.mismatch:
            best = Mirror(j, normal, offset, mismatch)
    diagonal = float(np.linalg.norm(x.max(0) - x.min(0)))
    mutual = float(np.mean(best.index[best.index] == np.arange(len(x))))
    if best.mismatch > max_mismatch * diagonal or mutual < MIN_MUTUAL:
        return None
    return best


def symmetric_share(displacement: np.ndarray, mirror: Mirror) -> float:
    """In [-1, 1]: how symmetric a displacement field (N, 3) is about ``mirror``.

    ``(E_s - E_a) / (E_s + E_a)`` with ``E_s``, ``E_a`` the energies of its symmetric and
    antisymmetric parts ``(d +- R d[mirror])/2`` (``R`` the reflection): 1 for a field
    that mirrors itself (a smile on both sides), 0 for one on one side only, -1 for one
    that is its own mirror image's opposite. 0 for a zero field.
    """
    d = np.asarray(displacement, np.float64).reshape(-1, 3)
    dm = mirror.reflect_vectors(d[mirror.index])
    es = float(((d + dm) ** 2).sum())
    ea = float(((d - dm) ** 2).sum())
    return (es - ea) / (es + ea) if es + ea > 0 else 0.0


def mirror_parity(fields: np.ndarray, index: np.ndarray) -> np.ndarray:
    """(M,) in [-1, 1]: how far each scalar field (N, M) is even (1) or odd (-1) under the
    vertex mirror ``index`` (N,). The heat kernel's eigenfunctions on a symmetric mesh
    are each even or odd; on a real mesh most are nearly so."""
    f = np.asarray(fields, np.float64)
    return (f * f[index]).sum(0) / np.maximum((f * f).sum(0), 1e-300)
