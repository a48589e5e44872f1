"""Occlusion: find where the scan is not skin (hair, a cap, a collar) and fit without it.

Hair lies over the scalp, so a scan of a person with hair is, over a whole region, well
outside the skin surface the model describes. The closest-point fit pulls the skull out
into the hair, and since a PCA model couples the skull with the face, the face follows.

After the model fit, each vertex's signed residual along its normal (scan minus fit,
positive outside) is averaged over two rings of mesh neighbours. Regions where the scan
lies more than :data:`OUTSIDE_MM` (or 5 robust sigmas) outside, grown over connected
vertices still :data:`GROW_MM` outside and by one ring, are occluded when one of them
covers :data:`LARGE_REGION` of the vertices or more: the model is fitted again from its
mean without them, and the test is repeated (up to :data:`ROUNDS` rounds) while the
region grows by :data:`GROWTH_FRACTION` of the vertices or more (a freed skull shrinks
away from the hair, which shows more of the hairline each round). Occluded vertices take
no part in non-rigid ICP: they follow the model fit, and ``FitResult.occluded`` marks
them (``occluded`` in ``fit.ply``). Scattered small spots (the covering a scanner leaves
over the nostrils, bumps where a cloud's normals were estimated) are left to NICP, which
is there for detail that bulges out of the model's span. Skin the fit has not reached
passes this test only where a converged model fit leaves the scan outside by over 2.5 mm
across a region, which it does for non-skin surfaces.
"""

from __future__ import annotations

import time

import numpy as np
import scipy.sparse as sp

from ssm.fitting.model_fit.basis import instance_normals
from ssm.fitting.model_fit.correspondence import find_correspondences, robust_sigma_mm
from ssm.fitting.model_fit.iterate import fit_model
from ssm.fitting.model_fit.schedule import configured_schedule
from ssm.fitting.problem import FitProblem
from ssm.fitting.state import FitState, StageReport, StageResult
from ssm.geometry.mesh_ops import vertex_adjacency

OUTSIDE_MM = 2.5  # a smoothed outward residual above this is not skin
GROW_MM = 1.0  # ... and the regions grow over connected vertices above this
# the share of the vertices that may be occluded: above it, the fit itself is off
MAX_FRACTION = 0.6
# one connected region must hold this share of the vertices for a refit: hair over a scalp
# holds more, the scattered spots of a clean scan (the nostrils' covering, normals
# estimated on a cloud) each less
LARGE_REGION = 0.03
GROWTH_FRACTION = 0.01  # another refit only when the last one showed this much more
ROUNDS = 5  # refits at most: each frees more of the skull from the hair
OCCLUSION_GATE_MM = 25.0  # residuals are measured this far out at least: hair stands off the skin


def signed_residuals(problem: FitProblem, state: FitState, gate_mm: float) -> np.ndarray:
    """(N,) residual of each vertex along its normal, scan minus fit (mm, positive
    outside), NaN where nothing matched within ``gate_mm``."""
    model = problem.model
    x = model.instance(state.coeffs)
    xs = state.pose.apply(x)
    ns = instance_normals(model, x) @ state.pose.rotation.T
    corr = find_correspondences(xs, ns, state.scan, 1.0 / state.pose.scale, gate_mm,
                                problem.config.model_fit.normal_cos, problem.config.model_fit.scan_samples,
                                problem.streams.rng("occlusion"))
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


def occlusion(problem: FitProblem, state: FitState) -> StageResult:
    """Refit the model without the vertices the scan covers with something other than
    skin. The state gets the (N,) ``occluded`` mask (None when nothing is) and, when a
    region was found, the refitted coefficients, pose, identity and shape."""
    t0 = time.perf_counter()
    model = problem.model
    n = model.n_vertices
    adj = (vertex_adjacency(model.triangles, n) + sp.identity(n)).tocsr()  # a vertex and its ring
    gate = max(problem.config.model_fit.max_distance_mm, OCCLUSION_GATE_MM)
    schedule = configured_schedule(problem.config.model_fit)
    mask = None
    history = []
    failed = False
    # A large occluded region (hair) has dragged the whole fit: the model is fitted again
    # from its mean, with the prior annealed, and the test repeated while it shows more.
    for _ in range(ROUNDS):
        occ = occluded_vertices(signed_residuals(problem, state, gate), adj)
        new = occ if mask is None else (mask | occ)
        share = float(new.mean())
        history.append(round(share, 4))
        if share > MAX_FRACTION or (mask is None and largest_region(occ, adj) < LARGE_REGION):
            break
        grew = mask is None or share - float(mask.mean()) >= GROWTH_FRACTION
        previous, mask = mask, new
        if not grew:
            break
        refit = fit_model(problem, state, schedule, candidates=~mask)
        if not refit.report.converged:  # too little left to fit: the fit was wrong to begin with
            mask, failed = previous, True  # the state and mask of the last sound round
            break
        state = refit.state
    x = model.instance(state.coeffs)
    state = state.replace(occluded=mask, identity=x, model_shape=x, shape=x)
    return StageResult(state, StageReport(
        "occlusion", time.perf_counter() - t0, float("nan"), float("nan"), 0,
        extra={"occluded_fraction": 0.0 if mask is None else round(float(mask.mean()), 4),
               "fraction_per_round": history, "refit_failed": failed}))
