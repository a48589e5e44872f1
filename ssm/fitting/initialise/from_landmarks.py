"""The model's pose from landmarks: a robust similarity (Umeyama inside RANSAC)."""

from __future__ import annotations

import itertools
import time

import numpy as np

from ssm.fitting.config import InitConfig
from ssm.fitting.prepare.landmarks import MatchedLandmarks
from ssm.fitting.state import StageReport, residual_stats
from ssm.geometry.similarity import Similarity, fit_similarity

ALL_TRIPLES_MAX = 12  # up to this many landmarks every triple is tried (220), beyond it random ones
CONSENSUS_SPREAD = 2.5  # a refit keeps landmarks within this many median residuals (or the threshold)


def landmark_similarity(model_points: np.ndarray, lms: MatchedLandmarks, config: InitConfig,
                        rng: np.random.Generator,
                        fixed_scale: float | None = None) -> tuple[Similarity, np.ndarray, StageReport]:
    """Similarity model -> scan from landmark pairs, robust to wrong landmarks.

    model_points : (L, 3) model landmark positions (mm, model frame), paired with
        ``lms.points`` (scan frame). Minimal samples of 3 pairs are scored by the number
        of pairs within ``ransac_threshold_mm`` (measured in the model frame, so
        independent of the scan's units); the best consensus is refitted.
    rng : draws the minimal samples when there are too many to try them all.
    fixed_scale : known model->scan scale (units), or None to estimate it.
    Returns (transform, inlier mask (L,), report).
    """
    t0 = time.perf_counter()
    src, dst = np.asarray(model_points, float), lms.points
    n = len(src)
    if n < 3:
        raise ValueError("landmark initialisation needs at least 3 landmarks")

    def solve(idx):
        s, r, t = fit_similarity(src[idx], dst[idx], scale=True if fixed_scale is None else fixed_scale)
        return Similarity(float(s), r, t)

    def residual_mm(sim):
        return np.linalg.norm(sim.inverse().apply(dst) - src, axis=1)

    combos = list(itertools.combinations(range(n), 3)) if n <= ALL_TRIPLES_MAX else None
    best, best_score = None, (-1, np.inf)
    trials = combos if combos is not None else (rng.choice(n, 3, replace=False) for _ in range(config.ransac_iterations))
    for idx in trials:
        idx = np.asarray(idx)
        a, b, c = src[idx]
        if np.linalg.norm(np.cross(b - a, c - a)) < 1e-6 * max(np.ptp(src, 0).max() ** 2, 1e-12):
            continue  # collinear sample
        sim = solve(idx)
        if not sim.scale > 0:
            continue
        res = residual_mm(sim)
        inl = res < config.ransac_threshold_mm
        score = (int(inl.sum()), float(np.median(res[inl])) if inl.any() else np.inf)
        if score[0] > best_score[0] or (score[0] == best_score[0] and score[1] < best_score[1]):
            best, best_score = inl, score
    inliers = best if best is not None and best.sum() >= 3 else np.ones(n, bool)
    sim = solve(np.flatnonzero(inliers))
    for _ in range(2):  # refit on the consensus of the refined transform
        res = residual_mm(sim)
        new = res < max(config.ransac_threshold_mm, CONSENSUS_SPREAD * np.median(res[inliers]))
        if new.sum() < 3 or np.array_equal(new, inliers):
            break
        inliers = new
        sim = solve(np.flatnonzero(inliers))
    res = residual_mm(sim)
    mean, med = residual_stats(res[inliers])
    rep = StageReport("landmark_init", time.perf_counter() - t0, mean, med, int(inliers.sum()),
                      extra={"rejected": [lms.names[i] for i in np.flatnonzero(~inliers)],
                             "scale": sim.scale})
    return sim, inliers, rep
