"""Train a PCA shape model from a corpus: Procrustes -> PCA -> (pruning -> again).

scikit-learn style: hyperparameters in ``__init__``, ``fit(corpus)`` returns ``self``,
learned state ends in ``_`` (``model_``, ``gpa_``, ``pruned_``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ssm.errors import SSMError
from ssm.geometry.similarity import fit_similarity
from ssm.io.corpus import Corpus
from ssm.models.shape_model import ShapeModel
from ssm.training.procrustes import GPAResult, generalized_procrustes

log = logging.getLogger(__name__)
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class PrunedSubject:
    """A subject dropped by pruning, with its Mahalanobis norm in the first model."""

    subject_id: str
    index: int
    mahalanobis: float


class ModelTrainer:
    """Builds a :class:`ShapeModel` from a corpus.

    Parameters
    ----------
    n_components : int K, or a float in (0, 1) = fraction of variance to keep
        (``variance``); None keeps all (up to ``S - 1``).
    align : "similarity" | "rigid" | "none" (generalised Procrustes mode).
    align_weights : None (uniform), "landmarks" (only the template landmarks),
        "region:NAME" (a template region) or an (N,) array of vertex weights.
    prune : fraction of subjects with the largest Mahalanobis norm in a first model to
        drop before building the final model (LSFM-style); 0 disables.
    pca : "auto" | "exact" | "streamed". auto: exact while the data fit in
        ``exact_max_bytes``, else streamed randomized SVD over corpus chunks.
    device : "auto" | "cpu" | "cuda" for the PCA arithmetic.
    missing_iter : EM rounds (complete, re-align, rebuild) for corpora with validity masks.
    tangent : with similarity alignment, project the aligned shapes into the tangent
        space at the mean before PCA (removes the scale nonlinearity).
    n_iter, oversample, seed : randomized-SVD settings (seed passed explicitly).
    chunk : subjects per streamed chunk (default about 64 MB of float64).
    """

    def __init__(self, n_components: int | float | None = None, *, align: str = "similarity",
                 align_weights=None, prune: float = 0.0, tangent: bool = True, pca: str = "auto",
                 device: str = "auto",
                 exact_max_bytes: int = 512 << 20, n_iter: int = 4, oversample: int | None = None,
                 seed: int = 0, chunk: int | None = None, max_variance_components: int = 300,
                 missing_iter: int = 4, progress: Progress | None = None):
        self.n_components = n_components
        self.align = align
        self.align_weights = align_weights
        self.prune = prune
        self.tangent = tangent
        self.pca = pca
        self.device = device
        self.exact_max_bytes = exact_max_bytes
        self.n_iter = n_iter
        self.oversample = oversample
        self.seed = seed
        self.chunk = chunk
        self.max_variance_components = max_variance_components
        self.missing_iter = missing_iter
        self.progress = progress

    # ------------------------------------------------------------------ API
    def fit(self, corpus: Corpus | str | Path) -> "ModelTrainer":
        """Train on every subject of ``corpus`` (path or open :class:`Corpus`)."""
        self._check_params()
        own = not isinstance(corpus, Corpus)
        c = Corpus(corpus) if own else corpus
        try:
            t0 = time.perf_counter()
            if own and c.is_compressed and c.n_subjects * c.n_vertices * 24 > self.exact_max_bytes:
                c.stage()  # many streamed passes follow: decompress once
            if c.n_subjects < 2:
                raise SSMError(f"{c.path}: a model needs at least 2 subjects, the corpus has {c.n_subjects}")
            weights = self._weights(c)
            subjects = np.arange(c.n_subjects)
            model, gpa = self._build(c, subjects, weights)
            pruned: list[PrunedSubject] = []
            if self.prune > 0:
                norms = self._mahalanobis(c, model, gpa)
                n_drop = int(round(self.prune * len(subjects)))
                if n_drop >= len(subjects) - 1:
                    raise SSMError(f"--prune {self.prune} would drop {n_drop} of {len(subjects)} subjects")
                if n_drop > 0:
                    order = np.argsort(-norms, kind="stable")[:n_drop]
                    ids = c.ids
                    pruned = [PrunedSubject(ids[i], int(i), float(norms[i])) for i in order]
                    keep = np.setdiff1d(subjects, order)
                    log.info("pruning %d subjects (Mahalanobis norm >= %.2f)", n_drop, norms[order].min())
                    model, gpa = self._build(c, keep, weights)
            prov = dict(model.provenance)
            prov.update({
                "pruned_fraction": float(self.prune),
                "pruned": [{"id": p.subject_id, "index": p.index, "mahalanobis": round(p.mahalanobis, 4),
                            "reason": "largest Mahalanobis norm in the first model"} for p in pruned],
                "train_seconds": round(time.perf_counter() - t0, 3),
                "corpus": str(c.path),
                "corpus_provenance": c.provenance,
            })
            self.model_ = model.with_metadata(provenance=prov)
            self.gpa_ = gpa
            self.pruned_ = pruned
            return self
        finally:
            if own:
                c.close()

    # -------------------------------------------------------------- internals
    def _check_params(self) -> None:
        if self.align not in ("similarity", "rigid", "none"):
            raise SSMError(f"unknown --align {self.align!r} (use similarity, rigid or none)")
        if self.pca not in ("auto", "exact", "streamed"):
            raise SSMError(f"unknown PCA method {self.pca!r} (use auto, exact or streamed)")
        if not 0 <= self.prune < 1:
            raise SSMError(f"--prune must be in [0, 1), got {self.prune}")
        k = self.n_components
        if isinstance(k, float) and not 0 < k < 1 and k != int(k):
            raise SSMError(f"a variance fraction must be in (0, 1), got {k}")
        if k is not None and k <= 0:
            raise SSMError(f"--components must be positive, got {k}")

    def _weights(self, c: Corpus) -> np.ndarray | None:
        w = self.align_weights
        if w is None or (isinstance(w, str) and w in ("", "uniform")):
            return None
        if isinstance(w, str) and w == "landmarks":
            idx = np.fromiter(c.landmarks.values(), int)
            if len(idx) < 3:
                raise SSMError(f"{c.path}: landmark-weighted alignment needs >= 3 template landmarks, "
                               f"the corpus has {len(idx)} (import them with --landmarks)")
            out = np.zeros(c.n_vertices)
            out[idx] = 1.0
            return out
        if isinstance(w, str) and w.startswith("region:"):
            name = w.split(":", 1)[1]
            regions = c.regions
            if name not in regions:
                raise SSMError(f"{c.path}: no template region {name!r} (has: {', '.join(regions) or 'none'})")
            out = np.zeros(c.n_vertices)
            out[regions[name]] = 1.0
            return out
        arr = np.asarray(w, dtype=np.float64)
        if arr.shape != (c.n_vertices,):
            raise SSMError(f"alignment weights must have one value per vertex ({c.n_vertices})")
        return arr

    def _target_k(self, n_rows: int) -> tuple[int, float | None]:
        k = self.n_components
        rank = n_rows - 1
        if k is None:
            return rank, None
        if isinstance(k, float) and 0 < k < 1:
            return min(rank, self.max_variance_components), float(k)
        return min(int(k), rank), None

    def _build(self, c: Corpus, subjects: np.ndarray, weights) -> tuple[ShapeModel, GPAResult]:
        from ssm.device import resolve_device

        device = resolve_device(self.device)
        gpa = generalized_procrustes(c, self.align, weights, subjects, chunk=self.chunk, progress=self.progress)
        n_rows, d = len(subjects), 3 * c.n_vertices
        k, fraction = self._target_k(n_rows)
        method = self.pca
        if method == "auto":
            method = "exact" if n_rows * d * 8 <= self.exact_max_bytes else "streamed"
        masks = c.has_masks
        ids = c.ids if n_rows <= 5000 else None
        mean = gpa.mean
        basis, variances, total, shift = self._pca(c, gpa, mean, None, k, method, device)
        if fraction is not None:
            while (np.cumsum(variances)[-1] / total < fraction and k < n_rows - 1):
                k = min(n_rows - 1, 2 * k)
                basis, variances, total, shift = self._pca(c, gpa, mean, None, k, method, device)
        if masks:
            # Missing vertices were filled with the mean; complete them with the last
            # model's reconstruction, re-align the completed shapes, and rebuild (EM).
            for _ in range(self.missing_iter):
                mean = mean + shift.reshape(-1, 3)
                noise = max(total - float(variances.sum()), 0.0) / max(d - len(variances), 1)
                basis, variances, total, shift = self._pca(c, gpa, mean, (basis, variances, noise), k, method,
                                                           device)
        mean = mean + shift.reshape(-1, 3)  # the rows' own mean (tangent projection, completion)
        if fraction is not None:
            k_keep = int(np.searchsorted(np.cumsum(variances) / total, fraction) + 1)
            k_keep = min(k_keep, len(variances))
            basis, variances = basis[:, :k_keep], variances[:k_keep]
        kk = basis.shape[1]
        noise = max(total - float(variances.sum()), 0.0) / max(d - kk, 1)
        model = ShapeModel(
            mean=mean, basis=basis, variances=variances, noise_variance=noise,
            triangles=c.triangles, landmarks=c.landmarks, regions=c.regions, units=c.units,
            uv=None if c.uv is None else c.uv[0], triangle_uvs=None if c.uv is None else c.uv[1],
            provenance={
                "builder": "ssm.training.ModelTrainer", "align": self.align,
                "tangent_projection": bool(self.tangent and self.align == "similarity"),
                "align_weights": self.align_weights if isinstance(self.align_weights, (str, type(None)))
                else "array",
                "n_subjects": int(n_rows), "n_components": int(kk), "pca_method": method,
                "device": str(device), "total_variance": float(total),
                "gpa_iterations": gpa.iterations, "gpa_converged": gpa.converged,
                "subject_ids": [ids[i] for i in subjects] if n_rows <= 5000 else None,
            })
        return model, gpa

    def _rows(self, c: Corpus, gpa: GPAResult, mean: np.ndarray, first_model):
        """Row-block provider: aligned subjects minus ``mean`` (completed, tangent-projected).

        Blocks are (b, 3N) float32 torch tensors on the CPU (bulk arithmetic in float32,
        multi-threaded); the PCA moves them to its device.
        """
        import torch

        mean_t = torch.tensor(np.asarray(mean, dtype=np.float32))
        centre = torch.as_tensor(mean.mean(axis=0), dtype=torch.float32)
        mc = mean_t - centre
        mc2 = (mc * mc).sum(-1)  # (N,)
        sr = torch.as_tensor(gpa.scale[:, None, None] * gpa.rotation, dtype=torch.float32)  # (S, 3, 3)
        tr = torch.as_tensor(gpa.translation, dtype=torch.float32)

        def blocks():
            pos = 0
            for idx, v, m in c.iter_chunks(gpa.subjects, self.chunk, dtype=np.float32):
                b = len(idx)
                x = torch.baddbmm(tr[pos:pos + b, None], torch.from_numpy(v), sr[pos:pos + b].transpose(1, 2))
                pos += b
                if m is not None and m.all():
                    m = None
                if m is not None and first_model is not None:
                    x = torch.from_numpy(_complete(x.numpy().astype(np.float64), m, mean, *first_model,
                                                   self.align).astype(np.float32))
                    m = None
                mt = None if m is None else torch.from_numpy(m)
                if self.align == "similarity" and self.tangent:
                    # Kendall tangent-space projection: rescale each aligned shape so its
                    # component along the mean equals the mean; linear in the shape
                    # differences, which the PCA assumes (Dryden & Mardia, ch. 4).
                    dots = ((x - centre) * mc).sum(-1)  # (b, N)
                    if mt is None:
                        f = mc2.sum() / dots.sum(1)
                    else:
                        f = (mc2 * mt).sum(1) / (dots * mt).sum(1)
                    x = centre + (x - centre) * f[:, None, None]
                x = x - mean_t
                if mt is not None:
                    x[~mt] = 0.0  # mean imputation (first model)
                yield x.reshape(b, -1)
        return blocks

    def _pca(self, c: Corpus, gpa: GPAResult, mean: np.ndarray, first_model, k: int, method: str, device):
        from ssm.training.pca import pca_exact, pca_streamed

        blocks = self._rows(c, gpa, mean, first_model)
        if method == "streamed":
            blocks = _RowCache(blocks)  # prepare the rows once; the later passes only read them
        if method == "exact":
            import torch

            x = torch.cat([b.double() for b in blocks()], dim=0)
            return pca_exact(x, k, device)
        return pca_streamed(blocks, len(gpa.subjects), 3 * c.n_vertices, k, self.oversample, self.n_iter,
                            self.seed, device, self.progress)

    def _mahalanobis(self, c: Corpus, model: ShapeModel, gpa: GPAResult) -> np.ndarray:
        """(S,) Mahalanobis norm of each training subject in ``model``."""
        out = []
        inv_sd = 1.0 / np.sqrt(np.maximum(model.variances, 1e-300))
        for x in self._rows(c, gpa, model.mean, None)():
            out.append(np.linalg.norm((x.double().numpy() @ model.basis) * inv_sd, axis=1))
        return np.concatenate(out)


class _RowCache:
    """Row blocks computed on the first pass and spooled to a temporary file (float32).

    Aligning, projecting and centring the subjects costs more than the PCA products, and
    the streamed PCA reads the rows 5 times: later passes read the spooled rows back
    (disk and page cache, not process memory). Falls back to recomputing if the disk is
    full.
    """

    def __init__(self, make_blocks):
        self._make = make_blocks
        self._file = None
        self._shapes: list[tuple[int, int]] = []
        self._complete = False

    def __call__(self):
        import tempfile

        import torch

        if self._complete:
            fh = self._file
            fh.seek(0)
            for b, d in self._shapes:
                out = np.empty((b, d), dtype=np.float32)
                fh.readinto(memoryview(out).cast("B"))
                yield torch.from_numpy(out)
            return
        fh = tempfile.TemporaryFile(prefix="ssm-rows-") if self._file is None else self._file
        self._file, self._shapes, ok = fh, [], True
        fh.seek(0)
        for blk in self._make():
            if ok:
                try:
                    arr = blk.numpy() if hasattr(blk, "numpy") else np.asarray(blk)
                    fh.write(np.ascontiguousarray(arr, dtype=np.float32).tobytes())
                    self._shapes.append(tuple(arr.shape))
                except OSError:
                    ok = False
            yield blk
        self._complete = ok

    def __del__(self):
        if self._file is not None:
            self._file.close()


def _complete(x: np.ndarray, mask: np.ndarray, mean: np.ndarray, basis: np.ndarray, variances: np.ndarray,
              noise: float, align: str, rounds: int = 3) -> np.ndarray:
    """Complete partial aligned shapes x (b, N, 3) with a first model, re-aligning as a whole.

    A partial shape aligned on its observed part alone is biased (its centroid and pose
    depend on what is missing), so the missing vertices are filled with the model's MAP
    reconstruction from the observed ones, the completed shape is re-aligned to the mean
    with all vertices, and this repeats ``rounds`` times (EM-style GPA with missing data).
    """
    b, n, _ = x.shape
    out = x.copy()
    scaled = basis * np.sqrt(variances)  # (D, K)
    s2 = max(noise, 1e-6 * float(variances.max()))  # PPCA noise regularises the MAP fill
    for i in range(b):
        if mask[i].all():
            continue
        rows = np.repeat(mask[i], 3)
        u = scaled[rows]
        gram = u.T @ u + s2 * np.eye(u.shape[1])
        xi = out[i]
        for _ in range(rounds):
            coef = np.linalg.solve(gram, u.T @ (xi - mean).reshape(-1)[rows])
            rec = mean + (scaled @ coef).reshape(n, 3)
            xi = np.where(mask[i][:, None], xi, rec)
            if align != "none":
                s, r, t = fit_similarity(xi, mean, scale=(align == "similarity"))
                xi = s * xi @ r.T + t
        out[i] = xi
    return out


def train_model(corpus: str | Path | Corpus, **kwargs) -> ShapeModel:
    """Convenience: ``ModelTrainer(**kwargs).fit(corpus).model_``."""
    return ModelTrainer(**kwargs).fit(corpus).model_
