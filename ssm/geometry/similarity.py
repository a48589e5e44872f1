"""Similarity / rigid transforms between point sets (weighted Umeyama), batched, numpy.

A transform is ``(s, R, t)`` acting as ``y = s * R @ x + t``:
s : (B,) scale, R : (B, 3, 3) rotation (det +1), t : (B, 3) translation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Similarity:
    """One similarity transform ``y = scale * rotation @ x + translation``."""

    scale: float
    rotation: np.ndarray  # (3, 3)
    translation: np.ndarray  # (3,)

    @classmethod
    def identity(cls) -> "Similarity":
        return cls(1.0, np.eye(3), np.zeros(3))

    @classmethod
    def from_matrix(cls, m: np.ndarray) -> "Similarity":
        """From a (4, 4) homogeneous matrix whose upper 3x3 is scale * rotation."""
        m = np.asarray(m, dtype=np.float64)
        if m.shape != (4, 4):
            raise ValueError(f"pose must be a 4x4 matrix, got {m.shape}")
        a = m[:3, :3]
        s = float(np.cbrt(np.linalg.det(a)))
        if not s > 0:
            raise ValueError("pose matrix has a non-positive determinant (a reflection?)")
        u, _, vt = np.linalg.svd(a / s)
        return cls(s, u @ vt, m[:3, 3].copy())

    def matrix(self) -> np.ndarray:
        """(4, 4) homogeneous matrix."""
        m = np.eye(4)
        m[:3, :3] = self.scale * self.rotation
        m[:3, 3] = self.translation
        return m

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Transform points (..., 3)."""
        return self.scale * (np.asarray(x) @ self.rotation.T) + self.translation

    def inverse(self) -> "Similarity":
        rt = self.rotation.T
        return Similarity(1.0 / self.scale, rt, -(rt @ self.translation) / self.scale)

    def compose(self, first: "Similarity") -> "Similarity":
        """``self`` after ``first``: x -> self(first(x))."""
        return Similarity(self.scale * first.scale, self.rotation @ first.rotation,
                          self.scale * (self.rotation @ first.translation) + self.translation)


def fit_similarity(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None,
                   scale: bool = True, reflection: bool = False):
    """Least-squares transform taking ``src`` onto ``dst`` (weighted Umeyama 1991).

    src : (B, N, 3) or (N, 3) points; dst : same shape or (N, 3) shared target.
    weights : (B, N) or (N,) non-negative weights (e.g. validity masks); None = uniform.
    scale : estimate a scale (similarity) or keep 1 (rigid).
    Returns ``(s (B,), R (B, 3, 3), t (B, 3))`` (without the batch axis for 2-D input)
    such that ``s R src + t`` best matches ``dst``.
    """
    single = np.ndim(src) == 2
    x = np.asarray(src, dtype=np.float64)
    y = np.asarray(dst, dtype=np.float64)
    if single:
        x = x[None]
    if y.ndim == 2:
        y = np.broadcast_to(y, x.shape)
    if x.shape != y.shape or x.shape[-1] != 3:
        raise ValueError(f"src and dst must be (B, N, 3) alike, got {np.shape(src)} and {np.shape(dst)}")
    b, n, _ = x.shape
    w = np.ones((b, n)) if weights is None else np.broadcast_to(np.asarray(weights, np.float64), (b, n))
    wsum = w.sum(axis=1)
    if np.any(wsum <= 0):
        raise ValueError("weights sum to zero for some shape")
    wn = w / wsum[:, None]
    mx = np.matmul(wn[:, None, :], x)[:, 0]  # (B, 3)
    my = np.matmul(wn[:, None, :], y)[:, 0]
    xc = x - mx[:, None]
    yc = y - my[:, None]
    cov = np.matmul((yc * wn[:, :, None]).transpose(0, 2, 1), xc)  # (B, 3, 3)
    u, sv, vt = np.linalg.svd(cov)
    d = np.ones((b, 3))
    if not reflection:
        d[:, 2] = np.sign(np.linalg.det(u @ vt))
        d[d == 0] = 1.0
    r = u @ (d[:, :, None] * vt)
    if scale:
        var_x = (wn * (xc * xc).sum(axis=2)).sum(axis=1)
        s = (sv * d).sum(axis=1) / np.maximum(var_x, 1e-300)
    else:
        s = np.ones(b)
    t = my - s[:, None] * np.matmul(r, mx[:, :, None])[:, :, 0]
    if single:
        return float(s[0]), r[0], t[0]
    return s, r, t


def apply_similarity(x: np.ndarray, s, r, t) -> np.ndarray:
    """Apply batched transforms: x (B, N, 3), s (B,), r (B, 3, 3), t (B, 3) -> (B, N, 3)."""
    x = np.asarray(x, dtype=np.float64)
    out = np.matmul(x, np.asarray(r).transpose(0, 2, 1))
    out *= np.asarray(s, dtype=np.float64)[:, None, None]
    out += np.asarray(t)[:, None, :]
    return out


def similarity_tangent_basis(shape: np.ndarray, scale: bool = True) -> np.ndarray:
    """Orthonormal basis (3N, 6 or 7) of infinitesimal similarity motions of ``shape``.

    The columns span translations, rotations about the centroid and (with ``scale``)
    uniform scaling of an (N, 3) shape: the directions Procrustes alignment removes.
    """
    x = np.asarray(shape, dtype=np.float64)
    xc = x - x.mean(axis=0)
    n = x.shape[0]
    cols = []
    for axis in range(3):
        t = np.zeros((n, 3))
        t[:, axis] = 1.0
        cols.append(t.reshape(-1))
    for axis in range(3):
        w = np.zeros(3)
        w[axis] = 1.0
        cols.append(np.cross(w, xc).reshape(-1))
    if scale:
        cols.append(xc.reshape(-1))
    q, _ = np.linalg.qr(np.stack(cols, axis=1))
    return q
