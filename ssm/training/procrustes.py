"""Generalised Procrustes alignment (GPA), streamed over a corpus in chunks.

Memory: one chunk of subjects plus the (N, 3) mean and the per-subject transforms.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np

from ssm.geometry.similarity import apply_similarity, fit_similarity
from ssm.io.corpus import Corpus

log = logging.getLogger(__name__)

AlignMode = Literal["similarity", "rigid", "none"]
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class GPAResult:
    """Result of GPA over ``subjects``.

    mean : (N, 3) float64, Procrustes mean in the corpus units and the frame of the
        first subject (similarity mode keeps the average centroid size of the inputs).
    subjects : (S,) corpus indices aligned.
    scale, rotation, translation : (S,), (S, 3, 3), (S, 3) transforms taking each
        subject onto the mean.
    iterations, converged : GPA loop diagnostics; rms_change : last mean update (units).
    """

    mean: np.ndarray
    subjects: np.ndarray
    scale: np.ndarray
    rotation: np.ndarray
    translation: np.ndarray
    mode: str
    iterations: int
    converged: bool
    rms_change: float

    def align(self, positions: np.ndarray, vertices: np.ndarray) -> np.ndarray:
        """Apply the stored transforms: positions index ``subjects``; vertices (b, N, 3)."""
        return apply_similarity(vertices, self.scale[positions], self.rotation[positions],
                                self.translation[positions])


def _centroid_size(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    wn = w / w.sum(axis=1, keepdims=True)
    c = np.matmul(wn[:, None, :], x)
    return np.sqrt((wn * ((x - c) ** 2).sum(axis=2)).sum(axis=1))


def generalized_procrustes(corpus: Corpus, mode: AlignMode = "similarity",
                           weights: np.ndarray | None = None, subjects: np.ndarray | None = None,
                           max_iter: int = 20, tol: float = 1e-7, chunk: int | None = None,
                           progress: Progress | None = None) -> GPAResult:
    """Align the corpus subjects to their common mean.

    weights : (N,) per-vertex alignment weights (landmark or region weighting); they
        are multiplied by each subject's validity mask.
    tol : stop when the mean moves less than ``tol`` times its size (RMS per vertex).
    Each iteration is one streamed pass over the corpus.
    """
    n = corpus.n_vertices
    subjects = np.arange(corpus.n_subjects) if subjects is None else np.sort(np.asarray(subjects))
    s_count = len(subjects)
    if s_count == 0:
        raise ValueError("no subjects to align")
    base_w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    if base_w.shape != (n,) or base_w.sum() <= 0:
        raise ValueError("alignment weights must be (N,) with a positive sum")
    scale = np.ones(s_count)
    rot = np.tile(np.eye(3), (s_count, 1, 1))
    trans = np.zeros((s_count, 3))

    def chunks():
        return corpus.iter_chunks(subjects, chunk)

    # Pass 0: the reference (the first subject with the most valid vertices) and the
    # average size of the inputs.
    ref_subject = subjects[0]
    if corpus.has_masks:
        counts = np.concatenate([m.sum(axis=1) for _, _, m in corpus.iter_chunks(subjects, chunk)])
        ref_subject = subjects[int(np.argmax(counts))]
    first = corpus.read([ref_subject])[0]
    m0 = corpus.read_masks([ref_subject])
    w0 = base_w * (1.0 if m0 is None else m0[0])
    sizes = []
    if mode == "similarity":
        for _, v, m in chunks():
            sizes.append(_centroid_size(v, np.broadcast_to(base_w, v.shape[:2]) * (1 if m is None else m)))
        target_size = float(np.mean(np.concatenate(sizes)))
    else:
        target_size = None
    ref = first - (w0[:, None] * first).sum(0) / w0.sum()
    if target_size is not None:
        ref *= target_size / float(_centroid_size(ref[None], w0[None])[0])
    if mode == "none":
        max_iter = 1

    mean = ref
    converged = False
    change = np.inf
    it = 0
    for it in range(1, max_iter + 1):
        acc = np.zeros((n, 3))
        cnt = np.zeros(n)
        pos = 0
        for idx, v, m in chunks():
            b = len(idx)
            valid = np.ones((b, n)) if m is None else m.astype(np.float64)
            if mode != "none":
                s, r, t = fit_similarity(v, mean, weights=valid * base_w, scale=(mode == "similarity"))
                scale[pos:pos + b], rot[pos:pos + b], trans[pos:pos + b] = s, r, t
            aligned = apply_similarity(v, scale[pos:pos + b], rot[pos:pos + b], trans[pos:pos + b])
            acc += (aligned * valid[:, :, None]).sum(axis=0)
            cnt += valid.sum(0)
            pos += b
            if progress:
                progress(f"Procrustes pass {it}", pos, s_count)
        new_mean = np.where(cnt[:, None] > 0, acc / np.maximum(cnt, 1)[:, None], mean)
        if mode != "none":
            # keep the mean's pose and size fixed to the reference frame
            s, r, t = fit_similarity(new_mean, ref, weights=base_w * (cnt > 0), scale=(mode == "similarity"))
            new_mean = s * new_mean @ r.T + t
        change = float(np.sqrt(((new_mean - mean) ** 2).sum(1).mean()))
        size = float(np.sqrt(((new_mean - new_mean.mean(0)) ** 2).sum(1).mean()))
        mean = new_mean
        log.debug("GPA iteration %d: mean moved %.3g", it, change)
        if mode == "none" or change <= tol * max(size, 1e-12):
            converged = True
            break
    # The transforms of the last pass were fitted to a mean that moved less than tol since.
    return GPAResult(mean, subjects, scale, rot, trans, mode, it, converged, change)
