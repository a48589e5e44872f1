"""The model fit's solves: MAP coefficients (with a small similarity step) under the
model's Gaussian prior, and the Gauss-Newton pose update; the weights of landmarks
against surface correspondences."""

from __future__ import annotations

import numpy as np

from ssm.fitting.model_fit.basis import scaled_basis
from ssm.fitting.model_fit.correspondence import Correspondences, robust_sigma_mm
from ssm.geometry.similarity import Similarity, similarity_jacobian, similarity_step
from ssm.models.shape_model import ShapeModel


def _normal_equations(xp, phi, n, sq_pl, rows, sw3, jac, y_pp, y_pl):
    """``(S^T S, S^T y)`` of the 3D rows and of the normal rows of :func:`solve_coefficients`.

    phi : (C, 3, k) basis rows; n : (C, 3) normals; sq_pl : (C,) root point-to-plane
    weights; rows : (R,) rows that also enter in 3D, with root weights sw3 (3R,); jac :
    (C, 3, J) similarity Jacobian or None (its columns follow the basis'); y_pp (3R,),
    y_pl (C,): the residuals, weighted. float32 numpy arrays (``xp`` = numpy) or torch
    tensors on one device (``xp`` = torch): the same code on the CPU and on a GPU.
    """
    k = phi.shape[2]
    s_pl = xp.einsum("cdk,cd->ck", phi, n) * sq_pl[:, None]  # normal rows
    s_pp = phi[rows].reshape(-1, k) * sw3[:, None]  # 3D rows
    if jac is not None:  # the pose step's columns beside the basis'
        s_pl = xp.concat([s_pl, xp.einsum("cdj,cd->cj", jac, n) * sq_pl[:, None]], 1)
        s_pp = xp.concat([s_pp, jac[rows].reshape(-1, jac.shape[2]) * sw3[:, None]], 1)
    return (s_pp.T @ s_pp, y_pp @ s_pp), (s_pl.T @ s_pl, y_pl @ s_pl)


