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
                   scale: bool | float = True, reflection: bool = False):
    """Least-squares transform taking ``src`` onto ``dst`` (weighted Umeyama 1991).

    src : (B, N, 3) or (N, 3) points; dst : same shape or (N, 3) shared target.
    weights : (B, N) or (N,) non-negative weights (e.g. validity masks); None = uniform.
    scale : True to estimate a scale (similarity), False to keep 1 (rigid), or a known
        scale (e.g. the scan's units per mm) to use as it is.
    Returns ``(s (B,), R (B, 3, 3), t (B, 3))`` (without the batch axis for 2-D input)
    such that ``s R src + t`` best matches ``dst``.
    """
    estimate = isinstance(scale, (bool, np.bool_)) and bool(scale)
    known = 1.0 if isinstance(scale, (bool, np.bool_)) else float(scale)
    single = np.ndim(src) == 2
    x = np.asarray(src)
    ft = x.dtype if x.dtype in (np.float32, np.float64) else np.float64  # big arrays stay float32
    x = x.astype(ft, copy=False)
    y = np.asarray(dst).astype(ft, copy=False)
    if single:
        x = x[None]
    b, n = x.shape[0], x.shape[1]
    if x.shape[-1] != 3 or y.shape not in ((n, 3), x.shape):
        raise ValueError(f"src and dst must be (B, N, 3) alike, got {np.shape(src)} and {np.shape(dst)}")
    w = np.ones(n, ft) if weights is None else np.asarray(weights, ft)
    if w.ndim == 1 and y.ndim == 2:
        # shared target and weights (the Procrustes case): no (B, N, 3) temporaries
        wsum = float(w.sum(dtype=np.float64))
        if wsum <= 0:
            raise ValueError("weights sum to zero")
        wn = (w / wsum).astype(ft)
        mx = np.matmul(wn, x).astype(np.float64)  # (B, 3)
        my = (wn @ y).astype(np.float64)  # (3,)
        cov = np.matmul((wn[:, None] * y).T, x).astype(np.float64) - my[None, :, None] * mx[:, None, :]
        var_x = (np.matmul(wn, x * x).sum(-1, dtype=np.float64) - (mx * mx).sum(1)) if estimate else None
        my = np.broadcast_to(my, (b, 3))
    else:
        y = np.broadcast_to(y, x.shape)
        w = np.broadcast_to(w, (b, n))
        wsum = w.sum(axis=1, dtype=np.float64)
        if np.any(wsum <= 0):
            raise ValueError("weights sum to zero for some shape")
        wn = w / wsum.astype(ft)[:, None]
        mx = np.matmul(wn[:, None, :], x)[:, 0]  # (B, 3)
        my = np.matmul(wn[:, None, :], y)[:, 0]
        xc = x - mx[:, None]
        yc = y - my[:, None]
        cov = np.matmul((yc * wn[:, :, None]).transpose(0, 2, 1), xc).astype(np.float64)  # (B, 3, 3)
        var_x = (wn * (xc * xc).sum(axis=2)).sum(axis=1, dtype=np.float64) if estimate else None
        mx, my = mx.astype(np.float64), my.astype(np.float64)
    u, sv, vt = np.linalg.svd(cov)
    d = np.ones((b, 3))
    if not reflection:
        d[:, 2] = np.sign(np.linalg.det(u @ vt))
        d[d == 0] = 1.0
    r = u @ (d[:, :, None] * vt)
    if estimate:
        s = (sv * d).sum(axis=1) / np.maximum(var_x, 1e-300)
    else:
        s = np.full(b, known)
    t = my - s[:, None] * np.matmul(r, mx[:, :, None])[:, :, 0]
    if single:
        return float(s[0]), r[0], t[0]
    return s, r, t


def apply_similarity(x: np.ndarray, s, r, t) -> np.ndarray:
    """Apply batched transforms: x (B, N, 3), s (B,), r (B, 3, 3), t (B, 3) -> (B, N, 3).

    float32 input stays float32 (bulk data); anything else is computed in float64.
    """
    x = np.asarray(x)
    ft = np.float32 if x.dtype == np.float32 else np.float64
    x = x.astype(ft, copy=False)
    sr = (np.asarray(s, dtype=np.float64)[:, None, None] * np.asarray(r)).astype(ft)
    out = np.matmul(x, sr.transpose(0, 2, 1))
    out += np.asarray(t, dtype=ft)[:, None, :]
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


