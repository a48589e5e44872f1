"""``ssm.fit``: the fitting stages strung together."""

from __future__ import annotations

import dataclasses
import logging
import os
import time

import numpy as np

from ssm.device import device_name
from ssm.errors import InputFileError
from ssm.fitting.color_transfer import COLOR_DISTANCE_MM, vertex_colors
from ssm.fitting.config import FitConfig
from ssm.fitting.expression_field import expression_field_stage
from ssm.fitting.expression_model import check_expression_model, expression_augmented, expression_model_stage
from ssm.fitting.init_auto import (EXTRA_CANDIDATES, WINDOW_SEARCH_SCORE, auto_similarity, body_scales,
                                   head_window_starts, near_named_unit, select_start, window_starts)
from ssm.fitting.init_landmarks import landmark_similarity
from ssm.fitting.landmark_match import MatchedLandmarks, check_landmarks_on_scan, match_landmarks
from ssm.fitting.landmark_warp import WarpOutcome, warp_stage
from ssm.fitting.model_fit import fit_model, instance_normals, update_pose
from ssm.fitting.nicp import nicp
from ssm.fitting.occlusion import occlusion_stage
from ssm.fitting.result import FitResult
from ssm.fitting.scan import Scan, load_scan, orient_normals, scan_explained, scan_from_arrays
from ssm.fitting.stage import StageReport, residual_stats
from ssm.fitting.correspondence import find_correspondences, robust_sigma_mm
from ssm.fitting.uncertainty import fit_stddev
from ssm.geometry.similarity import Similarity
from ssm.geometry.torch_ops import smooth_uncertain
from ssm.io.units import MM_PER_UNIT, check_head_units, mm_per_unit
from ssm.models.model_units import in_millimetres, scaled_model
from ssm.models.shape_model import ShapeModel

log = logging.getLogger(__name__)

LANDMARK_FAIL_MM = 10.0  # median distance of the accepted landmarks that flags a fit as failed
# a converged fit has this share of the scan's points within 2.5 mm of it; or, when the head
# is a small part of the scan (a whole body: 14-16 %), this share of the points within
# EXPLAINED_REACH_MM of it (correct fits of busts, walls, bodies: 0.79-0.87; fits started
# 90 degrees or 60 mm off, or placed on a body: 0.31-0.44) and this share of its vertices
# within 2.5 mm of the scan (a fit shrunk onto a small part of the face: 0.05)
EXPLAINED_MIN = 0.3
EXPLAINED_REACH_MM = 50.0
EXPLAINED_NEAR_MIN = 0.6
COVERED_MIN = 0.2
MEASURED_MIN_MM = 0.5  # a vertex this close to the scan was measured by it (smoothing leaves it)


def _as_scan(scan) -> Scan:
    if isinstance(scan, Scan):
        return scan
    if isinstance(scan, (str, os.PathLike)):
        return load_scan(scan)
    if isinstance(scan, tuple):
        return scan_from_arrays(*scan)
    return scan_from_arrays(np.asarray(scan))


def _as_landmarks(model: ShapeModel, landmarks) -> MatchedLandmarks | None:
    if landmarks is None or isinstance(landmarks, MatchedLandmarks):
        return landmarks
    from ssm.io.landmarks import LandmarkPoints, read_landmark_points

    path = "landmarks"
    if isinstance(landmarks, (str, os.PathLike)):
        path = str(landmarks)
        landmarks = read_landmark_points(landmarks)
    elif not isinstance(landmarks, LandmarkPoints):
        landmarks = LandmarkPoints(np.asarray(landmarks, dtype=np.float64))
    return match_landmarks(dict(model.landmarks), landmarks, path, model.n_vertices)


