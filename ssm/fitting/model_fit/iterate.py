"""The model fit: alternate correspondences and the MAP coefficient / pose solve.

Each iteration finds correspondences (:mod:`.correspondence`), then solves the MAP
coefficients under the model's Gaussian prior for a point-to-plane / point-to-point
mixture on a fresh random subset of vertices and correspondences, with landmarks as
robust extra terms weighed by their uncertainty, jointly with a small similarity step
(:mod:`.solve`). The levels of a :class:`~.schedule.Schedule` relax the prior from stiff
to soft with all components in play, which avoids the sliding local minima of a
few-components-first schedule.
"""

from __future__ import annotations

import time

import numpy as np

from ssm.fitting.model_fit.basis import basis_instance, device_basis, instance_normals, scaled_basis
from ssm.fitting.model_fit.correspondence import adaptive_gate, find_correspondences
from ssm.fitting.model_fit.schedule import Schedule
from ssm.fitting.model_fit.solve import (landmark_boost, landmark_variance, solve_coefficients,
                                         surface_noise_variance, update_pose)
from ssm.fitting.prepare.scan import Scan
from ssm.fitting.problem import FitProblem
from ssm.fitting.state import FitState, StageResult, correspondence_report
from ssm.geometry.similarity import step_similarity
from ssm.models.shape_model import ShapeModel

# a model fit whose pose changes scale by more than this factor has collapsed (a few
# correspondences on one side of the model, which shrinks onto them): it stops there
MAX_SCALE_CHANGE = 3.0
# an exact iteration (fit_model's last; NICP's softest level) matches at most this many scan
# points: every point of a dense head scan, a random subset of one subdivided to millions
EXACT_SCAN_POINTS = 400_000
MIN_CORRESPONDENCES = 10  # fewer cannot hold a pose and a shape: the fit stops


