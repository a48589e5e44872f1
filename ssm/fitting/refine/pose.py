"""Pose refinement: the similarity pose again, for the final shape."""

from __future__ import annotations

import time

import numpy as np

from ssm.fitting.model_fit.basis import instance_normals
from ssm.fitting.model_fit.correspondence import find_correspondences
from ssm.fitting.model_fit.iterate import MIN_CORRESPONDENCES
from ssm.fitting.model_fit.solve import update_pose
from ssm.fitting.problem import FitProblem
from ssm.fitting.state import FitState, StageResult, correspondence_report

POSE_GATE_MM = 5.0  # the final shape is close: correspondences within this (or the min gate)


def refine_pose(problem: FitProblem, state: FitState) -> StageResult:
    """Re-estimate the similarity pose for ``state.shape`` by point-to-plane Gauss-Newton
    steps (``pose_iterations``; closest points in 3D would pull the shape along the
    surface; the landmarks are left out: their noise moves the pose more than it helps).
    The state gets the pose and the correspondences at it (those of the shape as it is
    when ``pose_iterations`` is 0)."""
    t0 = time.perf_counter()
    cfg = problem.config.model_fit
    scan, pose, x = state.scan, state.pose, state.shape
    rng = problem.streams.rng("pose_refine")
    start = pose
    corr = None
    normals = instance_normals(problem.model, x)
    iterations = problem.config.refine.pose_iterations
    for i in range(iterations + 1):  # the last correspondences are the final pose's
        corr = find_correspondences(pose.apply(x), normals @ pose.rotation.T, scan, 1.0 / pose.scale,
                                    max(cfg.min_distance_mm, POSE_GATE_MM), cfg.normal_cos, cfg.scan_samples, rng)
        if i == iterations or len(corr) < MIN_CORRESPONDENCES:
            break
        pose = update_pose(x, corr, None, pose, problem.fixed_scale, cfg.point_to_plane)
    moved = float(np.sqrt(((start.inverse().apply(pose.apply(x)) - x) ** 2).sum(1).mean()))
    done = state.replace(pose=pose, correspondences=corr)
    return StageResult(done, correspondence_report("pose_refine", time.perf_counter() - t0, done,
                                                   extra={"vertex_shift_rms_mm": moved}))