def axis_angle_rotation(w: np.ndarray) -> np.ndarray:
    """(3, 3) rotation by angle ``|w|`` (radians) about the axis ``w`` (Rodrigues' formula)."""
    th = float(np.linalg.norm(w))
    if th < 1e-12:
        return np.eye(3)
    k = w / th
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(th) * kx + (1 - np.cos(th)) * kx @ kx


def similarity_jacobian(xc: np.ndarray, scale: bool = True) -> np.ndarray:
    """(..., 3, 6 or 7) derivative of ``x + w x xc + t + s xc`` in ``(w, t[, s])``.

    xc : (..., 3) points relative to the centre the small motion turns and scales about.
    Row ``a`` is ``[xc x e_a, e_a, xc_a]``; a normal ``n`` gives the point-to-plane row
    ``n^T J = [xc x n, n, n.xc]``.
    """
    xc = np.asarray(xc, dtype=np.float64)
    j = np.zeros(xc.shape[:-1] + (3, 7 if scale else 6))
    x, y, z = xc[..., 0], xc[..., 1], xc[..., 2]
    j[..., 1, 0], j[..., 2, 0] = -z, y
    j[..., 0, 1], j[..., 2, 1] = z, -x
    j[..., 0, 2], j[..., 1, 2] = -y, x
    j[..., 0, 3] = j[..., 1, 4] = j[..., 2, 5] = 1.0
    if scale:
        j[..., :, 6] = xc
    return j


def step_similarity(dp: np.ndarray, centre: np.ndarray) -> Similarity:
    """The similarity of a Gauss-Newton step ``dp = (w (3,), t (3,)[, s])`` about ``centre``:
    rotation by ``w`` and scaling by ``1 + s`` about ``centre``, then translation by ``t``."""
    scale = 1.0 + (float(dp[6]) if len(dp) > 6 else 0.0)
    rot = axis_angle_rotation(dp[:3])
    return Similarity(scale, rot, centre + dp[3:6] - scale * rot @ centre)


def similarity_steps(p: np.ndarray, y: np.ndarray, n: np.ndarray | None, w_plane: np.ndarray,
                     w_point: np.ndarray, scale: bool = True) -> list[Similarity]:
    """:func:`similarity_step` for H problems at once: p (H, C, 3), y and n broadcastable
    to it (n may be None), weights (H, C). One batched 7x7 solve for all of them."""
    p = np.asarray(p, dtype=np.float64)
    w = w_plane + w_point
    c = (p * w[..., None]).sum(1) / np.maximum(w.sum(1), 1e-300)[:, None]  # (H, 3)
    jac = similarity_jacobian(p - c[:, None], scale)  # (H, C, 3, npar)
    h, npar = len(p), jac.shape[-1]
    d = p - np.broadcast_to(y, p.shape)
    jq = jac.reshape(h, -1, npar)  # point-to-point rows, (H, 3C, npar): batched BLAS below
    jqw = jq * np.repeat(w_point, 3, axis=1)[..., None]
    ata = jqw.transpose(0, 2, 1) @ jq
    atb = -(jqw.transpose(0, 2, 1) @ d.reshape(h, -1, 1))[..., 0]
    if n is not None:
        n = np.broadcast_to(n, p.shape)
        jp = (n[..., None] * jac).sum(2)  # point-to-plane rows n^T J, (H, C, npar)
        jpw = jp * w_plane[..., None]
        ata += jpw.transpose(0, 2, 1) @ jp
        atb -= (jpw.transpose(0, 2, 1) @ (n * d).sum(-1)[..., None])[..., 0]
    x = np.linalg.solve(ata + 1e-9 * np.eye(npar), atb[..., None])[..., 0]
    return [step_similarity(xh, ch) for xh, ch in zip(x, c)]


def similarity_step(p: np.ndarray, y: np.ndarray, n: np.ndarray | None, w_plane: np.ndarray,
                    w_point: np.ndarray, scale: bool = True) -> Similarity:
    """One Gauss-Newton step of a similarity moving points ``p`` towards ``y``.

    Minimises ``sum w_plane (n.(T p - y))^2 + w_point ||T p - y||^2`` linearised about
    the identity (point-to-plane ICP with an optional point-to-point part, which converges
    much faster than point-to-point alone on smooth surfaces). p, y, n : (C, 3) in one
    frame; returns the increment ``T`` (apply it after the current pose).
    """
    return similarity_steps(np.asarray(p)[None], np.asarray(y)[None], None if n is None else np.asarray(n)[None],
                            np.asarray(w_plane, dtype=np.float64)[None], np.asarray(w_point, dtype=np.float64)[None],
                            scale)[0]
