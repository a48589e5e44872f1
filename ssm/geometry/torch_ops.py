"""Mesh geometry in plain torch (CPU or GPU, batched): Laplacians and Taubin smoothing.

No pytorch3d needed. Shapes: vertices ``(B, N, 3)`` or ``(N, 3)`` float tensors,
faces ``(M, 3)`` long; the same faces serve every mesh of a batch. Constant operators
are built under ``torch.no_grad()``; pass ``device`` or tensors already on it.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch


def _as_faces(faces, device) -> torch.Tensor:
    f = faces if torch.is_tensor(faces) else torch.as_tensor(np.array(faces, dtype=np.int64))
    f = f.long()
    return f.to(device)


def _edges(faces: torch.Tensor) -> torch.Tensor:
    """(E, 2) unique undirected edges, i < j."""
    e = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]], dim=0)
    e, _ = torch.sort(e, dim=1)
    n = int(faces.max()) + 1 if faces.numel() else 1
    key = torch.unique(e[:, 0] * n + e[:, 1])  # 1-D unique: much faster than unique(dim=0)
    return torch.stack([key // n, key % n], dim=1)


@torch.no_grad()
def uniform_laplacian(faces, n_vertices: int, device=None, dtype=torch.float64) -> torch.Tensor:
    """(N, N) sparse ``L = A - D`` (adjacency minus degree): ``(L v)_i = sum_j (v_j - v_i)``."""
    f = _as_faces(faces, device)
    e = _edges(f)
    i = torch.cat([e[:, 0], e[:, 1]])
    j = torch.cat([e[:, 1], e[:, 0]])
    w = torch.ones(i.shape[0], dtype=dtype, device=f.device)
    deg = torch.zeros(n_vertices, dtype=dtype, device=f.device).index_add_(0, i, w)
    idx = torch.cat([torch.stack([i, j]), torch.arange(n_vertices, device=f.device).repeat(2, 1)], dim=1)
    val = torch.cat([w, -deg])
    return torch.sparse_coo_tensor(idx, val, (n_vertices, n_vertices), check_invariants=False).coalesce()


@torch.no_grad()
def cotangent_laplacian(vertices: torch.Tensor, faces) -> torch.Tensor:
    """(N, N) sparse cotangent Laplacian, libigl's ``cotmatrix`` convention.

    ``L_ij = (cot a_ij + cot b_ij) / 2`` for an edge ij with opposite angles a, b,
    ``L_ii = -sum_j L_ij`` (negative semi-definite). vertices : (N, 3).
    """
    v = vertices
    f = _as_faces(faces, v.device)
    n = v.shape[0]
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]

    def cot(p, q, r):  # cotangent of the angle at p in triangle pqr
        u, w = q - p, r - p
        return (u * w).sum(-1) / torch.linalg.norm(torch.cross(u, w, dim=-1), dim=-1).clamp_min(1e-30)

    ca, cb, cc = cot(a, b, c), cot(b, c, a), cot(c, a, b)  # angles at a, b, c
    # the angle at a is opposite edge bc, etc.
    i = torch.cat([f[:, 1], f[:, 2], f[:, 0]])
    j = torch.cat([f[:, 2], f[:, 0], f[:, 1]])
    w = 0.5 * torch.cat([ca, cb, cc])
    rows = torch.cat([i, j])
    cols = torch.cat([j, i])
    vals = torch.cat([w, w])
    diag = torch.zeros(n, dtype=v.dtype, device=v.device).index_add_(0, rows, vals)
    idx = torch.cat([torch.stack([rows, cols]), torch.arange(n, device=v.device).repeat(2, 1)], dim=1)
    return torch.sparse_coo_tensor(idx, torch.cat([vals, -diag]), (n, n), check_invariants=False).coalesce()


def _normalised_step(lap: torch.Tensor) -> torch.Tensor:
    """Row-normalised operator ``D^-1 L`` (mean of weighted neighbours minus self), CSR
    (the fast sparse-dense product on CPU and GPU)."""
    lap = lap.coalesce()
    idx, val = lap.indices(), lap.values()
    diag = torch.zeros(lap.shape[0], dtype=val.dtype, device=val.device)
    on = idx[0] == idx[1]
    diag.index_add_(0, idx[0][on], -val[on])
    scale = 1.0 / diag.clamp_min(1e-30)
    coo = torch.sparse_coo_tensor(idx, val * scale[idx[0]], lap.shape, check_invariants=False).coalesce()
    with warnings.catch_warnings():  # "sparse CSR support is in beta": we use only matmul
        warnings.simplefilter("ignore", UserWarning)
        return coo.to_sparse_csr()


@torch.no_grad()
def taubin_smooth(vertices, faces, iterations: int = 10, lam: float = 0.5, mu: float = -0.53,
                  laplacian: str = "uniform", strength=None, pinned=None) -> torch.Tensor:
    """Taubin (lambda / mu) smoothing, which does not shrink the mesh.

    vertices : (B, N, 3) or (N, 3) tensor/array (any device, float).
    laplacian : "uniform" (graph), "cotangent" (built on the input shape) or
        "inverse_distance" (Open3D's weights 1 / |v_i - v_j|, rebuilt every pass).
    strength : (N,) or (B, N) step multipliers in [0, 1] (e.g. larger where a fit is
        less certain); None = 1.
    pinned : vertex indices (or (N,) bool) that never move (landmarks).
    Each iteration applies ``v += lam * strength * (D^-1 L v)`` then the same with ``mu``.
    Returns a tensor shaped like the input.
    """
    v = torch.as_tensor(vertices)
    if not v.is_floating_point():
        v = v.double()
    single = v.dim() == 2
    if single:
        v = v[None]
    b, n, _ = v.shape
    f = _as_faces(faces, v.device)
    s = torch.ones((b, n, 1), dtype=v.dtype, device=v.device)
    if strength is not None:
        st = torch.as_tensor(strength, dtype=v.dtype, device=v.device)
        s = s * (st.reshape(-1, n, 1) if st.dim() == 2 else st.reshape(1, n, 1))
    if pinned is not None:
        p = torch.as_tensor(pinned, device=v.device)
        s = s.clone()
        if p.dtype == torch.bool:
            s[:, p] = 0
        else:
            s[:, p.long()] = 0
    if laplacian == "uniform":
        op = _normalised_step(uniform_laplacian(f, n, v.device, v.dtype))
    elif laplacian == "cotangent":
        ops = [_normalised_step(cotangent_laplacian(v[k], f)) for k in range(b)]
    elif laplacian == "inverse_distance":
        e = _edges(f)
        ei, ej = torch.cat([e[:, 0], e[:, 1]]), torch.cat([e[:, 1], e[:, 0]])
        order = torch.argsort(ei * n + ej)  # CSR order: by row, then column
        ei, ej = ei[order], ej[order]
        crow = torch.zeros(n + 1, dtype=torch.long, device=v.device)
        crow[1:] = torch.cumsum(torch.bincount(ei, minlength=n), 0)
    else:
        raise ValueError(f"unknown laplacian {laplacian!r} (uniform, cotangent, inverse_distance)")

    def step(x: torch.Tensor, factor: float) -> torch.Tensor:
        if laplacian == "uniform":
            d = torch.stack([op @ x[k] for k in range(b)])
        elif laplacian == "cotangent":
            d = torch.stack([ops[k] @ x[k] for k in range(b)])
        else:
            d = torch.stack([_inverse_distance_step(x[k], ei, ej, crow) for k in range(b)])
        return x + factor * s * d

    for _ in range(int(iterations)):
        v = step(v, lam)
        v = step(v, mu)
    return v[0] if single else v


def _inverse_distance_step(x: torch.Tensor, i: torch.Tensor, j: torch.Tensor, crow: torch.Tensor) -> torch.Tensor:
    """(N, 3) weighted mean of neighbours minus self, weights 1 / edge length (Open3D's).

    i, j : directed edges (both directions) in CSR order; crow : CSR row pointers. The
    sparsity pattern is fixed, only the values change with the shape.
    """
    n = x.shape[0]
    w = 1.0 / torch.linalg.norm(x[i] - x[j], dim=-1).clamp_min(1e-12)
    den = torch.zeros(n, dtype=x.dtype, device=x.device).index_add_(0, i, w)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        op = torch.sparse_csr_tensor(crow, j, w / den[i], (n, n))
    out = op @ x - x
    return torch.where((den > 0)[:, None], out, torch.zeros_like(x))


def smooth_uncertain(vertices: np.ndarray, faces: np.ndarray, stddev: np.ndarray, iterations: int = 3,
                     pinned=None, device: str = "auto") -> np.ndarray:
    """Taubin-smooth where a result is uncertain, leave it where it is trusted.

    vertices : (N, 3) mm; stddev : (N,) mm. The step strength is 0 up to the median
    standard deviation and rises to 1 at twice it (unseen parts get smoothed, measured
    detail does not); ``pinned`` vertices (landmarks) never move. Returns (N, 3) float64.
    """
    from ssm.device import resolve_device

    if iterations <= 0:
        return np.asarray(vertices, dtype=np.float64)
    sd = np.asarray(stddev, dtype=np.float64)
    med = float(np.nanmedian(sd)) if np.isfinite(sd).any() else 1.0
    strength = np.clip(np.nan_to_num(sd, nan=2 * med) / max(med, 1e-12) - 1.0, 0.0, 1.0)
    dev = resolve_device(device)
    v = torch.as_tensor(np.asarray(vertices, dtype=np.float64), device=dev)
    out = taubin_smooth(v, torch.as_tensor(np.array(faces, dtype=np.int64), device=dev), iterations, strength=strength,
                        pinned=pinned)
    return out.cpu().numpy()
