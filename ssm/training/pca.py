"""PCA of row-centred data in torch (CPU or GPU): exact, and streamed randomized SVD.

Rows are subjects (flattened shapes, usually minus a reference mean), columns the
``D = 3N`` coordinates. Both paths centre the rows on their own mean and return
``(basis (D, K) orthonormal float64 numpy, variances (K,), total, row_mean (D,))``
where ``variances`` are eigenvalues of the sample covariance (divisor ``S - 1``),
``total`` is the total variance (trace of the sample covariance) and ``row_mean`` the
mean row that was subtracted.

The streamed path (Halko, Martinsson & Tropp 2011, with power iterations) reads the data
as a sequence of row blocks from a callable, so memory stays at a few blocks plus
``D x (K + oversampling)`` however many rows there are. Each pass over the data computes
``Y = X^T (X Q)`` block by block; a Rayleigh-Ritz step on the last pass gives the
eigenvectors and eigenvalues without an extra pass.
"""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np
import torch

RowBlocks = Callable[[], Iterable[np.ndarray]]
Progress = Callable[[str, int, int], None]


def _fix_signs(basis: torch.Tensor) -> torch.Tensor:
    """Deterministic signs: each column's largest-magnitude entry is positive."""
    idx = basis.abs().argmax(dim=0)
    signs = torch.sign(basis[idx, torch.arange(basis.shape[1], device=basis.device)])
    signs[signs == 0] = 1
    return basis * signs


def _finish(vecs: torch.Tensor, vals: torch.Tensor, k: int, total: float, mu: torch.Tensor):
    order = torch.argsort(vals, descending=True)[:k]
    vals = vals[order].clamp_min(0)
    vecs = _fix_signs(vecs[:, order])
    return (vecs.cpu().numpy().astype(np.float64), vals.cpu().numpy().astype(np.float64), float(total),
            mu.cpu().numpy().astype(np.float64))


def pca_exact(x: np.ndarray | torch.Tensor, n_components: int | None = None,
              device: torch.device | str = "cpu"):
    """Exact PCA of rows ``x`` (S, D) via the smaller Gram / covariance matrix."""
    xt = torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x, dtype=torch.float64, device=device)
    mu = xt.mean(dim=0)
    xt = xt - mu
    s, d = xt.shape
    if s < 2:
        raise ValueError("PCA needs at least 2 subjects")
    k_max = min(s - 1, d)
    k = k_max if n_components is None else min(int(n_components), k_max)
    total = float((xt * xt).sum()) / (s - 1)
    if s <= d:
        g = xt @ xt.T  # (S, S)
        vals, u = torch.linalg.eigh(g)
        vals, u = vals.flip(0)[:k], u.flip(1)[:, :k]
        vecs = xt.T @ (u / torch.sqrt(vals.clamp_min(1e-300)))
        vecs = vecs / torch.linalg.norm(vecs, dim=0).clamp_min(1e-300)
    else:
        c = xt.T @ xt
        vals, vecs = torch.linalg.eigh(c)
        vals, vecs = vals.flip(0)[:k], vecs.flip(1)[:, :k]
    return _finish(vecs, vals / (s - 1), k, total, mu)


def pca_streamed(blocks: RowBlocks, n_rows: int, n_cols: int, n_components: int,
                 oversample: int | None = None, n_iter: int = 4, seed: int = 0,
                 device: torch.device | str = "cpu", progress: Progress | None = None,
                 dtype: torch.dtype = torch.float32):
    """Randomized PCA over row blocks read ``n_iter + 1`` times.

    blocks : callable returning an iterable of row blocks (b, D), float, in
        the same order each call; the blocks must cover ``n_rows`` rows.
    n_components : K components wanted (clipped to ``n_rows - 1``).
    oversample : extra random directions (default max(10, K // 2)).
    n_iter : power iterations (each one pass); 4 gives eigenvalues to well under 1 %
        for a decaying spectrum.
    dtype : precision of the large block products (float32 halves their cost and
        memory traffic); sums over blocks, QR and the eigen-solve are float64.
    """
    if n_rows < 2:
        raise ValueError("PCA needs at least 2 subjects")
    k = min(int(n_components), n_rows - 1, n_cols)
    p = max(10, k // 2) if oversample is None else int(oversample)
    ell = min(k + p, n_rows, n_cols)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    dev = torch.device(device)

    def as_t(block) -> torch.Tensor:
        t = block if torch.is_tensor(block) else torch.as_tensor(np.asarray(block))
        return t.to(dev, dtype=dtype, non_blocking=True)

    # Pass 1: Y = X^T Omega with Omega (S, ell) drawn block by block (same for any chunking)
    # Centring without a separate pass: with mu the mean row and X_c = X - 1 mu^T,
    # X_c^T Omega = X^T Omega - mu (1^T Omega) and X_c^T X_c Q = X^T X Q - S mu (mu^T Q).
    y = torch.zeros((n_cols, ell), dtype=torch.float64, device=dev)
    colsum = torch.zeros(n_cols, dtype=torch.float64, device=dev)
    omsum = torch.zeros(ell, dtype=torch.float64, device=dev)
    total = 0.0
    start = 0
    for blk in blocks():
        xb = as_t(blk)
        om = torch.randn((xb.shape[0], ell), generator=gen, dtype=torch.float64).to(dev)
        y += (xb.T @ om.to(dtype)).double()
        colsum += xb.sum(dim=0, dtype=torch.float64)
        omsum += om.sum(dim=0)
        total += float((xb.double() ** 2).sum()) if dtype != torch.float64 else float((xb * xb).sum())
        start += xb.shape[0]
        if progress:
            progress("PCA pass 1", start, n_rows)
    if start != n_rows:
        raise ValueError(f"row blocks covered {start} rows, expected {n_rows}")
    mu = colsum / n_rows
    y -= torch.outer(mu, omsum)
    total = (total - n_rows * float(mu @ mu)) / (n_rows - 1)
    q, _ = torch.linalg.qr(y)
    m = None
    for it in range(max(1, n_iter)):
        y = torch.zeros_like(q)
        qd = q.to(dtype)
        done = 0
        for blk in blocks():
            xb = as_t(blk)
            y += (xb.T @ (xb @ qd)).double()
            done += xb.shape[0]
            if progress:
                progress(f"PCA pass {it + 2}", done, n_rows)
        y -= n_rows * torch.outer(mu, mu @ q)
        m = q.T @ y  # Rayleigh quotient (ell, ell) = Q^T X^T X Q
        if it < max(1, n_iter) - 1:
            q, _ = torch.linalg.qr(y)
    m = 0.5 * (m + m.T)
    vals, w = torch.linalg.eigh(m)
    vecs = q @ w
    return _finish(vecs, vals / (n_rows - 1), k, total, mu)
