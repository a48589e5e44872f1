"""Non-rigid ICP: detail outside the model's span.

Started from the model fit, a per-vertex displacement field ``D`` (N, 3, model frame,
mm) is solved over a schedule of stiffness weights from stiff to soft (the "optimal
step" schedule of Amberg et al. 2007), each level re-matching correspondences with the
same border, distance and normal rejection as the model fit::

    min_D  sum_i w_i ||x_i + d_i - y_i||^2 + alpha tr(D^T L D) + beta ||D||^2

``L`` is the mesh graph Laplacian (membrane stiffness), ``beta`` pulls towards the model
fit where the scan says nothing, and landmarks join at the stiff levels (at every level
inside the landmark warp's region, :mod:`ssm.fitting.refine.landmark_warp`), weighed as in
the model fit: by the correspondences' variance over theirs
(:func:`ssm.fitting.model_fit.solve.landmark_variance`), times
:func:`ssm.fitting.model_fit.solve.landmark_boost`.
The targets ``y_i`` are the feet of the current vertices on the planes through their
scan points across the vertices' own normals (point-to-plane, :func:`plane_targets`;
the model's normals rather than the scan's noisy ones, see
:mod:`ssm.fitting.model_fit.correspondence`): a free-form fit would otherwise slide along the
surface, which the surface distance does not see but the correspondence does.
The N x N system is sparse, symmetric positive definite and shared by x, y and z: one
sparse LU factorisation per iteration (SuperLU), no dense solve. This displacement form
is the affine-per-vertex NICP with the affine part dropped: rotations of parts are left
to the model fit, which keeps the system N x N instead of 4N x 4N.
"""

from __future__ import annotations

import time

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import splu

from ssm.fitting.model_fit.basis import instance_normals
from ssm.fitting.model_fit.correspondence import adaptive_gate, find_correspondences
from ssm.fitting.model_fit.iterate import MIN_CORRESPONDENCES, exact_scan_samples
from ssm.fitting.model_fit.solve import landmark_boost, landmark_variance, surface_noise_variance
from ssm.fitting.problem import FitProblem
from ssm.fitting.state import FitState, StageReport, StageResult, residual_stats
from ssm.geometry.mesh_ops import uniform_laplacian


def nicp(problem: FitProblem, state: FitState) -> StageResult:
    """Refine ``state.model_shape`` (N, 3, model frame) at ``state.pose``; the state gets
    the refined ``shape``.

    The landmarks in ``state.region`` (where the model fit is known not to hold) stay in
    at the soft levels too, since closest points there only constrain the normal
    direction; ``state.occluded`` vertices get no correspondences and follow the model
    fit. The first gate follows the residuals of ``state.correspondences``.
    """
    t0 = time.perf_counter()
    model, scan, pose, x0 = problem.model, state.scan, state.pose, state.model_shape
    if model.triangles is None:
        return StageResult(state, StageReport("nicp", 0.0, float("nan"), float("nan"), 0, True,
                                              {"skipped": "no triangles"}))
    cfg, fit_cfg = problem.config.refine, problem.config.model_fit
    rng = problem.streams.rng("nicp")
    n = model.n_vertices
    lap = uniform_laplacian(model.triangles, n)
    d = np.zeros((n, 3))
    corr = state.correspondences
    inv = pose.inverse()
    kept = problem.kept_landmarks(state.landmark_mask)
    if kept is not None:
        lm_v, lm_y = kept[0], inv.apply(kept[1])
        lm_var = np.broadcast_to(landmark_variance(kept[2], pose, problem.config.init.landmark_sigma_mm), lm_v.shape)
    levels = cfg.nicp_stiffness
    for li, alpha in enumerate(levels):
        for _ in range(cfg.nicp_iterations):
            x = x0 + d
            xs = pose.apply(x)
            ns = instance_normals(model, x) @ pose.rotation.T
            gate = adaptive_gate(corr, fit_cfg.max_distance_mm, fit_cfg.min_distance_mm)
            # the softest level matches every scan point: its targets average the scan's
            # noise instead of a sample's
            samples = fit_cfg.scan_samples
            if li == len(levels) - 1:
                samples = exact_scan_samples(scan, samples)
            corr = find_correspondences(xs, ns, scan, 1.0 / pose.scale, gate, fit_cfg.normal_cos,
                                        samples, rng, None if state.occluded is None else ~state.occluded)
            if len(corr) < MIN_CORRESPONDENCES:
                break
            w = np.zeros(n)
            rhs = np.zeros((n, 3))
            w[corr.vertex] = corr.weight
            y = plane_targets(x[corr.vertex], inv.apply(corr.target), corr.normal @ pose.rotation,
                              cfg.nicp_point_to_plane)
            rhs[corr.vertex] = corr.weight[:, None] * (y - x0[corr.vertex])
            if kept is not None:  # all landmarks at the stiff levels, the region's at all
                on = np.full(len(lm_v), li < len(levels) // 2)
                if state.region is not None:
                    on |= state.region[lm_v]
                # weighed by their uncertainty against the surface's, as in the model fit
                lw = landmark_boost(len(corr)) * surface_noise_variance(corr.distance_mm) / lm_var[on]
                np.add.at(w, lm_v[on], lw)
                np.add.at(rhs, lm_v[on], lw[:, None] * (lm_y[on] - x0[lm_v[on]]))
            wmean = float(corr.weight.mean())
            a = (sp.diags(w + cfg.nicp_model_weight * wmean) + alpha * wmean * lap).tocsc()
            # symmetric positive definite: a symmetric ordering, no pivoting (less fill)
            d = splu(a, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0,
                     options={"SymmetricMode": True}).solve(rhs)
    done = state.replace(shape=x0 + d)
    mean, med = residual_stats(corr.distance_mm if corr is not None else [])
    return StageResult(done, StageReport("nicp", time.perf_counter() - t0, mean, med,
                                         0 if corr is None else len(corr),
                                         extra={"stiffness": list(levels),
                                                "displacement_rms_mm": float(np.sqrt((d ** 2).sum(1).mean()))}))


def plane_targets(x: np.ndarray, y: np.ndarray, n: np.ndarray, point_to_plane: float) -> np.ndarray:
    """(C, 3) targets that pull vertices ``x`` towards the planes through ``y`` across ``n``.

    x, y : (C, 3) vertices and their scan targets; n : (C, 3) unit normals (zero
    where unknown: the target stays ``y``). With ``point_to_plane`` = 1 the target is
    the foot of ``x`` on the plane through ``y``, so the data term moves a vertex only
    along the normal and the tangential position is left to the stiffness and the model
    fit: closest points slide along the surface, which is what spoils correspondence.
    Between 0 and 1 the tangential pull is kept in proportion.
    """
    if not point_to_plane:
        return y
    r = y - x
    rn = (r * n).sum(1, keepdims=True) * n
    known = (np.abs(n).sum(1) > 0)[:, None]
    return np.where(known, x + rn + (1.0 - point_to_plane) * (r - rn), y)
