"""Stage 4c: a smooth deformation field over the whole model, where the scan shows what
the identity model does not span (an expression) and the landmark warp cannot find the
region (fewer than 20 landmarks, none, or landmarks that disagree over most of the model).

An identity model bends the identity to explain an expression, and it explains the
surface well while doing so: the surface residuals after the model fit look the same on
an expression and on a neutral face. What tells them apart is how much a deformation
field is used once it is offered. The stage first fits the model with a field of
``FitConfig.expression_field_mm`` over the whole model for two quick iterations
(:func:`ssm.fitting.deformation_basis.field_rms`): on held-out ICT scans the field's RMS
over the vertices is 0.27-1.03 mm on neutral faces (frontal, three-view, three-quarter
and profile scans, point clouds, hair, busts; 7 landmarks or none) and 1.8-2.1 mm with
the benchmark's expression (jaw open, smile, brows raised). Other expressions reach
1.3-1.4 mm (a smile), 1.15-1.6 mm (a one-sided smile and squint), 1.8-2.2 mm (jaw open;
a pucker with puffed cheeks) and 0.6-0.7 mm (brows raised alone, where the field changes
the fit by 0.01 mm). Above
``FitConfig.expression_field_gate_mm`` (1.0 mm: since the model fit's exact last
iteration the highest neutral probe is 0.93 mm over the benchmarks' neutral cases, and a
one-sided smile with a squint probes at 1.07-1.13 mm; it was 1.1 mm, between the highest
neutral probe then, 1.03 mm, and the lowest expression, 1.15 mm; the real scan james
probes at 1.15 mm, and with the field its inner-face landmarks are 1.6 instead of 2.5
mm off) the model is
refitted with the field (:func:`ssm.fitting.deformation_basis.fit_with_field`, as
scalismo's augmented models), twice more with the field's per-vertex amplitude set by
what the last fit used (:data:`RELEVANCE_ROUNDS`, automatic relevance): the field gathers
on the moved face and the identity is fitted by the rest. Below it the fit is left as it
was. On the ICT expression cases (``benchmarks/bench_fitting.py``) this takes 7 landmarks
from 2.19 to 0.88 mm and no landmarks from 2.23 to 0.88 mm (1.01 / 1.01 before the model
fit's exact last iteration, :func:`ssm.fitting.model_fit.fit_model`; 1.05 / 1.10 with the
probe's amplitude, below; 1.06 / 1.09 before the refit loosened the identity's prior,
``FitConfig.field_identity_sd``), the rounds correlating the
field's two sides when the first fit's field is mostly symmetric
(:func:`ssm.fitting.deformation_basis.mirror_correlation`; without that, 1.12 and 1.13
mm; with a field of 50 mm instead of ``FitConfig.warp_basis_length_mm``'s 30, 1.19 and
1.23 mm); neutral scans are
unchanged, for about 0.13 s more (the probe). The probe's field is always 50 mm long
(:data:`ssm.fitting.deformation_basis.PROBE_LENGTH_MM`), the length its gate was
measured with; the refit's is the config's.

The refit's field has the probe's amplitude times ``(probe RMS / 1.1 mm)^2`` (at least
once; :data:`AMPLITUDE_REFERENCE_MM`, the gate when it was measured): a stronger
expression uses more of the probe's field and gets a freer one. With
the identity's looser prior in the refit (``FitConfig.field_identity_sd``) a fixed
larger amplitude helped the benchmark's expression (7 landmarks 1.051 mm at 1x, 1.018 at
2x, 0.995 at 3x) but cost a smile (its 2 subjects 1.034 -> 1.065 / 1.138 mm); scaled
by the probe, the benchmark's expression went 1.051 / 1.096 -> 1.014 / 1.014 mm (7
landmarks / none), four other expressions with 7 landmarks 1.075 -> 1.063 mm (each the
same or better), while the faces with 3 mm of detail outside the model, whose probe
also fires, went 1.22 / 1.34 -> 1.26 / 1.45 mm (7 / none).

The gate cannot tell an expression from a neutral face that leaves the model in other
ways: ICT subjects with 3 mm of surface detail outside the model (bumps of 12 mm; the
model's projection of such a face is 0.6 mm off) probe at 1.0-1.7 mm, and where the field
is then applied it cost them 0.45-0.65 mm at 50 mm (``benchmarks/bench_fitting_robustness.py``;
at 30 mm they fit to 1.45 / 1.69 mm with 7 landmarks / none, from 1.85 / 1.75 at 50,
against 1.37 / 1.37 mm without the field).
Neither the field fit's gain in scan residual nor the share of the field on the face
separates the two (both overlap on the cases above).
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


# the refit's amplitude is the probe's times (probe RMS / this)^2, at least once: the probe
# RMS the rule was measured against (the gate's value then, before the gate came down)
AMPLITUDE_REFERENCE_MM = 1.1
RELEVANCE_ROUNDS = 2  # refits that re-weight the field by what the last one used (7 landmarks: 1.38 -> 1.18 mm)


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
    extra = {"probe_amplitude_mm": amplitude, "probe_rms_mm": None if probe is None else round(probe, 4),
             "gate_mm": cfg.expression_field_gate_mm, "applied": applied}
    fitted = None
    if applied:
        region = np.ones(model.n_vertices, bool)
        # the more the probe's field was used, the freer the refit's (a stronger expression)
        if probe is not None:  # None: no probe (gate 0), the field at its own amplitude
            amplitude *= max(1.0, (probe / AMPLITUDE_REFERENCE_MM) ** 2)
        state, start, n_fields, mirror_rho = fit_with_field(model, scan, state, cfg, region, amplitude, lms, lm_mask,
                                                            fixed_scale, occluded, relevance_rounds=RELEVANCE_ROUNDS,
                                                            identity_sd=cfg.field_identity_sd)
        x = model.instance(state.coeffs)
        fitted = (state, x, start)
        extra.update(amplitude_mm=round(amplitude, 4), deformation_components=int(n_fields),
                     deformation_rms_mm=round(vertex_rms(start - x), 4),
                     mirror_correlation=round(mirror_rho, 4))
    corr = state.correspondences
    mean, med = residual_stats([] if corr is None else corr.distance_mm)
    return fitted, StageReport("expression_field", time.perf_counter() - t0, mean, med,
                               0 if corr is None else len(corr), extra=extra)
