"""Stage 4c: a smooth deformation field over the whole model, where the scan shows what
the identity model does not span (an expression) and the landmark warp cannot find the
region (fewer than 20 landmarks, none, or landmarks that disagree over most of the model).

An identity model bends the identity to explain an expression, and it explains the
surface well while doing so: the surface residuals after the model fit look the same on
an expression and on a neutral face. What tells them apart is how much a deformation
field is used once it is offered. The stage first fits the model with a field of
``FitConfig.expression_field_mm`` over the whole model for two quick iterations
(:func:`ssm.fitting.deformation_basis.field_rms`): on held-out ICT scans the field's RMS
over the vertices is 0.45-0.91 mm on neutral faces (frontal, three-quarter and profile
views, point clouds, hair over the scalp) and 1.36-1.57 mm with an expression (jaw open,
smile, brows raised). Above ``FitConfig.expression_field_gate_mm`` (1.15 mm) the model is
refitted with the field (:func:`ssm.fitting.deformation_basis.fit_with_field`, as
scalismo's augmented models), twice more with the field's per-vertex amplitude set by
what the last fit used (:data:`RELEVANCE_ROUNDS`, automatic relevance): the field gathers
on the moved face and the identity is fitted by the rest. Below it the fit is left as it
was. On the ICT expression cases (``benchmarks/bench_fitting.py``) this takes 7 landmarks
from 1.97 to about 1.3 mm and no landmarks from 2.04 to about 1.4 mm; neutral scans are
unchanged, for about 0.13 s more (the probe).
"""

from __future__ import annotations

import time

import numpy as np

from ssm.fitting.config import FitConfig
from ssm.fitting.deformation_basis import field_rms, fit_with_field, vertex_rms
from ssm.fitting.landmark_match import MatchedLandmarks
from ssm.fitting.model_fit import ModelFitState
from ssm.fitting.scan import Scan
from ssm.fitting.stage import StageReport, residual_stats
from ssm.models.shape_model import ShapeModel


RELEVANCE_ROUNDS = 2  # refits that re-weight the field by what the last one used (7 landmarks: 1.51 -> 1.37 mm)


def expression_field_stage(model: ShapeModel, scan: Scan, state: ModelFitState, cfg: FitConfig,
                           lms: MatchedLandmarks | None, lm_mask: np.ndarray | None, fixed_scale: float | None,
                           occluded: np.ndarray | None = None
                           ) -> tuple[tuple[ModelFitState, np.ndarray, np.ndarray] | None, StageReport]:
    """Probe for, and when found fit, a field of ``cfg.expression_field_mm`` over the model.

    Returns (the state (identity coefficients and pose), its identity instance (N, 3) and
    the instance with the field (N, 3; the start of non-rigid ICP), model frame, mm), or
    None when the probe's RMS stays under ``cfg.expression_field_gate_mm`` and the fit is
    left as it was; and the stage's report (extras: the probe's RMS, whether the field was
    applied, its components and RMS over the vertices).
    """
    t0 = time.perf_counter()
    amplitude = cfg.expression_field_mm
    probe = None
    if cfg.expression_field_gate_mm > 0:
        probe = field_rms(model, scan, state, cfg, amplitude, lms, lm_mask, fixed_scale, occluded)
    applied = probe is None or probe >= cfg.expression_field_gate_mm
    extra = {"amplitude_mm": amplitude, "probe_rms_mm": None if probe is None else round(probe, 4),
             "gate_mm": cfg.expression_field_gate_mm, "applied": applied}
    fitted = None
    if applied:
        region = np.ones(model.n_vertices, bool)
        state, start, n_fields = fit_with_field(model, scan, state, cfg, region, amplitude, lms, lm_mask,
                                                fixed_scale, occluded, relevance_rounds=RELEVANCE_ROUNDS)
        x = model.instance(state.coeffs)
        fitted = (state, x, start)
        extra.update(deformation_components=int(n_fields), deformation_rms_mm=round(vertex_rms(start - x), 4))
    corr = state.correspondences
    mean, med = residual_stats([] if corr is None else corr.distance_mm)
    return fitted, StageReport("expression_field", time.perf_counter() - t0, mean, med,
                               0 if corr is None else len(corr), extra=extra)