def _as_pose(pose) -> Similarity | None:
    if pose is None or isinstance(pose, Similarity):
        return pose
    if isinstance(pose, (str, os.PathLike)):
        try:
            m = np.loadtxt(pose, ndmin=2, delimiter=None)
        except ValueError as exc:
            raise InputFileError(pose, "is not a 4x4 matrix of numbers", "write 4 rows of 4 numbers") from exc
        if m.shape != (4, 4):
            raise InputFileError(pose, f"holds a {m.shape} matrix", "the pose must be 4x4 (model -> scan)")
        try:
            return Similarity.from_matrix(m)
        except ValueError as exc:
            raise InputFileError(pose, str(exc), "give a rotation/scale/translation matrix") from exc
    return Similarity.from_matrix(np.asarray(pose, dtype=np.float64))


def _units_name(units_per_mm: float) -> str:
    """The named unit within 20% of a fitted scale (scan units per mm), else 'unknown'.

    The fitted scale also holds the subject's size relative to the model, so only a
    clear match is named; otherwise the report gives the measured mm per unit.
    """
    best = min(MM_PER_UNIT, key=lambda u: abs(np.log(units_per_mm * MM_PER_UNIT[u])))
    if abs(np.log(units_per_mm * MM_PER_UNIT[best])) <= np.log(1.2):
        return best
    return f"unknown ({1.0 / units_per_mm:.4g} mm per unit)"


