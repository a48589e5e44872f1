"""Stage 4c (opt-in): a smooth deformation field over the whole model, for scans known to
show an expression, when the landmark warp cannot find the region (fewer than 20
landmarks, or none).

An identity model bends the identity to explain an expression. With 20+ landmarks the
landmark warp (:mod:`ssm.fitting.landmark_warp`) finds where, and frees only that region.
With fewer, nothing in the surface fit tells an expression from a face the model
explains (the surface residuals look the same), so the field cannot be switched on by
itself; ``FitConfig.expression_field_mm`` (``--expression-field MM``) switches it on over
the whole model: the model plus a Gaussian process along its surface
(:func:`ssm.fitting.deformation_basis.fit_with_field`), as scalismo's augmented models.
On the ICT expression cases (``benchmarks/bench_fitting.py``) 1 mm takes 7 landmarks
from 1.97 to 1.54 mm and no landmarks from 2.04 to 1.59 mm; on neutral scans it costs
0.64 -> 0.78 and 0.70 -> 0.80 mm, which is why it is off by default.
"""

from __future__ import annotations

import time

import numpy as np

from ssm.fitting.config import FitConfig
from ssm.fitting.deformation_basis import fit_with_field
from ssm.fitting.landmark_match import MatchedLandmarks
from ssm.fitting.model_fit import ModelFitState
from ssm.fitting.scan import Scan
from ssm.fitting.stage import StageReport, residual_stats
from ssm.models.shape_model import ShapeModel


def expression_field_stage(model: ShapeModel, scan: Scan, state: ModelFitState, cfg: FitConfig,
                           lms: MatchedLandmarks | None, lm_mask: np.ndarray | None, fixed_scale: float | None,
                           occluded: np.ndarray | None = None
                           ) -> tuple[ModelFitState, np.ndarray, np.ndarray, StageReport]:
    """Refit the model with a field of ``cfg.expression_field_mm`` over all its vertices.

    Returns the state (identity coefficients and pose), its identity instance (N, 3), the
    instance with the field (N, 3; the start of non-rigid ICP), model frame, mm, and the
    stage's report (extras: the field's components, amplitude and RMS over the vertices).
    """
    t0 = time.perf_counter()
    region = np.ones(model.n_vertices, bool)
    state, start, n_fields = fit_with_field(model, scan, state, cfg, region, cfg.expression_field_mm, lms, lm_mask,
                                            fixed_scale, occluded)
    x = model.instance(state.coeffs)
    corr = state.correspondences
    mean, med = residual_stats([] if corr is None else corr.distance_mm)
    rep = StageReport("expression_field", time.perf_counter() - t0, mean, med, 0 if corr is None else len(corr),
                      extra={"deformation_components": int(n_fields), "amplitude_mm": cfg.expression_field_mm,
                             "deformation_rms_mm": round(float(np.sqrt(((start - x) ** 2).sum(1).mean())), 4)})
    return state, x, start, rep
