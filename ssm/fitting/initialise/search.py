"""The automatic search for the model's pose on the scan when no landmarks are given.

A global search: the scan's and the model mean's principal axes give 24 candidate
rotations (every axis permutation and sign with det +1), each tried at a few scales
(the scan may show the whole head or only a face), and each hypothesis is refined by a
short trimmed similarity ICP from the scan to the model mean. Hypotheses are scored by
the trimmed residual; the best few get more iterations. When the scan holds
well-separated clusters (a head and a wall behind it), each sizeable cluster is searched
too, and the candidates compete on their residual in mm. The residual against the mean
shape cannot always tell a face slid along itself from the right place, so the best
few distinct candidates each get a short, stiff model fit and the model chooses
(:func:`select_start`). When even the chosen one explains the scan poorly, the head may
be only part of a connected scan (head and shoulders): :func:`window_starts` searches
patches of the scan, and the model chooses again.
"""

from __future__ import annotations

import itertools
import time
from typing import Callable

import numpy as np
from scipy.spatial import cKDTree

from ssm.fitting.config import InitConfig
from ssm.fitting.model_fit.basis import instance_normals
from ssm.fitting.model_fit.iterate import fit_model
from ssm.fitting.model_fit.schedule import selection_schedules
from ssm.fitting.prepare.scan import Scan, scan_explained
from ssm.fitting.problem import FitProblem
from ssm.fitting.state import FitState, StageReport
from ssm.geometry.mesh_ops import component_labels
from ssm.geometry.nearest import DevicePoints, TreePoints, point_index
from ssm.geometry.similarity import Similarity, axis_angle_rotation, similarity_steps
from ssm.units import HEAD_DIAGONAL_MM
from ssm.models.model_units import mean_diagonal
from ssm.models.shape_model import ShapeModel


REFINED_HYPOTHESES = 10  # the coarse search's best hypotheses, refined by a longer ICP
WINDOWS = 6  # k-means patches of the scan searched for a head within more (window_starts)
WINDOW_GROWTH = 1.3  # window_starts keeps hypotheses at most this many times the window's size
CROP_REACH = 1.15  # window_starts keeps the points within this many model radii of the placed model
# a chosen start whose quick fit scores above this (median residual in mm over the share
# of the scan explained; head scans score lower, busts and heads with hair higher) says
# the head may be only part of the scan: the initialisation then also tries window_starts
WINDOW_SEARCH_SCORE = 6.0
SELECTION_EXPLAINED_SAMPLES = 2000  # scan points a start's score measures coverage on
NAMED_UNIT_TOLERANCE = 1.3  # a start's scale within this factor of a named unit's is in that unit
HEAD_WINDOWS_MAX = 32  # head_window_starts: the most head-sized windows searched
BODY_SIZE = 2.0  # head_window_starts searches scans at least this many times the model's size across
BODY_MAX_MM = 2600.0  # body_scales: the largest scan (1-99 % box diagonal) taken for a whole body
# distinct hypotheses beyond FitConfig.init.auto_candidates that the model also tries when
# the best of those scores above WINDOW_SEARCH_SCORE, before the window search (on a face
# far from the mean, an open jaw, the right start can rank below the first few)
EXTRA_CANDIDATES = 2


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


