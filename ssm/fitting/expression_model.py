"""Stage 4c with the model's own expression basis (a Basel-style file's ``/expression``,
:func:`ssm.io.model_file.load_expression_model`): identity and expression fitted
together, when a quick probe finds the face is not neutral.

The identity is fitted first (stages 3-4). The probe then fits the model augmented with
the expression basis for :data:`~ssm.fitting.deformation_basis.PROBE_ITERATIONS` joint
iterations at the full prior and measures the expression's displacement (RMS over the
vertices, mm). Above ``FitConfig.expression_model_gate_mm`` the augmented model is
refitted over a short prior anneal and its instance starts NICP; below it the identity
fit stands, so neutral faces are not handed the expression basis' extra freedom. On
held-out ICT scans with a Basel-style ICT model (its 53 blendshapes as the expression
basis, weights of standard deviation 0.3) the probe gives 0.33-1.16 mm on neutral faces
(68, 7 and no landmarks), 1.5-2.0 mm on mild expressions (a smile at 0.5, the jaw opened
at 0.2) and 3.0-3.6 mm on the benchmark's (jaw open, smile, brows raised). Applied on
every scan, the expression basis cost the neutral cases 0.45 -> 0.68 mm (68 landmarks);
with the probe the neutral cases stay at 0.45 / 0.55 / 0.56 mm (68 / 7 / no landmarks)
and the expression cases go from 1.01 / 1.19 / 1.24 to 0.60 / 0.67 / 0.65 mm
(``benchmarks/bench_fitting.py``; without the expression model, with the generic field
of 30 mm and its mirror correlation that came later: 0.91 / 1.06 / 1.09 mm).
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from ssm.errors import SSMError
from ssm.fitting.config import FitConfig
from ssm.fitting.deformation_basis import (PROBE_ITERATIONS, REFIT_ITERATIONS, REFIT_PRIOR, refit_augmented,
                                           vertex_rms)
from ssm.fitting.landmark_match import MatchedLandmarks
from ssm.fitting.model_fit import ModelFitState, basis_instance, model_of_scaled_basis, scaled_basis
from ssm.fitting.scan import Scan
from ssm.fitting.stage import StageReport, residual_stats
from ssm.models.shape_model import ShapeModel


def check_expression_model(model: ShapeModel, expression: ShapeModel) -> None:
    """Raise SSMError unless ``expression`` is an expression model of ``model``'s mesh."""
    if expression.n_vertices != model.n_vertices:
        raise SSMError(f"the expression model has {expression.n_vertices} vertices but the model "
                       f"{model.n_vertices}: it belongs to another mesh")


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


def expression_model_stage(model: ShapeModel, expression: ShapeModel, scan: Scan, state: ModelFitState,
                           cfg: FitConfig, lms: MatchedLandmarks | None, lm_mask: np.ndarray | None,
                           fixed_scale: float | None, occluded: np.ndarray | None = None
                           ) -> tuple[tuple[ModelFitState, np.ndarray, np.ndarray, np.ndarray] | None, StageReport]:
    """Probe for, and when found fit, the face's expression with ``expression``'s basis.

    Returns ((the state with the identity's coefficients (K,) and pose, the identity's
    instance (N, 3), the instance with the expression (N, 3; the start of NICP), both
    model frame, mm, and the expression's standardised coefficients (E,)) or None when the
    probe stays under ``cfg.expression_model_gate_mm``; and the stage's report (extras:
    the probe's RMS, whether the expression was fitted, its RMS over the vertices).
    """
    t0 = time.perf_counter()
    aug = expression_augmented(model, expression)
    k = model.n_components
    psi = scaled_basis(expression)
    n_lm = 0 if lms is None else int(len(lms) if lm_mask is None else np.count_nonzero(lm_mask))
    iterations = REFIT_ITERATIONS + (1 if n_lm < 3 else 0)  # as the field's refit: nothing pins the slide

    def expression_rms(coeffs: np.ndarray) -> float:  # the expression's own displacement, offset aside
        return vertex_rms(basis_instance(expression, psi, coeffs[k:], expression.n_components)
                          - np.asarray(expression.mean, np.float64))

    probe = None
    if cfg.expression_model_gate_mm > 0:
        probe_state, _, _ = refit_augmented(model, aug, scan, state, cfg, lms, lm_mask, fixed_scale, occluded,
                                            (1.0,), PROBE_ITERATIONS, exact_last=False)
        probe = expression_rms(probe_state.coeffs)
    applied = probe is None or probe >= cfg.expression_model_gate_mm
    extra = {"basis": "expression model", "components": int(expression.n_components),
             "probe_rms_mm": None if probe is None else round(probe, 4),
             "gate_mm": cfg.expression_model_gate_mm, "applied": applied}
    fitted = None
    if applied:
        aug_state, start, identity = refit_augmented(model, aug, scan, state, cfg, lms, lm_mask, fixed_scale,
                                                     occluded, REFIT_PRIOR, iterations)
        b = np.asarray(aug_state.coeffs[k:], np.float64)
        state = dataclasses.replace(aug_state, coeffs=np.asarray(aug_state.coeffs[:k]))
        fitted = (state, identity, start, b)
        extra.update(expression_rms_mm=round(expression_rms(aug_state.coeffs), 4))
    corr = state.correspondences
    mean, med = residual_stats([] if corr is None else corr.distance_mm)
    return fitted, StageReport("expression_model", time.perf_counter() - t0, mean, med,
                               0 if corr is None else len(corr), extra=extra)