def fit(model: ShapeModel, scan, landmarks=None, pose=None, units: str = "auto", device: str = "auto",
        config: FitConfig | None = None, expression_model: ShapeModel | None = None) -> FitResult:
    """Fit ``model`` to a raw scan.

    model : a ShapeModel, normally in mm; a model in other units (declared, or seen from
        the size of its mean: :func:`ssm.models.model_units.model_mm_per_unit`) is fitted
        scaled to mm, and the result is in mm (``FitResult.model_mm_per_unit`` says by
        how much it was scaled).
    scan : path (mesh or point cloud), :class:`Scan`, (vertices, faces) tuple or (P, 3) array.
    landmarks : path (CSV / LJSON / scalismo JSON), LandmarkPoints, or (L, 3) array in the
        model's landmark order (NaN rows missing); scan frame and units.
    pose : initial model -> scan transform (model units), (4, 4) array or path of a text file.
    units : the scan's units ("mm", "cm", "m", ...) or "auto" to estimate the scale.
    device : "auto" | "cpu" | "cuda": where the closest-point searches (the bulk of the
        fit's time on a CPU), the model fit's basis products and the final smoothing run;
        "auto" takes a CUDA GPU when torch sees one (:func:`ssm.device.device_name`). The rest is
        CPU work (bookkeeping between the searches, small dense solves, a sparse LU).
    expression_model : an expression basis of the model's mesh
        (:func:`ssm.io.model_file.load_expression_model`): fitted with the identity when a
        probe finds the face is not neutral (:mod:`ssm.fitting.expression_model`), in
        place of the landmark warp and the generic expression field.
    Returns a :class:`FitResult`; raises :class:`SSMError` for unusable input.
    """
    cfg = config or FitConfig()
    t_start = time.perf_counter()
    if expression_model is not None:
        check_expression_model(model, expression_model)
    # the fit works in mm: a model in other units (FLAME's metres) is scaled to mm
    model, model_mm = in_millimetres(model)
    if model_mm != 1.0 and expression_model is not None:
        expression_model = scaled_model(expression_model, model_mm)
    sc = _as_scan(scan)
    lms = _as_landmarks(model, landmarks)
    if lms is not None:
        check_landmarks_on_scan(lms.points, sc.tree, sc.diagonal,
                                str(landmarks) if isinstance(landmarks, (str, os.PathLike)) else "landmarks")
    init_pose = _as_pose(pose)
    if init_pose is not None and model_mm != 1.0:  # given for the model's units: from mm
        init_pose = init_pose.compose(Similarity(1.0 / model_mm, np.eye(3), np.zeros(3)))
    dev = device_name(device)
    sc = sc.on(dev)
    units_per_mm = None if units in (None, "auto") else 1.0 / mm_per_unit(units)
    if units_per_mm is not None:  # a scan in other units than given fails to fit, obscurely
        check_head_units(sc.points, units, sc.path, trim=0.01)
    similarity_model = str(model.provenance.get("align", "similarity")) == "similarity"
    fixed_scale = units_per_mm if (units_per_mm is not None and not similarity_model) else None
    search_scale = fixed_scale if fixed_scale else units_per_mm  # the automatic search's scale, when known
    stages: list[StageReport] = []
    lm_mask = None

    # 1-2: initialisation
    starts = None
    if init_pose is not None:
        sim = init_pose
        stages.append(StageReport("given_pose", 0.0, float("nan"), float("nan"), 0))
    elif lms is not None and len(lms) >= 3:
        sim, lm_mask, rep = landmark_similarity(model.mean[lms.vertex], lms, cfg, fixed_scale)
        stages.append(rep)
    else:
        if lms is not None:
            log.warning("%d landmark(s) are too few to initialise; using the automatic search", len(lms))
        starts, rep = auto_similarity(model, sc, cfg, search_scale, candidates=cfg.auto_candidates + EXTRA_CANDIDATES)
        starts, extra_starts = starts[:cfg.auto_candidates], starts[cfg.auto_candidates:]
        sim = starts[0]

    # normals take their side from the initialised model (point clouds; inverted meshes)
    mean_normals = instance_normals(model, model.mean)

    def oriented(scan: Scan, pose: Similarity, shape: np.ndarray | None = None) -> Scan:
        normals = mean_normals if shape is None else instance_normals(model, shape)
        return orient_normals(scan, pose.apply(model.mean if shape is None else shape),
                              normals @ pose.rotation.T, near=10.0 * pose.scale)

    raw_sc, sc = sc, oriented(sc, sim)
    if starts is not None:  # the model chooses among the search's best distinct starts
        t0 = time.perf_counter()
        # a mesh's winding is voted by the placed model: each start votes for itself
        # (cheap for a mesh; a cloud's per-point sides stay with the search's best)
        per_start = (lambda pose: oriented(raw_sc, pose)) if raw_sc.oriented else None
        sim, scores = select_start(model, sc, starts, cfg, fixed_scale, orient=per_start)

        def poor() -> bool:  # even the best start explains the scan poorly
            return min(scores, default=0.0) > WINDOW_SEARCH_SCORE

        def also_try(more: list[Similarity]) -> tuple[Similarity, list[float]]:  # the winner against more starts
            best, more_scores = select_start(model, sc, [sim] + more, cfg, fixed_scale, orient=per_start)
            return best, scores + more_scores[1:]

        if poor() and extra_starts:  # the search's next best
            sim, scores = also_try(extra_starts)
        windows = 0
        if poor():  # the head may be part of the scan (a bust)
            more = window_starts(model, raw_sc, cfg, search_scale)
            windows = len(more)
            if more:
                sim, scores = also_try(more)
        # a small part (a whole body): in the units given, or those it would be a body in;
        # also when the chosen start puts the scan in no named unit while it would be a
        # body in one (a head five times too large laid over a body fits it well)
        if search_scale is not None:
            bodies = [search_scale] if poor() else []
        else:
            bodies = body_scales(model, raw_sc) if poor() or not near_named_unit(sim.scale) else []
        for scale in bodies:
            more = head_window_starts(model, raw_sc, cfg, scale)
            windows += len(more)
            if more:
                sim, scores = also_try(more)
        if per_start is not None:
            sc = per_start(sim)
        stages.append(dataclasses.replace(rep, seconds=rep.seconds + time.perf_counter() - t0,
                                          extra={**rep.extra, "candidate_scores": scores,
                                                 "window_starts": windows}))

    # 3: rigid / similarity refinement (pose only)
    t0 = time.perf_counter()
    rigid_cfg = dataclasses.replace(cfg, component_schedule=(0,), prior_schedule=None,
                                    iterations_per_level=cfg.rigid_iterations * (1 if starts is None else 2))
    state, rep = fit_model(model, sc, sim, rigid_cfg, lms, lm_mask, fixed_scale, exact_last=False)
    stages.append(dataclasses.replace(rep, name="rigid_refine", seconds=time.perf_counter() - t0))

    # 4: model fit (all components, prior annealed from stiff to soft); without landmarks
    # nothing pins the fit along the surface, and it takes one more iteration per level
    fit_cfg = cfg if lms is not None and len(lms) >= 3 else dataclasses.replace(
        cfg, iterations_per_level=cfg.iterations_per_level + 1)
    state, rep = fit_model(model, sc, state.pose, fit_cfg, lms, lm_mask, fixed_scale, coeffs=state.coeffs)
    if not raw_sc.oriented and model.triangles is not None:
        # a point cloud's normals took their sides from the placed mean, which is off where
        # the subject differs most (lips, nostrils, eyelids); they take them again from
        # the fit, and the model is fitted again with them (the robustness benchmark's
        # clouds without normals, residual planes then the scan's: 0.71 -> 0.65 mm with 7
        # landmarks, 0.78 -> 0.65 mm without)
        t0 = time.perf_counter()
        before = sc.normals
        sc = oriented(raw_sc, state.pose, model.instance(state.coeffs))
        flipped = float(np.mean(np.einsum("pd,pd->p", before, sc.normals) < 0))
        state, again = fit_model(model, sc, state.pose, fit_cfg, lms, lm_mask, fixed_scale, coeffs=state.coeffs)
        rep = dataclasses.replace(again, seconds=rep.seconds + time.perf_counter() - t0,
                                  extra={**again.extra, "cloud_normals_turned": round(flipped, 4)})
    stages.append(rep)

    # 4a: where the scan is not skin (hair over the scalp), refit without it
    occluded = None
    if cfg.occlusion and model.triangles is not None:
        state, occluded, rep = occlusion_stage(model, sc, state, cfg, lms, lm_mask, fixed_scale)
        stages.append(rep)
    x_model = model.instance(state.coeffs)

    warp = WarpOutcome(state, x_model, x_model)
    expression_coeffs = None
    if expression_model is not None:
        # 4b-c with an expression model: the face's expression in the model's own basis,
        # fitted with the identity when a quick probe finds the face is not neutral
        fitted, rep = expression_model_stage(model, expression_model, sc, state, cfg, lms, lm_mask, fixed_scale,
                                             occluded)
        if fitted is not None:
            state, x_model, start, expression_coeffs = fitted
            warp = WarpOutcome(state, x_model, start)
        stages.append(rep)
    else:
        # 4b: where many landmarks agree that the fit is off (an expression in front of an
        # identity model), warp it there and refit the model without that region
        if cfg.landmark_warp and lms is not None:
            warp = warp_stage(model, sc, state, cfg, lms, lm_mask, fixed_scale, occluded)
            state, x_model = warp.state, warp.x_model
            if warp.report is not None:
                stages.append(warp.report)
        # 4c: where the warp found no region, a deformation field over the whole model when a
        # quick probe shows the identity bending to explain the scan (an expression)
        if cfg.expression_field_mm > 0 and warp.region is None:
            fitted, rep = expression_field_stage(model, sc, state, cfg, lms, lm_mask, fixed_scale, occluded)
            if fitted is not None:
                state, x_model, start = fitted
                warp = WarpOutcome(state, x_model, start)
            stages.append(rep)

    # 5: non-rigid ICP
    x = warp.start
    if cfg.nicp:
        x, rep = nicp(model, sc, state.pose, warp.start, cfg, lms, lm_mask, state.correspondences, warp.region,
                      occluded)
        stages.append(rep)

    # 6: pose refinement with the final shape
    pose, rep, final_corr = refine_pose(model, sc, state.pose, x, cfg, fixed_scale)
    stages.append(rep)
    t0 = time.perf_counter()
    if expression_coeffs is not None:  # the posterior of identity and expression, around their fit
        stddev = fit_stddev(expression_augmented(model, expression_model), final_corr, pose, warp.start, x,
                            cfg.uncertainty_correlation)
    else:
        stddev = fit_stddev(model, final_corr, pose, x_model, x, cfg.uncertainty_correlation)
    if warp.variance is not None:  # where the model does not hold, the landmarks' GP says how well
        stddev = np.sqrt(stddev ** 2 + warp.variance)
    stages.append(StageReport("uncertainty", time.perf_counter() - t0, float("nan"), float("nan"),
                              0 if final_corr is None else len(final_corr),
                              extra={"stddev_median_mm": float(np.nanmedian(stddev))}))

    # 7: smoothing where the fit is uncertain (torch, on --device), landmarks pinned
    if cfg.smooth_iterations > 0 and model.triangles is not None:
        t0 = time.perf_counter()
        # the scan measured the vertices on it: they keep their place, like the landmarks
        # (the final correspondences are a sample of the scan and leave out a third of the
        # face, whose stddev takes in the unseen detail: smoothing it cost the 7-landmark
        # expression 1.006 -> 1.014 mm, with these pins 1.011)
        pins = measured_vertices(pose.apply(x), sc, pose.scale, final_corr)
        if lms is not None:
            pins[lms.vertex] = True
        x = smooth_uncertain(x, model.triangles, stddev, cfg.smooth_iterations, pins, dev)
        stages.append(StageReport("smoothing", time.perf_counter() - t0, float("nan"), float("nan"), 0,
                                  extra={"iterations": cfg.smooth_iterations,
                                         "measured_fraction": round(float(pins.mean()), 4)}))
    verts_scan = pose.apply(x)
    # the subject without the expression: the identity with the detail NICP added to the fit
    neutral = None if expression_coeffs is None else x_model + (x - warp.start)
    dist = distance_to_scan(verts_scan, sc) / pose.scale
    colors = vertex_colors(verts_scan, sc, model.triangles, COLOR_DISTANCE_MM * pose.scale)
    lm_err = {}
    if lms is not None:
        err = np.linalg.norm(pose.inverse().apply(lms.points) - x[lms.vertex], axis=1)
        lm_err = {n: float(e) for n, e in zip(lms.names, err)}
    rejected = tuple(lms.names[i] for i in np.flatnonzero(~lm_mask)) if lm_mask is not None else ()
    final = next(st for st in stages if st.name == "pose_refine")
    n_corr = final.n_correspondences
    explained = scan_explained(sc, verts_scan, model.triangles, pose.scale)
    near = explained_near = None
    if explained < EXPLAINED_MIN:  # the head may be a small part of the scan (a whole body, a room)
        explained_near = scan_explained(sc, verts_scan, model.triangles, pose.scale, reach_mm=EXPLAINED_REACH_MM)
        near = explained_near >= EXPLAINED_NEAR_MIN and float(np.mean(dist < 2.5)) >= COVERED_MIN
    converged = bool(np.isfinite(final.residual_median_mm) and final.residual_median_mm < 3.0
                     and n_corr >= 0.05 * model.n_vertices and (explained >= EXPLAINED_MIN or near))
    message = "" if converged else (f"did not converge: median residual {final.residual_median_mm:.2f} mm "
                                    f"over {n_corr} correspondences, {explained:.0%} of the scan within "
                                    f"2.5 mm of the fit" + ("" if explained_near is None else
                                                           f" ({explained_near:.0%} of the scan near it)"))
    kept = [e for name, e in lm_err.items() if name not in rejected]
    if converged and len(kept) >= 3 and np.median(kept) > LANDMARK_FAIL_MM:
        # the surface fits, but not where the landmarks say: slid or flipped
        converged = False
        message = (f"did not converge: the landmarks are {np.median(kept):.1f} mm (median) from the fit; "
                   f"check the landmark order and the scan")
    if units_per_mm is not None:
        units_name, estimated = units, False
    else:
        units_name, estimated = _units_name(pose.scale), True
    log.info("fit done in %.2f s", time.perf_counter() - t_start)
    return FitResult(verts_scan, x, x_model, model.triangles, pose, state.coeffs, dist, tuple(stages), lm_err,
                     rejected, units_name, estimated, converged, message, stddev, occluded, expression_coeffs,
                     neutral, dict(model.landmarks), colors, model_mm, explained)