def solve_coefficients(model: ShapeModel, k: int, corr_vertex: np.ndarray, target_m: np.ndarray,
                       normal_m: np.ndarray, weight: np.ndarray, noise_var: float, point_to_plane: float,
                       lm: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
                       phi_all: np.ndarray | None = None, pp_samples: int | None = 1000,
                       pose_rows: tuple[np.ndarray, bool] | None = None, phi_dev=None) -> np.ndarray:
    """MAP standardised coefficients (k,) for targets in the model frame.

    Minimises ``sum_i w_i r_i^T M_i r_i + noise_var ||c||^2 + landmark terms`` with
    ``r_i = mean_i + Phi_i c - target_i``, ``M_i = a n_i n_i^T + (1 - a) I`` (a =
    point_to_plane where the normal is known) and ``Phi = U diag(sd)``.
    lm : (vertex (L,), target (L, 3) model frame, weight (L,)) landmark terms.
    phi_all : :func:`scaled_basis` of the model, to skip recomputing it.
    pp_samples : about how many surface rows enter the point-to-point part (None: all).
    pose_rows : (x - centre (N, 3), with_scale): also solve, in the same linear system,
        for a small similarity of the current instance ``x`` about ``centre`` (no prior);
        its step (w (3,), t (3,)[, s]) is appended to the returned coefficients.
    phi_dev : :func:`device_basis` of the model: the products run on its device.
    Returns (k,) coefficients, or (k + 6 or 7,) with ``pose_rows``.
    """
    if phi_all is None:
        phi_all = scaled_basis(model)
    verts, tgts, wts, nrm = corr_vertex, target_m, weight, normal_m
    if lm is not None:
        verts = np.concatenate([verts, lm[0]])
        tgts = np.concatenate([tgts, lm[1]])
        wts = np.concatenate([wts, lm[2]])
        nrm = np.concatenate([nrm, np.zeros((len(lm[0]), 3))])  # landmarks: full 3D residual
    jac = None
    if pose_rows is not None:  # joint Gauss-Newton step of a small model-frame similarity
        jac = similarity_jacobian(pose_rows[0][verts], pose_rows[1]).astype(np.float32)  # (C, 3, 6|7)
    r = tgts - model.mean[verts]  # (C, 3)
    has_n = (np.linalg.norm(nrm, axis=1) > 0).astype(np.float64)
    a = point_to_plane * has_n  # (C,)
    w_pp = wts * (1.0 - a)
    w_pl = wts * a
    # Normal equations as Gram matrices of weighted rows (S^T S: a symmetric product,
    # half the work of a general one). The point-to-point part costs 3x the
    # point-to-plane one per row and carries less weight: it uses every ``stride``-th
    # surface row (weights scaled to match), and all landmark rows.
    n_surf = len(corr_vertex)
    stride = max(1, n_surf // pp_samples) if pp_samples else 1
    rows = np.concatenate([np.arange(0, n_surf, stride), np.arange(n_surf, len(verts))])
    rows = rows[w_pp[rows] > 0]  # pure point-to-plane rows (the default) add nothing here
    sw = np.sqrt(w_pp[rows] * np.where(rows < n_surf, float(stride), 1.0)).astype(np.float32)  # (R,)
    sw3 = np.repeat(sw, 3)
    y_pp = (r[rows].reshape(-1) * sw3).astype(np.float32)
    n32 = nrm.astype(np.float32)
    sq_pl = np.sqrt(w_pl).astype(np.float32)
    y_pl = ((nrm * r).sum(1) * sq_pl).astype(np.float32)
    if phi_dev is None:
        parts = _normal_equations(np, phi_all[verts, :, :k], n32, sq_pl, rows, sw3, jac, y_pp, y_pl)
    else:  # the (C, 3, k) gather and the products on the device: only (k + J)^2 comes back
        import torch

        def dev(a):
            return torch.as_tensor(a, device=phi_dev.device)

        parts = _normal_equations(torch, phi_dev[dev(verts), :, :k], dev(n32), dev(sq_pl), dev(rows), dev(sw3),
                                  None if jac is None else dev(jac), dev(y_pp), dev(y_pl))
        parts = [(a.cpu().numpy(), y.cpu().numpy()) for a, y in parts]
    A = sum(a.astype(np.float64) for a, _ in parts)
    b = sum(y.astype(np.float64) for _, y in parts)
    k_c, k = k, A.shape[0]
    A[np.arange(k_c), np.arange(k_c)] += noise_var
    if k > k_c:  # no prior on the pose; a whisker of damping keeps the system regular
        A[np.arange(k_c, k), np.arange(k_c, k)] += 1e-9 * float(np.trace(A)) / k
    return np.linalg.solve(A, b)


def landmark_boost(n_corr: float) -> float:
    """Landmark terms compete with thousands of (correlated) surface terms: count them more.

    One landmark weighs as much as ``n_corr / 1000`` surface terms (at least one): more
    lets a few noisy landmarks bend the shape, less lets the surface slide past them.
    """
    return max(1.0, n_corr / 1000.0)


def surface_noise_variance(distance_mm: np.ndarray) -> float:
    """The variance (mm^2) of one surface correspondence: the robust spread of the
    correspondence distances (C,) mm (1.4826 x their median), at least 0.3 mm."""
    return max(robust_sigma_mm(distance_mm) ** 2, 0.3 ** 2)


def landmark_variance(cov: np.ndarray | None, pose: Similarity, sigma_mm: float) -> np.ndarray:
    """(L,) isotropic landmark variance in mm^2 from the file's (L, 3, 3) covariances
    (scan units^2) when given, else ``sigma_mm^2`` (as (1,), broadcast)."""
    if cov is None:
        return np.full(1, sigma_mm ** 2)
    tr = np.trace(cov, axis1=1, axis2=2) / 3.0 / pose.scale ** 2
    return np.where(np.isfinite(tr) & (tr > 0), tr, sigma_mm ** 2)


def update_pose(x: np.ndarray, corr: Correspondences, lm_sel, pose: Similarity,
                 fixed_scale: float | None, point_to_plane: float = 0.7, steps: int = 3) -> Similarity:
    """Gauss-Newton point-to-plane (+ point-to-point) similarity update of ``pose``.

    x : (N, 3) shape, model frame, mm; corr : correspondences (targets and normals in the
    scan frame); lm_sel : (vertex indices, (L, 3) scan-frame points, ...) or None, landmark
    terms weighed by ``landmark_boost``; point_to_plane : share of each correspondence's
    weight on its normal residual; steps : Gauss-Newton steps. Returns the new pose.
    """
    src = pose.apply(x[corr.vertex])
    dst = corr.target
    nrm = corr.normal
    has_n = np.linalg.norm(nrm, axis=1) > 0
    w_pl = corr.weight * point_to_plane * has_n
    w_pp = corr.weight - w_pl
    if lm_sel is not None and len(lm_sel[0]):
        boost = landmark_boost(len(corr))
        src = np.concatenate([src, pose.apply(x[lm_sel[0]])])
        dst = np.concatenate([dst, lm_sel[1]])
        nrm = np.concatenate([nrm, np.zeros((len(lm_sel[0]), 3))])
        w_pl = np.concatenate([w_pl, np.zeros(len(lm_sel[0]))])
        w_pp = np.concatenate([w_pp, np.full(len(lm_sel[0]), boost)])
    for _ in range(steps):
        step = similarity_step(src, dst, nrm, w_pl, w_pp, scale=fixed_scale is None)
        pose = step.compose(pose)
        src = step.apply(src)
    return pose
