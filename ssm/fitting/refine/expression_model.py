"""Expression model: the model's own expression basis (a Basel-style file's
``/expression``, :func:`ssm.io.model_file.load_expression_model`) fitted with the
identity, when a quick probe finds the face is not neutral.

The identity is fitted first. The probe then fits the model augmented with the
expression basis for :data:`~ssm.fitting.refine.deformation_basis.PROBE_ITERATIONS`
joint iterations at the full prior and measures the expression's displacement (RMS over
the vertices, mm). Above ``FitConfig.refine.expression_model_gate_mm`` the augmented
model is refitted over a short prior anneal and its instance starts NICP; below it the
identity fit stands, so neutral faces are not handed the expression basis' extra
freedom (applied to every scan, it costs neutral faces accuracy).
"""

from __future__ import annotations

import time

import numpy as np

from ssm.fitting.model_fit.basis import basis_instance, model_of_scaled_basis, scaled_basis
from ssm.fitting.model_fit.schedule import augmented_schedule
from ssm.fitting.problem import FitProblem, check_expression_model
from ssm.fitting.refine.deformation_basis import (PROBE_ITERATIONS, REFIT_ITERATIONS, REFIT_PRIOR, refit_augmented,
                                                  vertex_rms)
from ssm.fitting.state import FitState, StageResult, correspondence_report
from ssm.models.shape_model import ShapeModel


def expression_augmented(model: ShapeModel, expression: ShapeModel) -> ShapeModel:
    """``model`` with the expression basis after its own components: mean ``model.mean +
    expression.mean`` (the expression's offset), basis ``[U_id diag(sd_id), U_ex
    diag(sd_ex)]`` (float32, already scaled: variances 1), so the first K coefficients of
    a fit are the identity's and the rest the expression's. Cached on ``model`` (a cache,
    not state: the probe runs on every scan)."""
    cache = model.__dict__.get("_expression_augmented")
    if cache is not None and cache[0] is expression:
        return cache[1]
    check_expression_model(model, expression)
    phi = np.concatenate([scaled_basis(model), scaled_basis(expression)], 2)  # (N, 3, K + E) float32
    out = model_of_scaled_basis(np.asarray(model.mean, np.float64) + np.asarray(expression.mean, np.float64),
                                phi, model, model.noise_variance + expression.noise_variance)
    object.__setattr__(model, "_expression_augmented", (expression, out))
    return out


def expression_model_stage(problem: FitProblem, state: FitState) -> StageResult:
    """Probe for, and when found fit, the face's expression with the problem's expression
    basis. When fitted, the state gets the identity's coefficients (K,) and pose, the
    identity's instance, the instance with the expression (the start of NICP) and the
    expression's standardised coefficients (E,); the report's extras say the probe's
    RMS, whether the expression was fitted and its RMS over the vertices."""
    t0 = time.perf_counter()
    model, expression = problem.model, problem.expression_model
    cfg = problem.config
    aug = expression_augmented(model, expression)
    k = model.n_components
    psi = scaled_basis(expression)
    # as the field's refit: one more iteration where no landmarks pin the slide
    iterations = REFIT_ITERATIONS + (0 if problem.n_kept_landmarks(state.landmark_mask) >= 3 else 1)

    def expression_rms(coeffs: np.ndarray) -> float:  # the expression's own displacement, offset aside
        return vertex_rms(basis_instance(expression, psi, coeffs[k:], expression.n_components)
                          - np.asarray(expression.mean, np.float64))

    probe = None
    if cfg.refine.expression_model_gate_mm > 0:
        quick = augmented_schedule(cfg.model_fit, aug.n_components, (1.0,), PROBE_ITERATIONS)
        probe = expression_rms(refit_augmented(problem, state, aug, quick, exact_last=False).coeffs)
    applied = probe is None or probe >= cfg.refine.expression_model_gate_mm
    extra = {"basis": "expression model", "components": int(expression.n_components),
             "probe_rms_mm": None if probe is None else round(probe, 4),
             "gate_mm": cfg.refine.expression_model_gate_mm, "applied": applied}
    if applied:
        fitted = refit_augmented(problem, state, aug,
                                 augmented_schedule(cfg.model_fit, aug.n_components, REFIT_PRIOR, iterations))
        state = fitted.state.replace(identity=fitted.identity, model_shape=fitted.start, shape=fitted.start,
                                     expression_coeffs=np.asarray(fitted.coeffs[k:], np.float64))
        extra.update(expression_rms_mm=round(expression_rms(fitted.coeffs), 4))
    return StageResult(state, correspondence_report("expression_model", time.perf_counter() - t0, state,
                                                    extra=extra))
