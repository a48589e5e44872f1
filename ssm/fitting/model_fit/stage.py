"""The model fit stage: every component, the prior annealed from stiff to soft."""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from ssm.fitting.initialise.orient import oriented_scan
from ssm.fitting.model_fit.iterate import fit_model
from ssm.fitting.model_fit.schedule import main_schedule
from ssm.fitting.problem import FitProblem
from ssm.fitting.state import FitState, StageResult


def model_fit_stage(problem: FitProblem, state: FitState) -> StageResult:
    """Fit the model from ``state``'s pose and coefficients (:func:`main_schedule`).

    A point cloud's normals took their sides from the placed mean, which is off where the
    subject differs most (lips, nostrils, eyelids): they take them again from the fit,
    and the model is fitted again with them. The state gets the identity (and shape) of
    the fitted coefficients.
    """
    model = problem.model
    schedule = main_schedule(problem.config.model_fit, problem.pinned)
    fitted = fit_model(problem, state, schedule, coeffs=state.coeffs)
    report = fitted.report
    if not problem.scan.oriented and model.triangles is not None:
        t0 = time.perf_counter()
        before = fitted.state.scan.normals
        scan = oriented_scan(problem, problem.scan, fitted.state.pose, model.instance(fitted.state.coeffs))
        turned = float(np.mean(np.einsum("pd,pd->p", before, scan.normals) < 0))
        again = fit_model(problem, fitted.state.replace(scan=scan), schedule, coeffs=fitted.state.coeffs)
        fitted = again
        report = dataclasses.replace(again.report, seconds=report.seconds + time.perf_counter() - t0,
                                     extra={**again.report.extra, "cloud_normals_turned": round(turned, 4)})
    x = model.instance(fitted.state.coeffs)
    return StageResult(fitted.state.replace(identity=x, model_shape=x, shape=x), report)