def refine_pose(model: ShapeModel, scan: Scan, pose: Similarity, x: np.ndarray, cfg: FitConfig,
                fixed_scale: float | None) -> tuple[Similarity, StageReport, object]:
    """Stage 6: re-estimate the similarity pose for the final shape ``x`` (model frame).

    Returns the pose (model -> scan), the stage's report and the correspondences at that
    pose (those of the shape as it is when ``cfg.pose_iterations`` is 0).
    """
    t0 = time.perf_counter()
    rng = np.random.default_rng(cfg.seed + 2)
    start = pose
    corr = None
    ns0 = instance_normals(model, x)
    for i in range(cfg.pose_iterations + 1):  # the last correspondences are the final pose's
        corr = find_correspondences(pose.apply(x), ns0 @ pose.rotation.T, scan, 1.0 / pose.scale,
                                    max(cfg.min_distance_mm, 5.0), cfg.normal_cos, cfg.scan_samples, rng)
        if i == cfg.pose_iterations or len(corr) < 10:
            break
        # point-to-plane, as in the model fit: closest points in 3D pull the shape along the
        # surface (68 / 7-landmark expression 0.821 / 1.011 -> 0.817 / 1.006 mm, neutral
        # 0.414 / 0.475 / 0.461 -> 0.410 / 0.474 / 0.457); the landmarks are left out,
        # their noise moved the pose more than it fixed (0.821 / 1.012)
        pose = update_pose(x, corr, None, pose, fixed_scale, cfg.point_to_plane)
    moved = float(np.sqrt(((start.inverse().apply(pose.apply(x)) - x) ** 2).sum(1).mean()))
    mean, med = residual_stats(corr.distance_mm if corr is not None else [])
    return pose, StageReport("pose_refine", time.perf_counter() - t0, mean, med, 0 if corr is None else len(corr),
                             extra={"vertex_shift_rms_mm": moved}), corr


def measured_vertices(points: np.ndarray, scan: Scan, units_per_mm: float, corr) -> np.ndarray:
    """(N,) bool: the vertices the scan measured, within its noise of a scan point.

    points : (N, 3) fitted vertices, scan frame; units_per_mm : the pose's scale; corr :
    the final correspondences, whose robust residual gives the noise sigma. Measured is
    within 3 sigma of the nearest scan point (at least :data:`MEASURED_MIN_MM`): a
    KD-tree query, where the surface distance would cost a pass over every triangle of
    a dense scan (1.2 s at 6M).
    """
    sigma = robust_sigma_mm(corr.distance_mm) if corr is not None and len(corr) else 0.0
    d, _ = scan.tree.query(points, workers=-1)
    return d / units_per_mm < max(3.0 * sigma, MEASURED_MIN_MM)


def distance_to_scan(points: np.ndarray, scan: Scan) -> np.ndarray:
    """(N,) distance (scan units) from points in the scan frame to the scan surface / points."""
    if len(scan.faces):
        from ssm.geometry.surface_distance import point_to_surface

        return point_to_surface(points, scan.points, scan.faces, scan.tree)
    d, _ = scan.tree.query(points)
    return d

