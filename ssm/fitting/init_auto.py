"""Stage 2: automatic similarity initialisation when no landmarks are given.

A global search: the scan's and the model mean's principal axes give 24 candidate
rotations (every axis permutation and sign with det +1), each tried at a few scales
(the scan may show the whole head or only a face), and each hypothesis is refined by a
short trimmed similarity ICP from the scan to the model mean. Hypotheses are scored by
the trimmed residual; the best few get more iterations. When the scan holds
well-separated clusters (a head and a wall behind it), each sizeable cluster is searched
too, and the candidates compete on their residual in mm.
"""

from __future__ import annotations

import itertools
import time

import numpy as np
from scipy.spatial import cKDTree

from ssm.fitting.config import FitConfig
from ssm.fitting.scan import Scan
from ssm.fitting.stage import StageReport
from ssm.geometry.similarity import Similarity, axis_angle_rotation, similarity_step
from ssm.io.units import HEAD_DIAGONAL_MM
from ssm.models.shape_model import ShapeModel


def _axes(p: np.ndarray) -> np.ndarray:
    c = p - p.mean(0)
    w, v = np.linalg.eigh(c.T @ c)
    v = v[:, ::-1].copy()
    if np.linalg.det(v) < 0:
        v[:, 2] *= -1  # a proper rotation, so the 24 hypotheses are all rotations
    return v


def _rotations() -> list[np.ndarray]:
    out = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            m = np.zeros((3, 3))
            m[range(3), perm] = signs
            if np.linalg.det(m) > 0:
                out.append(m)
    return out


def _icp(src_scan: np.ndarray, tree: cKDTree, model_pts: np.ndarray, model_nrm: np.ndarray, sim: Similarity,
         iters: int, trim: float, fixed_scale: float | None) -> tuple[Similarity, float]:
    """Trimmed point-to-plane similarity ICP from scan points to the model mean.

    Returns (model -> scan transform, trimmed mean residual in the scan's units: in
    model units it would favour hypotheses that shrink the scan).
    """
    score = np.inf
    for _ in range(iters):
        q = sim.inverse().apply(src_scan)  # scan points in the model frame (mm)
        d, j = tree.query(q)
        keep = d <= np.quantile(d, trim)
        score = float(d[keep].mean()) * sim.scale
        src = sim.apply(model_pts[j[keep]])
        nrm = model_nrm[j[keep]] @ sim.rotation.T
        n = int(keep.sum())
        step = similarity_step(src, src_scan[keep], nrm, np.full(n, 0.8), np.full(n, 0.2),
                               scale=fixed_scale is None)
        if not (np.isfinite(step.scale) and step.scale > 0):
            break
        sim = step.compose(sim)
    return sim, score


def auto_similarity(model: ShapeModel, scan: Scan, config: FitConfig,
                    fixed_scale: float | None = None) -> tuple[Similarity, StageReport]:
    """Model -> scan similarity without landmarks (see module doc).

    Scans often hold more than the head (a wall behind it, a second object): when the
    sampled points fall into several well-separated clusters, each sizeable cluster is
    searched on its own as well as the whole scan, and the hypothesis with the smallest
    trimmed residual in mm (at a plausible head size) wins.
    """
    t0 = time.perf_counter()
    rng = np.random.default_rng(config.seed)
    good = np.flatnonzero(~scan.boundary)
    if len(good) < 10:
        good = np.arange(len(scan.points))
    pick = good if len(good) <= config.auto_points else rng.choice(good, config.auto_points, replace=False)
    m = model.mean.astype(np.float64)
    from ssm.fitting.model_fit import instance_normals

    mnorm = instance_normals(model, m)
    sub = np.arange(len(m)) if len(m) <= 6000 else rng.choice(len(m), 6000, replace=False)
    target = (m, mnorm, m[sub], mnorm[sub], cKDTree(m[sub]))
    best, n_hyps = None, 0
    regions = [pick] + [pick[c] for c in _clusters(scan.points[pick])]
    for i, region in enumerate(regions):  # the clusters get a coarser search (no tilts)
        key, score, sim, n = _search(scan.points[region], scan.normals[region], target, config, rng, fixed_scale,
                                     tilted=i == 0)
        n_hyps += n
        key_mm = key / sim.scale
        if best is None or key_mm < best[0]:
            best = (key_mm, score, sim)
    _, score, sim = best
    rep = StageReport("auto_init", time.perf_counter() - t0, score / sim.scale, score / sim.scale, len(pick),
                      extra={"hypotheses": n_hyps, "regions": len(regions), "scale": sim.scale})
    return sim, rep


