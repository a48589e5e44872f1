"""Model quality: compactness, generalisation and specificity (Styner et al. 2003).

Generalisation and specificity are reported two ways, both in corpus units (mm):

* **v2v**: mean distance between corresponding vertices;
* **v2s**: mean distance from the model's vertices to the other shape's *surface*.

v2v alone flatters a model built on poor correspondence (sliding along the surface
costs v2v but not v2s), v2s alone hides it; the pair tells both.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ssm.geometry.similarity import apply_similarity, fit_similarity
from ssm.io.corpus import Corpus
from ssm.models.shape_model import ShapeModel

log = logging.getLogger(__name__)
Progress = Callable[[str, int, int], None]


def components_grid(k_max: int) -> list[int]:
    """Numbers of components to evaluate: dense at first, then sparser, ending at ``k_max``."""
    base = [1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50, 60, 80, 100, 125, 150, 200, 250, 300]
    ks = [k for k in base if k < k_max] + [k_max]
    while ks[-2:-1] and ks[-2] * 1.25 < k_max and ks[-2] >= 300:
        ks.insert(-1, int(ks[-2] * 1.5))
    return sorted(set(k for k in ks if k >= 1))


@dataclass(frozen=True)
class CurvePoint:
    n_components: int
    v2v_mean: float
    v2v_std: float
    v2s_mean: float


@dataclass(frozen=True)
class Evaluation:
    """Compactness, generalisation and specificity curves (units: the corpus's)."""

    units: str
    compactness: list[float]  # cumulative variance fraction for K = 1..model K
    generalisation: list[CurvePoint]
    specificity: list[CurvePoint]
    generalisation_mode: str  # "held-out" or "k-fold (k=5)"
    n_samples: int
    settings: dict = field(default_factory=dict)

    def table(self):
        """A rich table of compactness, generalisation and specificity by component count."""
        from rich.table import Table

        table = Table(title=f"Model evaluation ({self.units})")
        for col in ("K", "variance", "gen v2v", "gen v2s", "spec v2v", "spec v2s"):
            table.add_column(col, justify="right")
        spec = {p.n_components: p for p in self.specificity}
        for g in self.generalisation:
            s = spec.get(g.n_components)
            frac = self.compactness[g.n_components - 1] if g.n_components <= len(self.compactness) else float("nan")
            table.add_row(str(g.n_components), f"{frac * 100:.2f}%", f"{g.v2v_mean:.3f}", f"{g.v2s_mean:.3f}",
                          f"{s.v2v_mean:.3f}" if s else "-", f"{s.v2s_mean:.3f}" if s else "-")
        return table

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def plot(self, path: str | Path) -> Path:
        """Write a PNG with the three curves (atomic)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from ssm.io.atomic import atomic_write

        fig, ax = plt.subplots(1, 3, figsize=(15, 4.2))
        k = np.arange(1, len(self.compactness) + 1)
        ax[0].plot(k, self.compactness, "-", color="C0")
        ax[0].set(title="Compactness", xlabel="components", ylabel="cumulative variance fraction", ylim=(0, 1.02))
        for a, curve, title in ((ax[1], self.generalisation, f"Generalisation ({self.generalisation_mode})"),
                                (ax[2], self.specificity, f"Specificity ({self.n_samples} samples)")):
            ks = [p.n_components for p in curve]
            a.errorbar(ks, [p.v2v_mean for p in curve], yerr=[p.v2v_std for p in curve], fmt="o-",
                       ms=3, capsize=2, label="vertex to vertex")
            a.plot(ks, [p.v2s_mean for p in curve], "s--", ms=3, label="vertex to surface")
            a.set(title=title, xlabel="components", ylabel=f"mean error ({self.units})")
            a.set_ylim(bottom=0)
            a.legend()
        for a in ax:
            a.grid(alpha=0.3)
        fig.tight_layout()
        path = Path(path)
        with atomic_write(path) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
        plt.close(fig)
        return path


def _align_to_mean(shapes: np.ndarray, masks: np.ndarray | None, mean: np.ndarray, align: str):
    """Align shapes (b, N, 3) to the model mean as the model was built (observed vertices
    only); returns ``(aligned, s, r, t)`` with the transforms (identity for "none")."""
    b, n, _ = shapes.shape
    if align == "none":
        s, r, t = np.ones(b), np.tile(np.eye(3), (b, 1, 1)), np.zeros((b, 3))
    else:
        w = np.ones((b, n)) if masks is None else masks.astype(np.float64)
        s, r, t = fit_similarity(shapes, mean, weights=w, scale=(align == "similarity"))
    return apply_similarity(shapes, s, r, t), s, r, t


def _reconstruction_errors(model: ShapeModel, shapes: np.ndarray, masks: np.ndarray | None,
                           ks: list[int], triangles: np.ndarray | None, align: str):
    """Per-shape v2v and v2s errors (len(ks), b) of the best K-component reconstruction.

    shapes : (b, N, 3) in their own frame; they are aligned to the model mean, projected
    (MAP, observed vertices only), and the reconstruction is mapped back to the shape's
    frame, so errors are in the shape's units.
    """
    from ssm.geometry.surface_distance import SurfaceQuery

    b = shapes.shape[0]
    aligned, s, r, t = _align_to_mean(shapes, masks, model.mean, align)
    v2v = np.zeros((len(ks), b))
    v2s = np.zeros((len(ks), b))
    k_max = max(ks)
    for i in range(b):
        mask = None if masks is None else masks[i]
        coeffs = model.project(aligned[i], mask=mask, n_components=k_max)
        query = SurfaceQuery(shapes[i], triangles) if triangles is not None else None
        obs = slice(None) if mask is None else mask
        for j, k in enumerate(ks):
            # full shapes: MAP coefficients shrink each component independently, so
            # truncating the K_max solution is exact; partial shapes are re-solved.
            rec_m = model.instance(coeffs[:k]) if (mask is None or k == k_max) else model.instance(
                model.project(aligned[i], mask=mask, n_components=k))
            rec = ((rec_m - t[i]) @ r[i]) / s[i]  # back to the shape's frame
            v2v[j, i] = np.linalg.norm(rec[obs] - shapes[i][obs], axis=1).mean()
            v2s[j, i] = query.distance(rec[obs]).mean() if query is not None else v2v[j, i]
    return v2v, v2s


def generalisation_heldout(model: ShapeModel, test: Corpus, ks: list[int] | None = None,
                           max_subjects: int | None = None, progress: Progress | None = None) -> list[CurvePoint]:
    """Generalisation of ``model`` to the subjects of a held-out corpus."""
    ks = ks or components_grid(model.n_components)
    subjects = np.arange(test.n_subjects if max_subjects is None else min(max_subjects, test.n_subjects))
    align = str(model.provenance.get("align", "similarity"))
    v2v, v2s = [], []
    done = 0
    for _, v, m in test.iter_chunks(subjects, chunk=32):
        a, b = _reconstruction_errors(model, v, m, ks, test.triangles, align)
        v2v.append(a)
        v2s.append(b)
        done += v.shape[0]
        if progress:
            progress("Generalisation", done, len(subjects))
    return _curve(ks, np.concatenate(v2v, axis=1), np.concatenate(v2s, axis=1))


def _curve(ks, v2v, v2s) -> list[CurvePoint]:
    return [CurvePoint(int(k), float(v2v[j].mean()), float(v2v[j].std()), float(v2s[j].mean()))
            for j, k in enumerate(ks)]


def generalisation_kfold(model: ShapeModel, corpus: Corpus, folds: int = 5, seed: int = 0,
                         ks: list[int] | None = None, trainer_kwargs: dict | None = None,
                         progress: Progress | None = None) -> list[CurvePoint]:
    """k-fold cross-validated generalisation: retrain without each fold, reconstruct it.

    The folds' models are built with the same alignment as ``model`` (from its provenance)
    and as many components as the training folds allow (up to ``model``'s K).
    """
    from ssm.training.trainer import ModelTrainer

    s = corpus.n_subjects
    folds = int(min(folds, s))
    if folds < 2:
        raise ValueError("k-fold generalisation needs at least 2 subjects")
    order = np.random.default_rng(seed).permutation(s)
    parts = np.array_split(order, folds)
    k_model = model.n_components
    align = str(model.provenance.get("align", "similarity"))
    kw = dict(align=align, device="cpu")
    kw.update(trainer_kwargs or {})
    all_v2v, all_v2s = [], []
    ks_used = None
    for f, held in enumerate(parts):
        train_idx = np.sort(np.setdiff1d(order, held))
        k_fold = min(k_model, len(train_idx) - 1)
        ks_f = ks or components_grid(k_fold)
        ks_f = [k for k in ks_f if k <= k_fold]
        ks_used = ks_f if ks_used is None else [k for k in ks_used if k in ks_f]
        sub = _SubsetCorpus(corpus, train_idx)
        fold_model = ModelTrainer(k_fold, **kw).fit(sub).model_
        v = corpus.read(np.sort(held))
        m = corpus.read_masks(np.sort(held))
        a, b = _reconstruction_errors(fold_model, v, m, ks_f, corpus.triangles, align)
        all_v2v.append(dict(zip(ks_f, a)))
        all_v2s.append(dict(zip(ks_f, b)))
        if progress:
            progress("Generalisation folds", f + 1, folds)
    v2v = np.stack([np.concatenate([d[k] for d in all_v2v]) for k in ks_used])
    v2s = np.stack([np.concatenate([d[k] for d in all_v2s]) for k in ks_used])
    return _curve(ks_used, v2v, v2s)


class _SubsetCorpus(Corpus):
    """A view of some subjects of an open corpus (for cross-validation folds)."""

    def __init__(self, parent: Corpus, subjects: np.ndarray):  # noqa: D107 - no file re-open
        self.__dict__.update(parent.__dict__)
        self._subset = np.sort(np.asarray(subjects))
        self._parent = parent

    @property
    def n_subjects(self) -> int:
        return len(self._subset)

    @property
    def ids(self) -> list[str]:
        ids = self._parent.ids
        return [ids[i] for i in self._subset]

    def read(self, indices=None, dtype=np.float64):
        idx = self._subset if indices is None else self._subset[np.asarray(indices) if not isinstance(
            indices, slice) else indices]
        return self._parent.read(idx, dtype)

    def read_masks(self, indices=None):
        idx = self._subset if indices is None else self._subset[np.asarray(indices) if not isinstance(
            indices, slice) else indices]
        return self._parent.read_masks(idx)

    def iter_chunks(self, subjects=None, chunk=None, dtype=np.float64):
        local = np.arange(len(self._subset)) if subjects is None else np.asarray(subjects)
        chunk = chunk or self.chunk_size(dtype=dtype)
        for start in range(0, len(local), chunk):
            idx = local[start:start + chunk]
            yield idx, self.read(idx, dtype), self.read_masks(idx)

    def close(self) -> None:  # the parent owns the file
        pass


def specificity(model: ShapeModel, corpus: Corpus, n_samples: int = 100, seed: int = 0,
                ks: list[int] | None = None, candidates: int = 5,
                progress: Progress | None = None) -> list[CurvePoint]:
    """Specificity: random model instances vs their nearest training shape.

    For each K, ``n_samples`` instances of the K-component model (common random numbers
    across K) are compared with every training subject aligned to the model mean. The
    nearest subject by RMS distance is found in one streamed pass (bounded memory); v2v
    and v2s are then computed exactly against the ``candidates`` nearest ones.
    """
    from ssm.geometry.surface_distance import SurfaceQuery

    ks = ks or components_grid(model.n_components)
    rng = np.random.default_rng(seed)
    coeffs = rng.standard_normal((n_samples, max(ks)))
    align = str(model.provenance.get("align", "similarity"))
    samples = np.stack([np.stack([model.instance(c[:k]) for c in coeffs]) for k in ks])  # (nk, n, N, 3)
    nk, n, nv, _ = samples.shape
    flat = samples.reshape(nk * n, -1).astype(np.float32)
    sq = (flat.astype(np.float64) ** 2).sum(1)
    best_d = np.full((nk * n, candidates), np.inf)
    best_i = np.full((nk * n, candidates), -1, dtype=np.int64)
    done = 0
    for idx, v, m in corpus.iter_chunks(chunk=128):
        aligned = _align_to_mean(v, m, model.mean, align)[0]
        x = aligned.reshape(len(idx), -1).astype(np.float32)
        d2 = sq[:, None] + (x.astype(np.float64) ** 2).sum(1)[None] - 2.0 * (flat @ x.T)
        all_d = np.concatenate([best_d, d2], axis=1)
        all_i = np.concatenate([best_i, np.broadcast_to(idx, d2.shape)], axis=1)
        sel = np.argsort(all_d, axis=1)[:, :candidates]
        best_d = np.take_along_axis(all_d, sel, 1)
        best_i = np.take_along_axis(all_i, sel, 1)
        done += len(idx)
        if progress:
            progress("Specificity search", done, corpus.n_subjects)
    # exact distances against the candidates
    uniq = np.unique(best_i[best_i >= 0])
    shapes = corpus.read(uniq)
    shapes = _align_to_mean(shapes, corpus.read_masks(uniq), model.mean, align)[0]
    pos = {int(u): j for j, u in enumerate(uniq)}
    tri = corpus.triangles
    queries: dict[int, SurfaceQuery] = {}
    v2v = np.zeros((nk, n))
    v2s = np.zeros((nk, n))
    for row in range(nk * n):
        kk, ii = divmod(row, n)
        smp = samples[kk, ii]
        dv, ds = np.inf, np.inf
        for cand in best_i[row]:
            if cand < 0:
                continue
            j = pos[int(cand)]
            dv = min(dv, float(np.linalg.norm(smp - shapes[j], axis=1).mean()))
            if tri is not None:
                if j not in queries:
                    queries[j] = SurfaceQuery(shapes[j], tri)
                ds = min(ds, float(queries[j].distance(smp).mean()))
        v2v[kk, ii] = dv
        v2s[kk, ii] = ds if tri is not None else dv
    return _curve(ks, v2v, v2s)


def evaluate(model: ShapeModel, corpus: Corpus, test: Corpus | None = None, folds: int = 5,
             n_samples: int = 100, seed: int = 0, max_test_subjects: int | None = None,
             progress: Progress | None = None) -> Evaluation:
    """All three measures; generalisation on ``test`` when given, else k-fold on ``corpus``."""
    frac = model.variance_fraction()
    if test is not None:
        gen = generalisation_heldout(model, test, max_subjects=max_test_subjects, progress=progress)
        mode = "held-out"
    else:
        gen = generalisation_kfold(model, corpus, folds=folds, seed=seed, progress=progress)
        mode = f"{folds}-fold"
    spec = specificity(model, corpus, n_samples=n_samples, seed=seed, progress=progress)
    return Evaluation(model.units, [float(x) for x in frac], gen, spec, mode, n_samples,
                      {"folds": folds, "seed": seed, "corpus": str(corpus.path),
                       "test": None if test is None else str(test.path)})
