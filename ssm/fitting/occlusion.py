"""Stage 4a: find where the scan is not skin (hair, a cap, a collar) and fit without it.

Hair lies over the scalp, so a scan of a person with hair is, over a whole region, well
outside the skin surface the model describes. The closest-point fit pulls the skull out
into the hair, and since a PCA model couples the skull with the face, the face follows:
on ICT heads with 18 mm of hair over the scalp and fringe, the narrow-face error went
from 0.5 to 1.0 mm with 68 landmarks and to 1.4-5 mm without landmarks.

After the model fit, each vertex's signed residual along its normal (scan minus fit,
positive outside) is averaged over two rings of mesh neighbours. Regions where the scan
lies more than :data:`OUTSIDE_MM` (or 5 robust sigmas) outside, grown over connected
vertices still :data:`GROW_MM` outside and by one ring, are occluded when one of them
covers :data:`LARGE_REGION` of the vertices or more: the model is fitted again from its mean
without them, and the test is repeated (up to five rounds) while the region grows by 1 %
of the vertices or more (a freed skull shrinks away from the hair, which shows more of
the hairline each round). Occluded vertices take
no part in non-rigid ICP: they follow the model fit, and ``FitResult.occluded`` marks
them (``occluded`` in ``fit.ply``). Scattered small spots (on a clean scan, 2-6 % of the
vertices in all: the covering a scanner leaves over the nostrils, bumps where a cloud's
normals were estimated) are left to NICP, which is there for detail that bulges out of
the model's span.

With the stage, the hair cases above fit to 0.61 mm (68 landmarks), 0.78 mm (7) and
0.86 mm (none), mean of 6 frontal and three-view cases (three rounds instead of five:
0.63, 0.86, 1.01 mm; later rounds warm-started instead of refitted from the mean: 0.60,
0.84, 0.98 mm); clean scans fit as before.
Skin the fit has not reached would pass this test only where a converged model fit
leaves the scan outside by over 2.5 mm across a region, which it does for non-skin
surfaces.
"""

from __future__ import annotations

import time

import numpy as np
import scipy.sparse as sp

from ssm.fitting.config import FitConfig
from ssm.fitting.correspondence import find_correspondences, robust_sigma_mm
from ssm.fitting.landmark_match import MatchedLandmarks
from ssm.fitting.model_fit import ModelFitState, fit_model, instance_normals
from ssm.fitting.scan import Scan
from ssm.fitting.stage import StageReport
from ssm.geometry.mesh_ops import vertex_adjacency
from ssm.models.shape_model import ShapeModel

OUTSIDE_MM = 2.5  # a smoothed outward residual above this is not skin
GROW_MM = 1.0  # ... and the regions grow over connected vertices above this
# the share of the vertices that may be occluded: above it, the fit itself is off
MAX_FRACTION = 0.6
# one connected region must hold this share of the vertices (hair over the scalp: 10-27 %
# on the ICT cases, 4-7 % on james); scattered spots (the nostrils' covering, normals
# estimated on a cloud: 2-6 % in all, none over 1.6 %) leave the fit as it is
LARGE_REGION = 0.03
GROWTH_FRACTION = 0.01  # another refit only when the last one showed this much more


def signed_residuals(model: ShapeModel, scan: Scan, state: ModelFitState, cfg: FitConfig,
                     gate_mm: float) -> np.ndarray:
    """(N,) residual of each vertex along its normal, scan minus fit (mm, positive
    outside), NaN where nothing matched within ``gate_mm``."""
    x = model.instance(state.coeffs)
    xs = state.pose.apply(x)
    ns = instance_normals(model, x) @ state.pose.rotation.T
    corr = find_correspondences(xs, ns, scan, 1.0 / state.pose.scale, gate_mm, cfg.normal_cos,
                                cfg.scan_samples, np.random.default_rng(cfg.seed + 3))
    out = np.full(model.n_vertices, np.nan)
    if len(corr):
        out[corr.vertex] = ((corr.target - xs[corr.vertex]) * ns[corr.vertex]).sum(1) / state.pose.scale
    return out


