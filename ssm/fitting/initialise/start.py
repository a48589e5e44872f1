"""The start of a fit: the model's pose on the scan, from a given pose, from landmarks, or
by the automatic search with the model choosing among its best placements; then a short
rigid refinement of that pose."""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np

from ssm.fitting.initialise.from_landmarks import landmark_similarity
from ssm.fitting.initialise.orient import oriented_scan
from ssm.fitting.initialise.search import (EXTRA_CANDIDATES, WINDOW_SEARCH_SCORE, auto_similarity, body_scales,
                                           head_window_starts, near_named_unit, select_start, window_starts)
from ssm.fitting.model_fit.iterate import fit_model
from ssm.fitting.model_fit.schedule import rigid_schedule
from ssm.fitting.problem import FitProblem
from ssm.fitting.state import FitState, StageReport, StageResult

log = logging.getLogger(__name__)


def initialise(problem: FitProblem) -> StageResult:
    """The first state: the pose (model mm -> scan), zero coefficients, the landmarks the
    robust similarity kept, the scan with its normals' sides taken from the placed mean;
    ``initialised_by`` says how ("pose", "landmarks" or "search")."""
    zeros = np.zeros(problem.model.n_components)
    if problem.initial_pose is not None:
        pose = problem.initial_pose
        state = FitState(oriented_scan(problem, problem.scan, pose), pose, zeros, initialised_by="pose")
        return StageResult(state, StageReport("given_pose", 0.0, float("nan"), float("nan"), 0))
    if problem.pinned:
        lms = problem.landmarks
        pose, inliers, report = landmark_similarity(problem.model.mean[lms.vertex], lms, problem.config.init,
                                                    problem.streams.rng("landmark_init"), problem.fixed_scale)
        state = FitState(oriented_scan(problem, problem.scan, pose), pose, zeros, landmark_mask=inliers,
                         initialised_by="landmarks")
        return StageResult(state, report)
    if problem.landmarks is not None:
        log.warning("%d landmark(s) are too few to initialise; using the automatic search", len(problem.landmarks))
    return _searched_start(problem, zeros)


def _searched_start(problem: FitProblem, zeros: np.ndarray) -> StageResult:
    """The automatic search's best distinct placements, the model choosing among them
    (:func:`select_start`); when even the best explains the scan poorly, the search's
    next best, windows of the scan (a bust) and head-sized windows (a whole body) too."""
    raw = problem.scan
    n = problem.config.init.auto_candidates
    starts, report = auto_similarity(problem, raw, candidates=n + EXTRA_CANDIDATES)
    starts, extra_starts = starts[:n], starts[n:]
    t0 = time.perf_counter()
    scan = oriented_scan(problem, raw, starts[0])
    # a mesh's winding is voted by the placed model: each start votes for itself (cheap
    # for a mesh; a cloud's per-point sides stay with the search's best)
    per_start = (lambda pose: oriented_scan(problem, raw, pose)) if raw.oriented else None
    pose, scores = select_start(problem, scan, starts, orient=per_start)

    def poor() -> bool:  # even the best start explains the scan poorly
        return min(scores, default=0.0) > WINDOW_SEARCH_SCORE

    def also_try(more):  # the winner against more starts
        best, more_scores = select_start(problem, scan, [pose] + more, orient=per_start)
        return best, scores + more_scores[1:]

    if poor() and extra_starts:  # the search's next best
        pose, scores = also_try(extra_starts)
    windows = 0
    if poor():  # the head may be part of the scan (a bust)
        more = window_starts(problem, raw)
        windows = len(more)
        if more:
            pose, scores = also_try(more)
    # a small part (a whole body): in the units given, or those it would be a body in;
    # also when the chosen start puts the scan in no named unit while it would be a
    # body in one (a head five times too large laid over a body fits it well)
    if problem.units_per_mm is not None:
        bodies = [problem.units_per_mm] if poor() else []
    else:
        bodies = body_scales(problem.model, raw) if poor() or not near_named_unit(pose.scale) else []
    for scale in bodies:
        more = head_window_starts(problem, raw, scale)
        windows += len(more)
        if more:
            pose, scores = also_try(more)
    if per_start is not None:
        scan = per_start(pose)
    report = dataclasses.replace(report, seconds=report.seconds + time.perf_counter() - t0,
                                 extra={**report.extra, "candidate_scores": scores, "window_starts": windows})
    return StageResult(FitState(scan, pose, zeros, initialised_by="search"), report)


def rigid_refine(problem: FitProblem, state: FitState) -> StageResult:
    """The pose alone, by the model fit without components: ``rigid_iterations``
    iterations, twice as many after the automatic search, whose start is rougher."""
    t0 = time.perf_counter()
    iterations = problem.config.init.rigid_iterations * (2 if state.initialised_by == "search" else 1)
    fitted = fit_model(problem, state, rigid_schedule(problem.config.model_fit, iterations), exact_last=False)
    return StageResult(fitted.state, dataclasses.replace(fitted.report, name="rigid_refine",
                                                         seconds=time.perf_counter() - t0))
