"""The statistical shape model: an immutable probabilistic PCA model of meshes.

Only numpy is imported here, so downstream code can ``import ssm`` and load a model
without torch, open3d or trimesh.

Conventions
-----------
* ``N`` vertices, ``K`` components, ``D = 3 N`` flattened coordinates.
* Flattened vectors are vertex-interleaved: ``x1, y1, z1, x2, ...`` (statismo layout).
* ``basis`` is ``(D, K)`` with orthonormal columns; ``variances`` are the PCA
  eigenvalues (mm^2 for a model in mm). A shape is ``mean + basis @ (sqrt(var) * c)``
  with standardised coefficients ``c ~ N(0, I)``.
* The model is probabilistic PCA: ``x ~ N(mean, U diag(var) U^T + noise_variance I)``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

import numpy as np


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    a.setflags(write=False)
    return a


@dataclass(frozen=True, eq=False)
class ShapeModel:
    """A PCA shape model of meshes in one topology.

    Attributes
    ----------
    mean : (N, 3) float array, model units (usually mm), model frame.
    basis : (3N, K) float array, orthonormal columns, vertex-interleaved rows.
    variances : (K,) float array, eigenvalues in units^2, descending.
    noise_variance : float, isotropic PPCA noise variance (units^2); 0 when unknown.
    triangles : (M, 3) int32 array or None for a point model.
    landmarks : name -> vertex index.
    regions : name -> (k,) int array of vertex indices.
    units : length unit of the coordinates, e.g. ``"mm"``.
    provenance : free-form JSON-serialisable metadata (how it was built).
    uv : (T, 2) texture coordinates (u right, v up) or None.
    triangle_uvs : (M, 3) per-corner indices into ``uv`` (seams split corners, not
        vertices) or None.
    precomputed : name -> array computed from the model once and shipped with it, for the
        tools that would otherwise compute it on first use (the manifold harmonics of its
        mesh; each tool checks the arrays were computed from this mean and mesh).
    """

    mean: np.ndarray
    basis: np.ndarray
    variances: np.ndarray
    noise_variance: float = 0.0
    triangles: np.ndarray | None = None
    landmarks: Mapping[str, int] = field(default_factory=dict)
    regions: Mapping[str, np.ndarray] = field(default_factory=dict)
    units: str = "mm"
    provenance: Mapping[str, object] = field(default_factory=dict)
    uv: np.ndarray | None = None
    triangle_uvs: np.ndarray | None = None
    precomputed: Mapping[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        mean = np.asarray(self.mean)
        if mean.ndim != 2 or mean.shape[1] != 3:
            raise ValueError(f"mean must be (N, 3), got {mean.shape}")
        n = mean.shape[0]
        basis = np.asarray(self.basis)
        if basis.ndim != 2 or basis.shape[0] != 3 * n:
            raise ValueError(f"basis must be (3N={3 * n}, K), got {basis.shape}")
        variances = np.asarray(self.variances).reshape(-1)
        if variances.shape[0] != basis.shape[1]:
            raise ValueError(
                f"variances has {variances.shape[0]} entries but basis has {basis.shape[1]} columns"
            )
        if np.any(variances < 0) or not np.all(np.isfinite(variances)):
            raise ValueError("variances must be finite and non-negative")
        if not (np.isfinite(self.noise_variance) and self.noise_variance >= 0):
            raise ValueError(f"noise_variance must be finite and >= 0, got {self.noise_variance}")
        tri = None
        if self.triangles is not None:
            tri = np.asarray(self.triangles, dtype=np.int32)
            if tri.ndim != 2 or tri.shape[1] != 3:
                raise ValueError(f"triangles must be (M, 3), got {tri.shape}")
            if tri.size and (tri.min() < 0 or tri.max() >= n):
                raise ValueError("triangles index vertices outside the mean")
            tri = _frozen(tri)
        lms = {str(k): int(v) for k, v in dict(self.landmarks).items()}
        for name, idx in lms.items():
            if not 0 <= idx < n:
                raise ValueError(f"landmark {name!r} index {idx} outside 0..{n - 1}")
        regs = {str(k): _frozen(np.asarray(v, dtype=np.int64)) for k, v in dict(self.regions).items()}
        object.__setattr__(self, "mean", _frozen(mean))
        object.__setattr__(self, "basis", _frozen(basis))
        object.__setattr__(self, "variances", _frozen(variances))
        object.__setattr__(self, "noise_variance", float(self.noise_variance))
        object.__setattr__(self, "triangles", tri)
        object.__setattr__(self, "landmarks", MappingProxyType(lms))
        object.__setattr__(self, "regions", MappingProxyType(regs))
        object.__setattr__(self, "provenance", MappingProxyType(dict(self.provenance)))
        if (self.uv is None) != (self.triangle_uvs is None):
            raise ValueError("uv and triangle_uvs come together")
        if self.uv is not None:
            uv = np.asarray(self.uv, dtype=np.float64)
            tuv = np.asarray(self.triangle_uvs, dtype=np.int64)
            if uv.ndim != 2 or uv.shape[1] != 2 or tri is None or tuv.shape != tri.shape:
                raise ValueError("uv must be (T, 2) and triangle_uvs shaped like the triangles")
            if tuv.size and (tuv.min() < 0 or tuv.max() >= len(uv)):
                raise ValueError("triangle_uvs index outside uv")
            object.__setattr__(self, "uv", _frozen(uv))
            object.__setattr__(self, "triangle_uvs", _frozen(tuv))

    # ------------------------------------------------------------------ sizes
    @property
    def n_vertices(self) -> int:
        return self.mean.shape[0]

    @property
    def n_components(self) -> int:
        return self.basis.shape[1]

    @property
    def stddevs(self) -> np.ndarray:
        """(K,) standard deviation of each component, model units."""
        return np.sqrt(self.variances)

    @property
    def components(self) -> np.ndarray:
        """(K, N, 3) orthonormal components as vertex displacement fields (unit norm)."""
        return self.basis.T.reshape(self.n_components, self.n_vertices, 3)

    @property
    def landmark_indices(self) -> np.ndarray:
        """(L,) vertex indices of the named landmarks, in stored order."""
        return np.fromiter(self.landmarks.values(), dtype=np.int64, count=len(self.landmarks))

    # -------------------------------------------------------------- generation
    def instance(self, coeffs: np.ndarray | None = None) -> np.ndarray:
        """Shape for standardised coefficients.

        coeffs : (k,) with k <= K, in units of standard deviations (missing trailing
            coefficients are 0); None gives the mean.
        Returns (N, 3) float64, model units, model frame.
        """
        if coeffs is None:
            return np.array(self.mean, dtype=np.float64)  # a copy: callers may modify it
        c = np.asarray(coeffs, dtype=np.float64).reshape(-1)
        if c.shape[0] > self.n_components:
            raise ValueError(f"got {c.shape[0]} coefficients for a {self.n_components}-component model")
        k = c.shape[0]
        offset = np.asarray(self.basis[:, :k], dtype=np.float64) @ (self.stddevs[:k] * c)
        return np.asarray(self.mean, dtype=np.float64) + offset.reshape(-1, 3)

    def sample(self, n: int, seed: int | np.random.Generator | None = None,
               with_noise: bool = False) -> np.ndarray:
        """``n`` random shapes from the model prior, (n, N, 3) float64.

        seed : int or Generator, passed explicitly for reproducibility.
        with_noise : add the isotropic PPCA noise too.
        """
        rng = np.random.default_rng(seed)
        c = rng.standard_normal((n, self.n_components))
        off = (c * self.stddevs) @ np.asarray(self.basis, dtype=np.float64).T
        out = np.asarray(self.mean, dtype=np.float64)[None] + off.reshape(n, -1, 3)
        if with_noise and self.noise_variance > 0:
            out += rng.standard_normal(out.shape) * np.sqrt(self.noise_variance)
        return out

    # -------------------------------------------------------------- inference
    def _effective_noise(self, noise_variance: float | None) -> float:
        s2 = self.noise_variance if noise_variance is None else float(noise_variance)
        # A tiny floor keeps the MAP solve well posed for partial shapes of a model
        # saved without a noise estimate.
        floor = 1e-10 * float(self.variances.max()) if self.n_components else 1e-12
        return max(s2, floor, 1e-12)

    def project(self, shape: np.ndarray, mask: np.ndarray | None = None,
                noise_variance: float | None = None, n_components: int | None = None) -> np.ndarray:
        """MAP standardised coefficients of a shape under the Gaussian prior.

        shape : (N, 3) in model units and frame, in correspondence with the model
            (align it first, e.g. with :func:`ssm.geometry.similarity.fit_similarity`).
        mask : (N,) bool, vertices that were observed (partial shapes); None = all.
        noise_variance : observation noise (units^2); default: the model's.
        n_components : use only the first k components.
        Returns (k,) float64 coefficients in standard deviations.
        """
        x = np.asarray(shape, dtype=np.float64)
        if x.shape != self.mean.shape:
            raise ValueError(f"shape must be {self.mean.shape}, got {x.shape}")
        k = self.n_components if n_components is None else int(n_components)
        r = (x - self.mean).reshape(-1)
        s2 = self._effective_noise(noise_variance)
        if mask is None and np.all(np.isfinite(r)):
            # orthonormal basis: the normal equations are diagonal
            sd = self.stddevs[:k]
            return sd / (sd * sd + s2) * (np.asarray(self.basis[:, :k], dtype=np.float64).T @ r)
        U = np.asarray(self.basis[:, :k], dtype=np.float64) * self.stddevs[:k]  # (D, k) scaled
        if mask is not None:
            m = np.repeat(np.asarray(mask, dtype=bool).reshape(-1), 3)
            if m.shape[0] != r.shape[0]:
                raise ValueError(f"mask must have {self.n_vertices} entries")
            U, r = U[m], r[m]
        finite = np.isfinite(r)
        if not finite.all():
            U, r = U[finite], r[finite]
        A = U.T @ U + s2 * np.eye(k)
        return np.linalg.solve(A, U.T @ r)

    def reconstruct(self, shape: np.ndarray, mask: np.ndarray | None = None,
                    noise_variance: float | None = None, n_components: int | None = None) -> np.ndarray:
        """Best model instance for a (possibly partial) shape: ``instance(project(...))``."""
        return self.instance(self.project(shape, mask, noise_variance, n_components))

    def mahalanobis(self, coeffs: np.ndarray) -> float:
        """Mahalanobis norm of standardised coefficients (their Euclidean norm)."""
        return float(np.linalg.norm(np.asarray(coeffs, dtype=np.float64)))

    def log_prob(self, shape: np.ndarray) -> float:
        """Log density of a full shape (N, 3) under the model.

        With a positive noise variance this is the exact probabilistic-PCA density
        ``N(mean, U diag(var) U^T + s2 I)`` in 3N dimensions. Without one (s2 = 0)
        the density is degenerate; then the log density of the shape's coefficients
        in the K-dimensional model subspace is returned.
        """
        x = np.asarray(shape, dtype=np.float64)
        if x.shape != self.mean.shape:
            raise ValueError(f"shape must be {self.mean.shape}, got {x.shape}")
        r = (x - self.mean).reshape(-1)
        U = np.asarray(self.basis, dtype=np.float64)
        c = U.T @ r
        lam = self.variances.astype(np.float64)
        d = r.shape[0]
        s2 = self.noise_variance
        if s2 > 0:
            perp = max(float(r @ r - c @ c), 0.0)
            maha = float(np.sum(c * c / (lam + s2))) + perp / s2
            logdet = float(np.sum(np.log(lam + s2))) + (d - lam.size) * np.log(s2)
            return -0.5 * (maha + logdet + d * np.log(2 * np.pi))
        ok = lam > 0
        maha = float(np.sum(c[ok] ** 2 / lam[ok]))
        return -0.5 * (maha + float(np.sum(np.log(lam[ok]))) + ok.sum() * np.log(2 * np.pi))

    # -------------------------------------------------------------- derived
    def truncate(self, n_components: int) -> "ShapeModel":
        """A new model with only the first ``n_components`` components.

        The dropped variance is not folded into the noise; the noise variance is kept.
        """
        k = int(n_components)
        if not 0 <= k <= self.n_components:
            raise ValueError(f"n_components must be in 0..{self.n_components}")
        return dataclasses.replace(self, basis=self.basis[:, :k], variances=self.variances[:k])

    def posterior(self, indices: np.ndarray, points: np.ndarray, covariances=None,
                  weights: np.ndarray | None = None) -> "ShapeModel":
        """Posterior shape model given observed positions of some vertices.

        Albrecht et al. 2013 (scalismo's ``posterior``): the model is a Gaussian process,
        observations ``points[l] = shape[indices[l]] + e_l`` with ``e_l ~ N(0, C_l)``.
        indices : (L,) vertex indices (repeats allowed); points : (L, 3) model frame.
        covariances : (L, 3, 3) full, (L,) isotropic variances, a scalar (units^2), or
            None for the model's noise variance (floored as in :meth:`project`).
        weights : (L,) optional precision multipliers (e.g. robust weights).
        Returns a new ShapeModel: posterior mean, orthonormal basis of the posterior
        covariance (rank <= K, from a K x K eigenproblem; nothing N x N is formed).
        """
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        y = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        if y.shape[0] != idx.shape[0]:
            raise ValueError("indices and points must have the same length")
        k = self.n_components
        sd = self.stddevs
        q = np.asarray(self.basis, dtype=np.float64).reshape(self.n_vertices, 3, k)[idx] * sd  # (L, 3, K)
        r = y - self.mean[idx]  # (L, 3)
        wts = np.ones(len(idx)) if weights is None else np.asarray(weights, dtype=np.float64)
        cov = None if covariances is None else np.asarray(covariances, dtype=np.float64)
        if cov is None or cov.ndim <= 1:  # isotropic: plain matrix products (BLAS)
            var = np.broadcast_to(self._effective_noise(None) if cov is None else cov, (len(idx),))
            pw = np.repeat(wts / var, 3)  # (3L,)
            qf = q.reshape(-1, k)
            a = np.eye(k) + (qf * pw[:, None]).T @ qf
            b = (qf * pw[:, None]).T @ r.reshape(-1)
        else:
            prec = _precisions(cov, len(idx), self._effective_noise(None)) * wts[:, None, None]
            pq = np.einsum("lij,ljk->lik", prec, q)  # Sigma^-1 Q
            a = np.eye(k) + np.einsum("lik,lim->km", q, pq)
            b = np.einsum("lik,li->k", pq, r)
        chol = np.linalg.cholesky(a)
        m = np.linalg.solve(chol.T, np.linalg.solve(chol, b))
        s_post = np.linalg.inv(a)
        s_post = 0.5 * (s_post + s_post.T)
        lam, w = np.linalg.eigh(sd[:, None] * s_post * sd[None, :])
        order = np.argsort(lam)[::-1]
        lam, w = np.clip(lam[order], 0, None), w[:, order]
        basis = np.asarray(self.basis, dtype=np.float64) @ w
        mean = self.instance(m)
        prov = dict(self.provenance)
        prov["posterior_of"] = {"n_observations": int(len(idx))}
        return dataclasses.replace(self, mean=mean, basis=basis, variances=lam, provenance=prov)

    def vertex_covariances(self) -> np.ndarray:
        """(N, 3, 3) marginal covariance of each vertex (model part, without noise)."""
        b3 = np.asarray(self.basis, dtype=np.float64).reshape(self.n_vertices, 3, -1) * self.stddevs
        return np.einsum("nik,njk->nij", b3, b3)

    def vertex_stddev(self, include_noise: bool = True) -> np.ndarray:
        """(N,) per-vertex standard deviation: sqrt of the mean per-axis variance (units)."""
        b3 = np.asarray(self.basis, dtype=np.float64).reshape(self.n_vertices, 3, -1) * self.stddevs
        var = (b3 * b3).sum(axis=(1, 2)) / 3.0
        if include_noise:
            var = var + self.noise_variance
        return np.sqrt(var)

    def with_metadata(self, **changes) -> "ShapeModel":
        """A copy with some fields replaced (landmarks, regions, units, provenance...)."""
        return dataclasses.replace(self, **changes)

    def variance_fraction(self) -> np.ndarray:
        """(K,) cumulative fraction of the training variance explained (compactness).

        Uses ``provenance['total_variance']`` when the trainer recorded it, else the
        model's own variance plus the noise over all 3N dimensions.
        """
        total = self.provenance.get("total_variance")
        if total is None:
            total = float(self.variances.sum()) + self.noise_variance * (
                3 * self.n_vertices - self.n_components)
        return np.cumsum(self.variances) / float(total)

    def __repr__(self) -> str:
        return (f"ShapeModel(n_vertices={self.n_vertices}, n_components={self.n_components}, "
                f"units={self.units!r}, landmarks={len(self.landmarks)}, "
                f"noise_variance={self.noise_variance:.4g})")


def _precisions(cov, n: int, default_var: float) -> np.ndarray:
    """(n, 3, 3) inverse covariances from full, isotropic, scalar or default variances."""
    if cov is None:
        return np.broadcast_to(np.eye(3) / default_var, (n, 3, 3)).copy()
    c = np.asarray(cov, dtype=np.float64)
    if c.ndim == 0:
        return np.broadcast_to(np.eye(3) / float(c), (n, 3, 3)).copy()
    if c.ndim == 1:
        if c.shape[0] != n:
            raise ValueError(f"expected {n} variances, got {c.shape[0]}")
        return np.eye(3)[None] / c[:, None, None]
    if c.shape != (n, 3, 3):
        raise ValueError(f"covariances must be (L, 3, 3), got {c.shape}")
    return np.linalg.inv(c)