def occluded_vertices(residual: np.ndarray, adjacency: sp.csr_matrix, rings: int = 2) -> np.ndarray:
    """(N,) bool: where the neighbourhood mean of ``residual`` (N,) mm is outside.

    Hysteresis, as in edge detection: regions whose mean (over ``rings`` rings of mesh
    neighbours, NaN ignored) is well outside (:data:`OUTSIDE_MM` or 5 robust sigmas of
    the residuals) grow over connected vertices that are still clearly outside
    (:data:`GROW_MM` or 2 sigmas), which takes in the thin hair at a hairline; the
    result grows by one more ring.
    """
    have = np.isfinite(residual)
    if have.sum() < 10:
        return np.zeros(len(residual), bool)
    val = np.where(have, residual, 0.0)
    cnt = have.astype(np.float64)
    for _ in range(rings):
        val, cnt = adjacency @ val, adjacency @ cnt
    mean = np.divide(val, cnt, out=np.zeros_like(val), where=cnt > 0)
    sigma = robust_sigma_mm(np.abs(residual[have]))
    out = mean > max(OUTSIDE_MM, 5.0 * sigma)
    weak = mean > max(GROW_MM, 2.0 * sigma)
    for _ in range(200):  # grow the strong regions through the weak vertices
        grown = out | (weak & ((adjacency @ out.astype(np.float64)) > 0))
        if grown.sum() == out.sum():
            break
        out = grown
    return (adjacency @ out.astype(np.float64)) > 0


def largest_region(mask: np.ndarray, adjacency: sp.csr_matrix) -> float:
    """The share of the vertices that the largest connected region of ``mask`` holds."""
    from scipy.sparse.csgraph import connected_components

    idx = np.flatnonzero(mask)
    if not len(idx):
        return 0.0
    _, label = connected_components(adjacency[idx][:, idx], directed=False)
    return float(np.bincount(label).max() / len(mask))


def occlusion_stage(model: ShapeModel, scan: Scan, state: ModelFitState, cfg: FitConfig,
                    lms: MatchedLandmarks | None, lm_mask: np.ndarray | None, fixed_scale: float | None,
                    rounds: int = 5) -> tuple[ModelFitState, np.ndarray | None, StageReport]:
    """Stage 4a of ``ssm.fit``: refit the model without the vertices the scan covers with
    something other than skin. Returns the (possibly refitted) state, the (N,) occluded
    mask (None when nothing is), and the stage report."""
    t0 = time.perf_counter()
    n = model.n_vertices
    adj = (vertex_adjacency(model.triangles, n) + sp.identity(n)).tocsr()  # a vertex and its ring
    gate = max(cfg.max_distance_mm, 25.0)
    mask = None
    history = []
    failed = False
    # A large occluded region (hair) has dragged the whole fit: the model is fitted again
    # from its mean, with the prior annealed, and the test repeated while it shows more.
    # Scattered spots are left alone: on clean scans a refit without them changed the
    # error by 0.01-0.03 mm either way (0.14 mm worse on one cloud), for 0.4-3 s.
    keep = None if lms is None else (np.ones(len(lms), bool) if lm_mask is None else lm_mask)
    for _ in range(rounds):
        occ = occluded_vertices(signed_residuals(model, scan, state, cfg, gate), adj)
        new = occ if mask is None else (mask | occ)
        share = float(new.mean())
        history.append(round(share, 4))
        if share > MAX_FRACTION or (mask is None and largest_region(occ, adj) < LARGE_REGION):
            break
        grew = mask is None or share - float(mask.mean()) >= GROWTH_FRACTION
        previous, mask = mask, new
        if not grew:
            break
        refit, refit_rep = fit_model(model, scan, state.pose, cfg, lms, keep, fixed_scale, candidates=~mask)
        if not refit_rep.converged:  # too little left to fit: the fit was wrong to begin with
            mask, failed = previous, True  # the state and mask of the last sound round
            break
        state = refit
    rep = StageReport("occlusion", time.perf_counter() - t0, float("nan"), float("nan"), 0,
                      extra={"occluded_fraction": 0.0 if mask is None else round(float(mask.mean()), 4),
                             "fraction_per_round": history, "refit_failed": failed})
    return state, mask, rep
