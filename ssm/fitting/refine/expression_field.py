"""Expression field: a smooth deformation field over the whole model, where the scan
shows what the identity model does not span (an expression) and the landmark warp cannot
find the region (fewer than 20 landmarks, none, or landmarks that disagree over most of
the model).

An identity model bends the identity to explain an expression, and it explains the
surface well while doing so: the surface residuals after the model fit look the same on
an expression and on a neutral face. What tells them apart is how much a deformation
field is used once it is offered. The stage first fits the model with a field of
``FitConfig.refine.expression_field_mm`` over the whole model for a few quick iterations
(:func:`ssm.fitting.refine.deformation_basis.field_rms`). When the probe's field RMS over
the vertices exceeds ``expression_field_gate_mm`` (set above the probes of neutral faces)
the model is refitted with the field
(:func:`ssm.fitting.refine.deformation_basis.fit_with_field`, as scalismo's augmented
models), :data:`RELEVANCE_ROUNDS` more times with the field's per-vertex amplitude set by
what the last fit used (automatic relevance): the field gathers on the moved face and the
identity is fitted by the rest. Below the gate the fit is left as it was. The probe's
field is always :data:`~ssm.fitting.refine.deformation_basis.PROBE_LENGTH_MM` long, the
length its gate was set with; the refit's is the config's.

The refit's field has the probe's amplitude times ``(probe RMS /
AMPLITUDE_REFERENCE_MM)^2`` (at least once): a stronger expression uses more of the
probe's field and gets a freer one.

The gate cannot tell an expression from a neutral face that leaves the model in other
ways (much surface detail outside the model's span): those probe above it too, and the
field then costs them a little. Neither the field fit's gain in scan residual nor the
share of the field on the face separates the two.
"""

from __future__ import annotations

import time

import numpy as np

from ssm.fitting.problem import FitProblem
from ssm.fitting.refine.deformation_basis import field_rms, fit_with_field, vertex_rms
from ssm.fitting.state import FitState, StageResult, correspondence_report


# the refit's amplitude is the probe's times (probe RMS / this)^2, at least once: a probe
# RMS just above the neutral faces' keeps the probe's amplitude
AMPLITUDE_REFERENCE_MM = 1.1
RELEVANCE_ROUNDS = 2  # refits that re-weight the field by what the last one used


def expression_field_stage(problem: FitProblem, state: FitState) -> StageResult:
    """Probe for, and when found fit, a field of ``expression_field_mm`` over the model.

    The state gets, when the field was applied, the refitted identity coefficients and
    pose, the identity instance and the instance with the field (the start of NICP);
    the report's extras say the probe's RMS, whether the field was applied, its
    components and RMS over the vertices.
    """
    t0 = time.perf_counter()
    cfg = problem.config.refine
    amplitude = cfg.expression_field_mm
    probe = None
    if cfg.expression_field_gate_mm > 0:
        probe = field_rms(problem, state, amplitude)
    applied = probe is None or probe >= cfg.expression_field_gate_mm
    extra = {"probe_amplitude_mm": amplitude, "probe_rms_mm": None if probe is None else round(probe, 4),
             "gate_mm": cfg.expression_field_gate_mm, "applied": applied}
    if applied:
        region = np.ones(problem.model.n_vertices, bool)
        # the more the probe's field was used, the freer the refit's (a stronger expression)
        if probe is not None:  # None: no probe (gate 0), the field at its own amplitude
            amplitude *= max(1.0, (probe / AMPLITUDE_REFERENCE_MM) ** 2)
        fitted = fit_with_field(problem, state, region, amplitude, relevance_rounds=RELEVANCE_ROUNDS,
                                identity_sd=cfg.field_identity_sd)
        x = problem.model.instance(fitted.state.coeffs)
        state = fitted.state.replace(identity=x, model_shape=fitted.start, shape=fitted.start)
        extra.update(amplitude_mm=round(amplitude, 4), deformation_components=int(fitted.n_fields),
                     deformation_rms_mm=round(vertex_rms(fitted.start - x), 4),
                     mirror_correlation=round(fitted.mirror_rho, 4))
    return StageResult(state, correspondence_report("expression_field", time.perf_counter() - t0, state,
                                                    extra=extra))