def _clusters(p: np.ndarray, min_fraction: float = 0.15, max_clusters: int = 3) -> list[np.ndarray]:
    """Index arrays of the sizeable well-separated clusters of the sample ``p`` (P, 3).

    Empty when one cluster holds (nearly) everything: the usual scan of just a head.
    Points link when closer than 4x the sample's median nearest-neighbour distance.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if len(p) < 20:
        return []
    tree = cKDTree(p)
    d, _ = tree.query(p, k=2)
    pairs = tree.query_pairs(4.0 * float(np.median(d[:, 1])), output_type="ndarray")
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(len(p), len(p)))
    _, labels = connected_components(graph, directed=False)
    counts = np.bincount(labels)
    if counts.max() >= 0.9 * len(p):
        return []
    order = np.argsort(counts)[::-1][:max_clusters]
    return [np.flatnonzero(labels == c) for c in order if counts[c] >= min_fraction * len(p)]


def _search(p: np.ndarray, normals: np.ndarray, target, config: FitConfig, rng: np.random.Generator,
            fixed_scale: float | None, tilted: bool = True) -> tuple[float, float, Similarity, int]:
    """Best hypothesis for scan points ``p`` (P, 3) with their ``normals``.

    tilted : also try each axis hypothesis tilted by 25 degrees about each axis (7x the
        hypotheses; principal axes of a partial scan are only roughly the model's).

    Returns (key, score, similarity, hypotheses tried): score is the trimmed residual in
    scan units, key the same with a penalty for an implausible head size.
    """
    m, mnorm, msub, nsub, tree = target
    es, em = _axes(p), _axes(m)
    # A partial scan's centroid lies on the surface side it was seen from: its mean
    # normal says which side; the matching model centroid is that of the vertices
    # facing the same way (for a full-head scan the mean normal is ~0: all vertices).
    view = normals.sum(0) / len(p)
    partial = np.linalg.norm(view) > 0.25
    rms = lambda a: float(np.sqrt(((a - a.mean(0)) ** 2).sum(1).mean()))  # noqa: E731
    s_full = rms(p) / rms(m)
    scales = [fixed_scale] if fixed_scale is not None else [s_full, s_full * 1.5]
    coarse = p if len(p) <= 400 else p[rng.choice(len(p), 400, replace=False)]
    tilts = [np.eye(3)]
    if tilted:
        tilts += [axis_angle_rotation(np.deg2rad(25.0) * sgn * np.eye(3)[ax]) for ax in range(3) for sgn in (1, -1)]
    hyps = []
    for s in scales:
        for d in _rotations():
            for tilt in tilts:
                r = es @ d @ em.T @ tilt
                centre = m.mean(0)
                if partial:
                    facing = mnorm @ (r.T @ view) > 0.3 * np.linalg.norm(view)
                    if facing.sum() > 10:
                        centre = m[facing].mean(0)
                t = p.mean(0) - s * r @ centre
                sim, score = _icp(coarse, tree, msub, nsub, Similarity(s, r, t), 3, 0.7, fixed_scale)
                hyps.append((score, sim))
    hyps.sort(key=lambda h: h[0])
    diagonal = float(np.linalg.norm(np.ptp(p, axis=0)))
    best = None
    for score, sim in hyps[:10]:
        sim, score = _icp(p, tree, msub, nsub, sim, config.auto_icp_iterations, 0.7, fixed_scale)
        size_mm = diagonal / sim.scale
        plausible = HEAD_DIAGONAL_MM[0] <= size_mm <= HEAD_DIAGONAL_MM[1]
        key = score * (1.0 if plausible else 10.0)
        if best is None or key < best[0]:
            best = (key, score, sim)
    return (*best, len(hyps))