def fit_model(problem: FitProblem, start: FitState, schedule: Schedule, *, model: ShapeModel | None = None,
              coeffs: np.ndarray | None = None, candidates: np.ndarray | None = None, landmarks: bool = True,
              landmark_variance_scale: float = 1.0, exact_last: bool = True) -> StageResult:
    """Fit ``model`` (the problem's unless given: an augmented one) from ``start``'s pose,
    on ``start``'s scan, coarse to fine along ``schedule``.

    coeffs : (K,) start coefficients of ``model``, or None for its mean.
    candidates : (N,) bool, the vertices that may be matched (all for None).
    landmarks : use the problem's landmarks that ``start.landmark_mask`` keeps.
    landmark_variance_scale : the landmarks' variances (``landmark_sigma_mm^2`` or the
        file's) taken this many times larger, their weight and robust width with them: a
        fit with many local components follows landmark noise a few global ones average out.
    exact_last : the last iteration matches every vertex and scan point and solves with
        every correspondence, without over-relaxation: the result is the MAP fit for its
        correspondences, not a random subset's. Off, it is like the others (quick probes).

    Returns the state with the new pose, coefficients and correspondences (its shape and
    identity untouched) and a ``model_fit`` report (``converged`` False when too few
    correspondences were left or the pose collapsed; the last sound iterate is kept).
    """
    t0 = time.perf_counter()
    model = problem.model if model is None else model
    cfg = problem.config.model_fit
    scan = start.scan
    rng = problem.streams.rng("model_fit")
    kmax = model.n_components
    c = np.zeros(kmax) if coeffs is None else np.asarray(coeffs, dtype=np.float64).copy()
    phi_all = scaled_basis(model) if any(k > 0 for k in schedule.components) else None
    phi_dev = None if phi_all is None else device_basis(model, scan.device)  # products on the scan's device
    corr = None
    pose = start.pose
    levels = [min(k, kmax) for k in schedule.components]
    history = []
    lm_sel = problem.kept_landmarks(start.landmark_mask) if landmarks else None
    lm_vertices = problem.landmarks.vertex if landmarks and problem.landmarks is not None else None
    # by the float32 basis: an augmented model has no float64 copy
    x = basis_instance(model, phi_all, c, kmax, phi_dev)
    diverged = False
    scale0 = pose.scale
    for level, (k, prior_scale) in enumerate(zip(levels, schedule.prior)):
        if diverged:
            break
        if np.any(c[k:]):  # a level with fewer components than the last one
            c[k:] = 0.0
            x = basis_instance(model, phi_all, c, kmax, phi_dev)
        for it in range(schedule.iterations_per_level):
            exact = exact_last and level == len(levels) - 1 and it == schedule.iterations_per_level - 1
            last = (pose, c.copy(), x, corr)
            xs = pose.apply(x)
            ns = instance_normals(model, x) @ pose.rotation.T
            mm_per_unit = 1.0 / pose.scale
            gate = adaptive_gate(corr, cfg.max_distance_mm, cfg.min_distance_mm)
            allowed = candidates
            scan_samples = exact_scan_samples(scan, schedule.scan_samples) if exact else schedule.scan_samples
            subsampled = bool(schedule.vertex_samples and schedule.vertex_samples < model.n_vertices and not exact)
            if subsampled:
                # a fresh random subset of vertices each iteration: the solve uses a few
                # thousand correspondences anyway, so matching them all is wasted work
                sub = np.zeros(model.n_vertices, bool)
                sub[rng.choice(model.n_vertices, schedule.vertex_samples, replace=False)] = True
                if lm_vertices is not None:
                    sub[lm_vertices] = True
                allowed = sub if candidates is None else (sub & candidates)
            corr = find_correspondences(xs, ns, scan, mm_per_unit, gate, cfg.normal_cos, scan_samples,
                                        rng, allowed)
            if len(corr) < MIN_CORRESPONDENCES:
                break
            inv = pose.inverse()
            tm = inv.apply(corr.target)
            nm = corr.normal @ pose.rotation
            noise_var = surface_noise_variance(corr.distance_mm) * prior_scale
            lm_terms = None
            if lm_sel is not None and len(lm_sel[0]):
                var_lm = (landmark_variance(lm_sel[2], pose, problem.config.init.landmark_sigma_mm)
                          * landmark_variance_scale)
                lm_m = inv.apply(lm_sel[1])
                # robust: a landmark far from where the current fit puts it (a wrong or
                # differently defined point) loses its pull (Geman-McClure at 2 sigma)
                r_lm = np.linalg.norm(x[lm_sel[0]] - lm_m, axis=1)
                robust = 1.0 / (1.0 + (r_lm ** 2 / (4.0 * var_lm))) ** 2
                n_eff = len(corr) * (model.n_vertices / float(schedule.vertex_samples) if subsampled else 1.0)
                lm_w = noise_var / var_lm * landmark_boost(n_eff) * robust
                lm_terms = (lm_sel[0], lm_m, lm_w)
            if k > 0:
                sel = slice(None)
                if len(corr) > schedule.solve_samples and not exact:  # a random subset each iteration
                    sel = np.sort(rng.choice(len(corr), schedule.solve_samples, replace=False))
                scale_w = len(corr) / len(corr.vertex[sel])  # keep the data / prior balance
                if subsampled:  # subsampled vertices stand for all of them
                    scale_w *= model.n_vertices / float(schedule.vertex_samples)
                # shape and pose in one Gauss-Newton solve: alternating them crawls along
                # the valley where a larger scale trades against a smaller face
                centre = x.mean(0)
                sol = solve_coefficients(model, k, corr.vertex[sel], tm[sel], nm[sel], corr.weight[sel] * scale_w,
                                         noise_var, cfg.point_to_plane, lm_terms, phi_all,
                                         pose_rows=(x - centre, problem.fixed_scale is None), phi_dev=phi_dev)
                c_new = sol[:k]
                pose = pose.compose(step_similarity(sol[k:], centre))
                # over-relaxed step: closest-point iterations creep along the surface at a
                # linear rate; stepping past the solve roughly halves the iterations needed
                c[:k] += (1.0 if exact else cfg.overrelaxation) * (c_new - c[:k])
            c[k:] = 0.0
            x = basis_instance(model, phi_all, c, k, phi_dev)
            # after a joint shape-pose solve the pose needs only a touch (2 steps, not 3)
            pose = update_pose(x, corr, lm_sel, pose, problem.fixed_scale, cfg.point_to_plane, steps=2 if k else 3)
            history.append(float(np.median(corr.distance_mm)))
            if not (np.isfinite(pose.scale) and scale0 / MAX_SCALE_CHANGE < pose.scale < scale0 * MAX_SCALE_CHANGE
                    and np.isfinite(c).all() and np.isfinite(pose.translation).all()):
                # a degenerate solve (too few correspondences left, all on one side: the
                # model shrinks onto them): keep the last sound iterate, report no convergence
                pose, c, x, corr = last
                diverged = True
                break
    state = start.replace(pose=pose, coeffs=c, correspondences=corr)
    converged = corr is not None and len(corr) >= MIN_CORRESPONDENCES and not diverged
    return StageResult(state, correspondence_report(
        "model_fit", time.perf_counter() - t0, state, converged,
        {"components": levels, "median_history_mm": [round(h, 4) for h in history],
         "mahalanobis": float(np.linalg.norm(c))}))


def exact_scan_samples(scan: Scan, samples: int) -> int:
    """Scan points an exact iteration matches: all of them, up to :data:`EXACT_SCAN_POINTS`
    (a random subset of that size of a denser scan), at least ``samples``."""
    return max(min(len(scan.points), EXACT_SCAN_POINTS), samples)
