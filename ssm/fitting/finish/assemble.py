"""The :class:`~ssm.fitting.outputs.result.FitResult` of a finished fit."""

from __future__ import annotations

import numpy as np

from ssm.fitting.finish.verdict import units_name, verdict
from ssm.fitting.outputs.colors import COLOR_DISTANCE_MM, vertex_colors
from ssm.fitting.outputs.result import FitResult
from ssm.fitting.prepare.scan import Scan
from ssm.fitting.problem import FitProblem
from ssm.fitting.state import FitState, StageReport
from ssm.models.blendshapes import named_weights


def fit_result(problem: FitProblem, state: FitState, reports: list[StageReport]) -> FitResult:
    """The result of the finished ``state``: the fit in the scan's frame, its distances to
    the scan, colours, landmark errors, verdict and units."""
    model, pose, x = problem.model, state.pose, state.shape
    verts_scan = pose.apply(x)
    # the subject without the expression: the identity with the detail NICP added to the fit
    neutral = None if state.expression_coeffs is None else state.identity + (x - state.model_shape)
    dist = distance_to_scan(verts_scan, state.scan) / pose.scale
    lm_err, rejected = {}, ()
    lms = problem.landmarks
    if lms is not None:
        err = np.linalg.norm(pose.inverse().apply(lms.points) - x[lms.vertex], axis=1)
        lm_err = {n: float(e) for n, e in zip(lms.names, err)}
        if state.landmark_mask is not None:
            rejected = tuple(lms.names[i] for i in np.flatnonzero(~state.landmark_mask))
    judged = verdict(problem, state, verts_scan, dist, [e for n, e in lm_err.items() if n not in rejected])
    return FitResult(
        vertices=verts_scan, vertices_model=x, model_fit_model=state.identity, triangles=model.triangles, pose=pose,
        coefficients=state.coeffs, distance_mm=dist, stages=tuple(reports), landmark_errors_mm=lm_err,
        rejected_landmarks=rejected, units=problem.units or units_name(pose.scale),
        units_estimated=problem.units is None, converged=judged.converged, message=judged.message,
        stddev_mm=state.stddev, occluded=state.occluded, expression_coefficients=state.expression_coeffs,
        neutral_model=neutral, landmark_vertices=dict(model.landmarks),
        vertex_colors=vertex_colors(verts_scan, state.scan, model.triangles, COLOR_DISTANCE_MM * pose.scale),
        model_mm_per_unit=problem.model_mm_per_unit, scan_explained=judged.scan_explained, evidence=judged.evidence,
        given_landmarks={} if lms is None else {n: p for n, p in zip(lms.names, lms.points)},
        face_vertices=judged.face,
        expression_weights=None if state.expression_coeffs is None
        else named_weights(problem.expression_model, state.expression_coeffs))


def distance_to_scan(points: np.ndarray, scan: Scan) -> np.ndarray:
    """(N,) distance (scan units) from points in the scan frame to the scan surface / points."""
    if len(scan.faces):
        from ssm.geometry.surface_distance import point_to_surface

        return point_to_surface(points, scan.points, scan.faces, scan.tree)
    d, _ = scan.tree.query(points)
    return d
