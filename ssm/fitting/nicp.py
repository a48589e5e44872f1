"""Stage 5: non-rigid ICP for detail outside the model's span.

Started from the model fit, a per-vertex displacement field ``D`` (N, 3, model frame,
mm) is solved over a schedule of stiffness weights from stiff to soft (the "optimal
step" schedule of Amberg et al. 2007), each level re-matching correspondences with the
same border, distance and normal rejection as the model fit::

    min_D  sum_i w_i ||x_i + d_i - y_i||^2 + alpha tr(D^T L D) + beta ||D||^2

``L`` is the mesh graph Laplacian (membrane stiffness), ``beta`` pulls towards the model
fit where the scan says nothing, and landmarks join at the stiff levels (at every level
inside the landmark warp's region, :mod:`ssm.fitting.landmark_warp`), weighed as in the
model fit: by the correspondences' variance over theirs
(:func:`ssm.fitting.model_fit.landmark_variance`), times
:func:`ssm.fitting.model_fit.landmark_boost`.
The targets ``y_i`` are the feet of the current vertices on the planes through their
scan points across the vertices' own normals (point-to-plane, :func:`plane_targets`;
the model's normals rather than the scan's noisy ones, see
:mod:`ssm.fitting.correspondence`): a free-form fit would otherwise slide along the
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

from ssm.fitting.config import FitConfig
from ssm.fitting.correspondence import adaptive_gate, find_correspondences
from ssm.fitting.landmark_match import MatchedLandmarks
from ssm.fitting.model_fit import (exact_scan_samples, instance_normals, landmark_boost, landmark_variance,
                                   surface_noise_variance)
from ssm.fitting.scan import Scan
from ssm.fitting.stage import StageReport, residual_stats
from ssm.geometry.mesh_ops import uniform_laplacian
from ssm.geometry.similarity import Similarity
from ssm.models.shape_model import ShapeModel


def nicp(model: ShapeModel, scan: Scan, pose: Similarity, x0: np.ndarray, config: FitConfig,
         landmarks: MatchedLandmarks | None = None, landmark_mask: np.ndarray | None = None,
         start_corr=None, landmark_region: np.ndarray | None = None,
         occluded: np.ndarray | None = None) -> tuple[np.ndarray, StageReport]:
    """Refine the model fit ``x0`` (N, 3) model frame; returns the refined (N, 3) and report.

    landmark_region : (N,) bool, vertices where the model fit is known not to hold (the
        landmark warp's region): their landmarks stay in at the soft levels too, since
        closest points there only constrain the normal direction.
    occluded : (N,) bool, vertices covered by something other than skin (hair): they get
        no correspondences and follow the model fit.
    """
    t0 = time.perf_counter()
    if model.triangles is None:
        return x0, StageReport("nicp", 0.0, float("nan"), float("nan"), 0, True, {"skipped": "no triangles"})
    rng = np.random.default_rng(config.seed + 1)
    n = model.n_vertices
    lap = uniform_laplacian(model.triangles, n)
    d = np.zeros((n, 3))
    corr = start_corr
    inv = pose.inverse()
    lm_v = lm_y = None
    if landmarks is not None:
        keep = np.ones(len(landmarks), bool) if landmark_mask is None else landmark_mask
        lm_v, lm_y = landmarks.vertex[keep], inv.apply(landmarks.points[keep])
        lm_var = np.broadcast_to(landmark_variance(None if landmarks.covariances is None
                                                   else landmarks.covariances[keep], pose,
                                                   config.landmark_sigma_mm), lm_v.shape)
    levels = config.nicp_stiffness
    for li, alpha in enumerate(levels):
        for _ in range(config.nicp_iterations):
            x = x0 + d
            xs = pose.apply(x)
            ns = instance_normals(model, x) @ pose.rotation.T
            gate = adaptive_gate(corr, config.max_distance_mm, config.min_distance_mm)
            # the softest level matches every scan point: its targets average the scan's
            # noise instead of a sample's (7-landmark expression 0.884 -> 0.882 mm)
            samples = exact_scan_samples(scan, config) if li == len(levels) - 1 else config.scan_samples
            corr = find_correspondences(xs, ns, scan, 1.0 / pose.scale, gate, config.normal_cos,
                                        samples, rng, None if occluded is None else ~occluded)
            if len(corr) < 10:
                break
            w = np.zeros(n)
            rhs = np.zeros((n, 3))
            w[corr.vertex] = corr.weight
            y = plane_targets(x[corr.vertex], inv.apply(corr.target), corr.normal @ pose.rotation,
                              config.nicp_point_to_plane)
            rhs[corr.vertex] = corr.weight[:, None] * (y - x0[corr.vertex])
            if lm_v is not None:  # all landmarks at the stiff levels, the region's at all
                on = np.full(len(lm_v), li < len(levels) // 2)
                if landmark_region is not None:
                    on |= landmark_region[lm_v]
                # weighed by their uncertainty against the surface's, as in the model fit
                lw = landmark_boost(len(corr)) * surface_noise_variance(corr.distance_mm) / lm_var[on]
                np.add.at(w, lm_v[on], lw)
                np.add.at(rhs, lm_v[on], lw[:, None] * (lm_y[on] - x0[lm_v[on]]))
            wmean = float(corr.weight.mean())
            a = (sp.diags(w + config.nicp_model_weight * wmean) + alpha * wmean * lap).tocsc()
            # symmetric positive definite: a symmetric ordering, no pivoting (less fill)
            d = splu(a, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0,
                     options={"SymmetricMode": True}).solve(rhs)
    x = x0 + d
    mean, med = residual_stats(corr.distance_mm if corr is not None else [])
    rep = StageReport("nicp", time.perf_counter() - t0, mean, med, 0 if corr is None else len(corr),
                      extra={"stiffness": list(levels),
                             "displacement_rms_mm": float(np.sqrt((d ** 2).sum(1).mean()))})
    return x, rep


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
