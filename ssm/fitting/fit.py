"""``ssm.fit``: the fitting stages, in order."""

from __future__ import annotations

import logging
import os
import time
from typing import Callable

from ssm.fitting.config import FitConfig
from ssm.fitting.finish.assemble import fit_result
from ssm.fitting.finish.smoothing import smoothing
from ssm.fitting.finish.uncertainty import uncertainty
from ssm.fitting.initialise.start import initialise, rigid_refine
from ssm.fitting.model_fit.stage import model_fit_stage
from ssm.fitting.outputs.result import FitResult
from ssm.fitting.prepare.model import resolve_model
from ssm.fitting.problem import FitProblem, fit_problem
from ssm.fitting.refine.expression_field import expression_field_stage
from ssm.fitting.refine.expression_model import expression_model_stage
from ssm.fitting.refine.landmark_warp import MIN_LANDMARKS, landmark_warp_stage
from ssm.fitting.refine.nicp import nicp
from ssm.fitting.refine.occlusion import occlusion
from ssm.fitting.refine.pose import refine_pose
from ssm.fitting.state import FitState, StageReport, StageResult
from ssm.models.shape_model import ShapeModel

log = logging.getLogger(__name__)

Stage = Callable[[FitProblem, FitState], StageResult]


def fit(model: ShapeModel | str | os.PathLike | None = None, scan=None, landmarks=None, pose=None,
        units: str = "auto", device: str = "auto", config: FitConfig | None = None,
        expression_model: ShapeModel | str | None = "auto",
        progress: Callable[[str], None] | None = None) -> FitResult:
    """Fit a model to a raw scan: the model's topology on it. ``ssm.fit("scan.ply")``
    fits the default model (the ICT head that ships in ``models/``).

    model : a ShapeModel, a model file's path, or None for the default model; normally
        in mm; a model in other units (declared, or seen from the size of its mean) is
        fitted scaled to mm, and the result is in mm (``FitResult.model_mm_per_unit``
        says by how much it was scaled).
    scan : path (mesh or point cloud), :class:`~ssm.fitting.prepare.scan.Scan`,
        (vertices, faces) tuple or (P, 3) array; given alone (``fit(scan)``), the
        default model fits it.
    landmarks : path (CSV / LJSON / scalismo JSON), LandmarkPoints, or (L, 3) array in the
        model's landmark order (NaN rows missing); scan frame and units.
    pose : initial model -> scan transform (model units), (4, 4) array or path of a text file.
    units : the scan's units ("mm", "cm", "m", ...) or "auto" to estimate the scale.
    device : "auto" | "cpu" | "cuda": where the closest-point searches, the model fit's
        basis products and the final smoothing run ("auto": a CUDA GPU when torch sees one).
    config : the settings (:class:`~ssm.fitting.config.FitConfig`); the defaults when None.
    expression_model : an expression basis of the model's mesh
        (:func:`ssm.io.model_file.load_expression_model`), fitted with the identity when a
        probe finds the face is not neutral, in place of the generic refinements; "auto"
        (a model file's own: its named blendshapes or Basel-style expression model), or
        None / "off" for none.
    progress : called with each stage's name as it starts (a terminal's progress line).
    Returns a :class:`FitResult`; raises :class:`ssm.errors.SSMError` for unusable input.
    """
    t_start = time.perf_counter()
    if scan is None and not isinstance(model, ShapeModel):
        model, scan = None, model  # fit(scan): the default model
    if scan is None:
        raise TypeError("fit() needs a scan: fit(scan) or fit(model, scan)")
    model, expression_model = resolve_model(model, expression_model)
    problem = fit_problem(model, scan, landmarks, pose, units, device, config, expression_model)
    refine = problem.config.refine
    reports: list[StageReport] = []

    def run(stage: Stage, state: FitState | None = None) -> FitState:
        if progress is not None:
            progress(stage.__name__.removesuffix("_stage").replace("_", " "))
        result = stage(problem) if state is None else stage(problem, state)
        reports.append(result.report)
        return result.state

    state = run(initialise)  # from a given pose, landmarks or the automatic search
    state = run(rigid_refine, state)
    state = run(model_fit_stage, state)
    if refine.occlusion and problem.model.triangles is not None:
        state = run(occlusion, state)  # hair, a cap: fitted without
    # what the model does not span (an expression): the model's own expression basis, or
    # a deformation field where the landmarks find the fit off, or over the whole model
    if problem.expression_model is not None:
        state = run(expression_model_stage, state)
    else:
        if refine.landmark_warp and problem.n_kept_landmarks(state.landmark_mask) >= MIN_LANDMARKS:
            state = run(landmark_warp_stage, state)
        if refine.expression_field_mm > 0 and state.region is None:
            state = run(expression_field_stage, state)
    if refine.nicp:
        state = run(nicp, state)  # detail outside the model's span
    state = run(refine_pose, state)
    state = run(uncertainty, state)
    if problem.config.smoothing.smooth_iterations > 0 and problem.model.triangles is not None:
        state = run(smoothing, state)
    log.info("fit done in %.2f s", time.perf_counter() - t_start)
    return fit_result(problem, state, reports)