def _icp_batch(src_scan: np.ndarray, tree: TreePoints | DevicePoints, model_pts: np.ndarray,
               model_nrm: np.ndarray, starts: list[tuple[float, np.ndarray, np.ndarray]], iters: int, trim: float,
               fixed_scale: float | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Trimmed point-to-plane similarity ICP from scan points to the model mean, for many
    starting hypotheses at once (one nearest-neighbour query of all of them, on the CPU or
    a GPU (:func:`ssm.geometry.nearest.point_index` of ``model_pts``), and one batched
    7x7 solve per iteration).

    starts : (scale, (3, 3), (3,)) model -> scan. Returns scales (H,), rotations
    (H, 3, 3), translations (H, 3) and scores (H,): the trimmed mean residual in the
    scan's units (in model units it would favour hypotheses that shrink the scan).
    """
    s = np.array([h[0] for h in starts], dtype=np.float64)
    r = np.stack([h[1] for h in starts])
    t = np.stack([h[2] for h in starts])
    n_h, n_p = len(starts), len(src_scan)
    score = np.full(n_h, np.inf)
    for _ in range(iters):
        # scan points in each hypothesis' model frame: R^T (y - t) / s
        q = ((src_scan[None] - t[:, None]) @ r) / s[:, None, None]
        d, j = tree.query(q.reshape(-1, 3))
        d, j = d.reshape(n_h, n_p), j.reshape(n_h, n_p)
        keep = d <= np.quantile(d, trim, axis=1, keepdims=True)
        score = (d * keep).sum(1) / keep.sum(1) * s
        rt = r.transpose(0, 2, 1)
        src = s[:, None, None] * (model_pts[j] @ rt) + t[:, None]
        nrm = model_nrm[j] @ rt
        steps = similarity_steps(src, src_scan[None], nrm, 0.8 * keep, 0.2 * keep, fixed_scale is None)
        ds = np.array([st.scale for st in steps])
        dr = np.stack([st.rotation for st in steps])
        dt = np.stack([st.translation for st in steps])
        ok = np.isfinite(ds) & (ds > 0)
        s_new, r_new = ds * s, dr @ r
        t_new = ds[:, None] * np.einsum("hij,hj->hi", dr, t) + dt
        s, r, t = np.where(ok, s_new, s), np.where(ok[:, None, None], r_new, r), np.where(ok[:, None], t_new, t)
    return s, r, t, score


def auto_similarity(problem: FitProblem, scan: Scan, candidates: int = 1) -> tuple[list[Similarity], StageReport]:
    """Model -> scan similarities without landmarks, best first (see module doc).

    Scans often hold more than the head (a wall behind it, a second object): when the
    sampled points fall into several well-separated clusters, each sizeable cluster is
    searched on its own as well as the whole scan, and hypotheses compete on their
    trimmed residual in mm (at a plausible head size).
    candidates : how many distinct hypotheses to return (placements of the mean more
        than 5 mm RMS apart): the residual against the mean shape cannot always tell a
        face slid along itself from the right place; :func:`select_start` lets the
        model decide between them.
    """
    t0 = time.perf_counter()
    model, config, fixed_scale = problem.model, problem.config.init, problem.units_per_mm
    rng = problem.streams.rng("search")
    pick, target = _search_inputs(model, scan, config, rng)
    m = target[0]
    found, n_hyps = [], 0
    regions = [pick] + [pick[c] for c in _clusters(scan.points[pick])]
    for i, region in enumerate(regions):  # the clusters get a coarser search (no tilts)
        refined, n = _search(scan.points[region], scan.normals[region], target, config, rng, fixed_scale,
                             tilted=i == 0)
        n_hyps += n
        found += [(key / sim.scale, score, sim) for key, score, sim in refined]
    found.sort(key=lambda h: h[0])
    kept, placed = [], []
    for key_mm, score, sim in found:
        if _distinct(sim, m, placed):
            kept.append((key_mm, score, sim))
        if len(kept) == candidates:
            break
    key_mm, score, sim = kept[0]
    rep = StageReport("auto_init", time.perf_counter() - t0, key_mm, key_mm, len(pick),
                      extra={"hypotheses": n_hyps, "regions": len(regions), "scale": sim.scale,
                             "candidates_mm": [round(k[0], 3) for k in kept]})
    return [k[2] for k in kept], rep


def _distinct(sim: Similarity, mean: np.ndarray, placed: list[np.ndarray]) -> bool:
    """Whether ``sim`` places ``mean`` (N, 3) more than 5 mm RMS from every placement in
    ``placed`` (scan frame, mm); if so, its placement is appended to ``placed``."""
    x = sim.apply(mean) / sim.scale
    if all(np.sqrt(((x - y) ** 2).sum(1).mean()) > 5.0 for y in placed):
        placed.append(x)
        return True
    return False


def _rms(a: np.ndarray) -> float:
    """RMS distance of points (P, 3) from their centroid."""
    return float(np.sqrt(((a - a.mean(0)) ** 2).sum(1).mean()))


def _search_inputs(model: ShapeModel, scan: Scan, config: InitConfig, rng: np.random.Generator):
    """(scan sample (P,) indices: up to ``auto_points`` off the border, the search target:
    (mean (N, 3), its normals, a 6000-vertex subset, its normals, its point index on the
    scan's device))."""
    good = np.flatnonzero(~scan.boundary)
    if len(good) < 10:
        good = np.arange(len(scan.points))
    pick = good if len(good) <= config.auto_points else rng.choice(good, config.auto_points, replace=False)
    m = model.mean.astype(np.float64)
    mnorm = instance_normals(model, m)
    sub = np.arange(len(m)) if len(m) <= 6000 else rng.choice(len(m), 6000, replace=False)
    return pick, (m, mnorm, m[sub], mnorm[sub], point_index(m[sub], scan.device))


def window_starts(problem: FitProblem, scan: Scan) -> list[Similarity]:
    """Starts for a head that is only part of a connected scan (a bust: head and shoulders).

    The whole-scan search takes its scale and centre from all the points and scores by a
    trimmed residual over them, so a torso joined at the neck pulls it to a head twice the
    size laid over both. Here the scan sample is cut into :data:`WINDOWS` k-means patches,
    each window holding the half of the points nearest its centre; each window gets the
    search (without the tilted hypotheses: 1.6 s for all six on 2 cores), and its best
    hypothesis is re-cropped: a few rounds of the same ICP on the points within the
    placed model's reach (:data:`CROP_REACH` times its radius), so the torso falls out
    of the window. Returns the distinct starts (more than 5 mm apart); :func:`select_start`
    chooses.
    """
    from scipy.cluster.vq import kmeans2

    model, config, fixed_scale = problem.model, problem.config.init, problem.units_per_mm
    rng = problem.streams.rng("window_search")
    pick, target = _search_inputs(model, scan, config, rng)
    m = target[0]
    p, nrm = scan.points[pick], scan.normals[pick]
    if len(p) < 4 * WINDOWS:
        return []
    centres, _ = kmeans2(p, WINDOWS, seed=rng, minit="++")
    radius = float(np.linalg.norm(m - m.mean(0), axis=1).max())
    starts, placed = [], []
    for c in centres:
        d = np.linalg.norm(p - c, axis=1)
        window = np.flatnonzero(d <= np.median(d))
        refined, _ = _search(p[window], nrm[window], target, config, rng, fixed_scale, tilted=False)
        # a head within the window, not one grown over the scan: at most WINDOW_GROWTH
        # times the window's own size
        s_max = WINDOW_GROWTH * _rms(p[window]) / _rms(m) if fixed_scale is None else np.inf
        sized = [h for h in refined if h[2].scale <= s_max] or refined
        _, _, sim = min(sized, key=lambda h: h[0] / h[2].scale)
        sim = _recrop(p, sim, target, radius, fixed_scale, s_max)
        if _distinct(sim, m, placed):
            starts.append(sim)
    return starts


def _recrop(p: np.ndarray, sim: Similarity, target, radius_mm: float, fixed_scale: float | None,
            max_scale: float = np.inf) -> Similarity:
    """``sim`` refined by three rounds of the hypotheses' ICP on the points of ``p``
    (P, 3) within :data:`CROP_REACH` model radii (``radius_mm``, at the placement's scale,
    at most ``max_scale``) of the placed model: what is not the head falls out."""
    m = target[0]
    for _ in range(3):
        reach = (np.linalg.norm(p - sim.apply(m.mean(0)[None])[0], axis=1)
                 < CROP_REACH * radius_mm * min(sim.scale, max_scale))
        if reach.sum() < 50:
            break
        sc, rot, tr, _ = _icp_batch(p[reach], target[4], target[2], target[3],
                                    [(sim.scale, sim.rotation, sim.translation)], 8, 0.7, fixed_scale)
        sim = Similarity(float(sc[0]), rot[0], tr[0])
    return sim


def body_scales(model: ShapeModel, scan: Scan) -> list[float]:
    """Scales (scan units per mm) of the named units (:data:`ssm.units.MM_PER_UNIT`) in
    which the scan would be a whole body: at least :data:`BODY_SIZE` times the model
    across and at most :data:`BODY_MAX_MM` (usually one unit does: a body in mm is a
    giant in cm and a crumb in m), for :func:`head_window_starts` when the units are not
    given."""
    from ssm.units import MM_PER_UNIT

    good = _body_points(scan)
    if len(good) < 50:
        return []
    size = _spread(scan.points[good])
    least = BODY_SIZE * mean_diagonal(model)
    return [1.0 / mm for mm in MM_PER_UNIT.values() if least <= size * mm <= BODY_MAX_MM]


def near_named_unit(scale: float, tolerance: float = NAMED_UNIT_TOLERANCE) -> bool:
    """Whether ``scale`` (scan units per model mm) is within ``tolerance`` times one of the
    named units (:data:`ssm.units.MM_PER_UNIT`): a head fitted at its own size in mm,
    cm, m, um or inches (heads vary about 10 % about the model's mean)."""
    from ssm.units import MM_PER_UNIT

    return any(1.0 / tolerance < scale * mm < tolerance for mm in MM_PER_UNIT.values())


def _body_points(scan: Scan) -> np.ndarray:
    """(P,) indices of the scan's points off its borders (finite ones)."""
    return np.flatnonzero(~scan.boundary & np.isfinite(scan.points).all(1))


def _spread(points: np.ndarray) -> float:
    """The diagonal of the box holding the middle 98 % of ``points`` (P, 3) on each axis."""
    lo, hi = np.percentile(points, [1, 99], axis=0)
    return float(np.linalg.norm(hi - lo))


def head_window_starts(problem: FitProblem, scan: Scan, scale: float) -> list[Similarity]:
    """Starts for a head that is a small part of a scan in known units (a whole body).

    :func:`window_starts` cuts the scan into six patches and searches each on its share
    of one sample of the whole scan: that finds the head of a bust, which holds half the
    points, not that of a body, which holds a tenth. With the scale known (``scale``:
    scan units per model mm), the
    scan is covered instead by head-sized windows: centres spread over it a model
    radius apart (farthest-point sampling, at most :data:`HEAD_WINDOWS_MAX`), each window
    the scan's points within :data:`CROP_REACH` model radii of its centre, sampled
    afresh (``auto_points``), searched and re-cropped as in :func:`window_starts`. Scans
    less than :data:`BODY_SIZE` times the model across (heads with hair, busts) get none:
    about 10 s saved where the other searches already had their chance.
    """
    model, config = problem.model, problem.config.init
    good = _body_points(scan)
    if len(good) < 50 or _spread(scan.points[good]) < BODY_SIZE * mean_diagonal(model) * scale:
        return []  # a head, or a head and shoulders: the other searches' business
    m = np.asarray(model.mean, np.float64)
    rng = problem.streams.rng("head_windows")
    _, target = _search_inputs(model, scan, config, rng)
    radius_mm = float(np.linalg.norm(m - m.mean(0), axis=1).max())
    radius = radius_mm * scale  # scan units
    sample = good if len(good) <= 20_000 else rng.choice(good, 20_000, replace=False)
    q = scan.points[sample]
    centres = [q[0]]  # farthest-point sampling: every point within a radius of a centre
    d = np.linalg.norm(q - q[0], axis=1)
    while len(centres) < HEAD_WINDOWS_MAX and d.max() > radius:
        centres.append(q[int(np.argmax(d))])
        d = np.minimum(d, np.linalg.norm(q - centres[-1], axis=1))
    starts, placed = [], []
    for c in centres:
        near = good[np.linalg.norm(scan.points[good] - c, axis=1) < CROP_REACH * radius]
        if len(near) < 50:
            continue
        pick = near if len(near) <= config.auto_points else rng.choice(near, config.auto_points, replace=False)
        p, nrm = scan.points[pick], scan.normals[pick]
        refined, _ = _search(p, nrm, target, config, rng, scale, tilted=False)
        _, _, sim = min(refined, key=lambda h: h[0])
        sim = _recrop(p, sim, target, radius_mm, scale)
        if _distinct(sim, m, placed):
            starts.append(sim)
    return starts


def select_start(problem: FitProblem, scan: Scan, starts: list[Similarity],
                 orient: Callable[[Similarity], Scan] | None = None) -> tuple[Similarity, list[float]]:
    """The start among ``starts`` from which a short, stiff model fit explains the scan best.

    Each start gets a few quick rigid and large-shape model-fit iterations
    (:func:`ssm.fitting.model_fit.schedule.selection_schedules`, without landmarks); its
    score is the median residual (mm) over the share of the scan within 2.5 mm of the
    fit, so a fit that matches a small part of the scan well does not win. Both are
    measured with one ruler, the first start's scale: in its own mm a start at 5x the
    size has residuals and a reach 5x as lenient, so a head five times too large laid
    over a whole body would win; starts of one scale score as in their own mm.
    ``orient``: the scan with its normals' side taken from a start (a mesh's winding is
    voted by the placed model: a wrong start's vote would flip it for the right one).
    Returns the refined pose of the winner and all the scores.
    """
    if len(starts) == 1:
        return starts[0], []
    model = problem.model
    rigid, stiff = selection_schedules(problem.config.model_fit)
    best, scores = None, []
    ruler = starts[0].scale  # scan units per mm of the score
    for sim in starts:
        if orient is not None:
            scan = orient(sim)
        start = FitState(scan, sim, np.zeros(model.n_components))
        state = fit_model(problem, start, rigid, landmarks=False, exact_last=False).state
        fitted = fit_model(problem, state, stiff, coeffs=state.coeffs, landmarks=False, exact_last=False)
        state, rep = fitted.state, fitted.report
        x = state.pose.apply(model.instance(state.coeffs))
        explained = scan_explained(scan, x, model.triangles, ruler, samples=SELECTION_EXPLAINED_SAMPLES)
        score = rep.residual_median_mm * state.pose.scale / ruler / max(explained, 0.05)
        scores.append(round(float(score), 4) if np.isfinite(score) else float("inf"))
        if np.isfinite(score) and (best is None or score < best[0]):
            best = (score, state.pose)
    return (starts[0] if best is None else best[1]), scores


def _clusters(p: np.ndarray, min_fraction: float = 0.15, max_clusters: int = 3) -> list[np.ndarray]:
    """Index arrays of the sizeable well-separated clusters of the sample ``p`` (P, 3).

    Empty when one cluster holds (nearly) everything: the usual scan of just a head.
    Points link when closer than 4x the sample's median nearest-neighbour distance.
    """
    if len(p) < 20:
        return []
    tree = cKDTree(p)
    d, _ = tree.query(p, k=2)
    labels = component_labels(len(p), tree.query_pairs(4.0 * float(np.median(d[:, 1])), output_type="ndarray"))
    counts = np.bincount(labels)
    if counts.max() >= 0.9 * len(p):
        return []
    order = np.argsort(counts)[::-1][:max_clusters]
    return [np.flatnonzero(labels == c) for c in order if counts[c] >= min_fraction * len(p)]


def _search(p: np.ndarray, normals: np.ndarray, target, config: InitConfig, rng: np.random.Generator,
            fixed_scale: float | None, tilted: bool = True) -> tuple[list, int]:
    """The :data:`REFINED_HYPOTHESES` best hypotheses for scan points ``p`` (P, 3) with
    their ``normals``.

    tilted : also try each axis hypothesis tilted by 25 degrees about each axis (7x the
        hypotheses; principal axes of a partial scan are only roughly the model's).

    Returns ([(key, score, similarity)], hypotheses tried): score is the trimmed residual
    in scan units, key the same with a penalty for an implausible head size.
    """
    m, mnorm, msub, nsub, tree = target
    es, em = _axes(p), _axes(m)
    # A partial scan's centroid lies on the surface side it was seen from: its mean
    # normal says which side; the matching model centroid is that of the vertices
    # facing the same way (for a full-head scan the mean normal is ~0: all vertices).
    view = normals.sum(0) / len(p)
    partial = np.linalg.norm(view) > 0.25
    s_full = _rms(p) / _rms(m)
    scales = [fixed_scale] if fixed_scale is not None else [s_full, s_full * 1.5]
    coarse = p if len(p) <= 400 else p[rng.choice(len(p), 400, replace=False)]
    tilts = [np.eye(3)]
    if tilted:
        tilts += [axis_angle_rotation(np.deg2rad(25.0) * sgn * np.eye(3)[ax]) for ax in range(3) for sgn in (1, -1)]
    starts = []
    for s in scales:
        for d in _rotations():
            for tilt in tilts:
                r = es @ d @ em.T @ tilt
                centre = m.mean(0)
                if partial:
                    facing = mnorm @ (r.T @ view) > 0.3 * np.linalg.norm(view)
                    if facing.sum() > 10:
                        centre = m[facing].mean(0)
                starts.append((s, r, p.mean(0) - s * r @ centre))
    sc, rot, tr, score = _icp_batch(coarse, tree, msub, nsub, starts, 3, 0.7, fixed_scale)
    hyps = sorted(((float(score[h]), Similarity(float(sc[h]), rot[h], tr[h])) for h in range(len(starts))),
                  key=lambda h: h[0])
    best = [(h.scale, h.rotation, h.translation) for _, h in hyps[:REFINED_HYPOTHESES]]
    sc, rot, tr, score = _icp_batch(p, tree, msub, nsub, best, config.auto_icp_iterations, 0.7, fixed_scale)
    diagonal = float(np.linalg.norm(np.ptp(p, axis=0)))
    refined = []
    for h in range(len(best)):
        plausible = HEAD_DIAGONAL_MM[0] <= diagonal / sc[h] <= HEAD_DIAGONAL_MM[1]
        sim = Similarity(float(sc[h]), rot[h], tr[h])
        refined.append((float(score[h]) * (1.0 if plausible else 10.0), float(score[h]), sim))
    return refined, len(hyps)
