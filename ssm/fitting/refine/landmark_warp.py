"""Landmark warp: a smooth correction where the landmarks disagree with the model fit.

The model fit explains a scan with the model's shapes. Where the subject leaves that
span (an expression in front of an identity model: an open jaw, a smile), the fit
bends the identity to match the surface and slides along it, and the landmarks there
end up systematically off while elsewhere they are off only by their noise. Surface
residuals cannot see this (the bent fit lies on the scan); the landmarks can.

The landmark residuals ``r_l = landmark_l - fit(vertex_l)`` (model frame, mm) are
regressed with a Gaussian process, one per axis::

    r = f(p) + e,   f ~ GP(0, a^2 exp(-|p - q|^2 / (2 l^2))),   e ~ N(0, s^2 I)

with the noise ``s``, amplitude ``a`` and length ``l`` chosen by maximum marginal
likelihood (type-II ML over a grid). Residuals that are only noise give ``a`` near 0
and a correction near 0, so a scan the model explains is left alone; a region of
residuals that agree with each other gives a smooth field there, and the posterior mean
of ``f`` at every vertex is the correction.

The fitting stage (:func:`landmark_warp_stage`) uses it twice. The region where the
correction exceeds ``FitConfig.refine.warp_region_mm`` gets a smooth deformation field
(:mod:`ssm.fitting.refine.deformation_basis`), and the model is fitted again with it, on
the whole scan and all the landmarks: the field explains what the identity does not span,
so the identity stops bending, and it keeps the region's data. The warp of what the
landmarks still disagree with is added, and the result is the start of non-rigid ICP,
which refines it along the normals and keeps the region's landmarks at its soft levels.
Fitting the identity without the region instead loses the region's data; a field whose
correlation follows space rather than the skin ties the two lips together.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from ssm.fitting.problem import FitProblem
from ssm.fitting.refine.deformation_basis import fit_with_field, vertex_rms
from ssm.fitting.state import FitState, StageReport, StageResult, residual_stats

log = logging.getLogger(__name__)

MIN_LANDMARKS = 20  # fewer cannot tell a smooth field from noise (s, a and l are all free)
LENGTHS_MM = (10.0, 20.0, 40.0)  # candidate correlation lengths (face features, mm)
# the landmark warp applies when its region covers at most the larger share of the model's
# vertices (a local disagreement: an expression), and the model is refitted with a
# deformation field over the region from the smaller one on. A larger region says the
# landmarks are defined differently from the model's (a jaw contour drawn on another
# convention) or the whole fit is off, and the fit is left as it is.
WARP_REFIT_FRACTION = (0.01, 0.45)


@dataclass(frozen=True)
class LandmarkWarp:
    """field : (N, 3) correction (model frame, mm), the GP posterior mean; variance : (N,)
    its posterior variance summed over the 3 axes, mm^2; noise_mm, amplitude_mm,
    length_mm : the chosen GP hyper-parameters (per axis)."""

    field: np.ndarray
    variance: np.ndarray
    noise_mm: float
    amplitude_mm: float
    length_mm: float

    @property
    def magnitude(self) -> np.ndarray:
        """(N,) length of the correction, mm."""
        return np.linalg.norm(self.field, axis=1)


def landmark_warp(points: np.ndarray, residuals: np.ndarray, vertices: np.ndarray,
                  lengths_mm: tuple[float, ...] = LENGTHS_MM) -> LandmarkWarp | None:
    """GP regression of landmark residuals, evaluated at every vertex.

    points : (L, 3) fitted landmark vertices, model frame, mm.
    residuals : (L, 3) landmark minus fitted vertex, mm.
    vertices : (N, 3) the fitted shape, model frame, mm.
    Returns None with fewer than :data:`MIN_LANDMARKS` finite landmarks.
    """
    ok = np.isfinite(residuals).all(1) & np.isfinite(points).all(1)
    p, r = np.asarray(points, np.float64)[ok], np.asarray(residuals, np.float64)[ok]
    if len(p) < MIN_LANDMARKS:
        return None
    n_lm = len(p)
    scale = float(np.sqrt((r ** 2).sum(1).mean() / 3.0)) + 1e-9  # rough per-axis residual size
    noises = scale * np.geomspace(0.25, 2.0, 19)
    amps2 = scale ** 2 * np.geomspace(1e-4, 1e2, 49)
    d2 = ((p[:, None] - p[None]) ** 2).sum(-1)
    best = (-np.inf, 0.0, 1.0, lengths_mm[0])
    for length in lengths_mm:
        lam, q = np.linalg.eigh(np.exp(-0.5 * d2 / length ** 2))
        lam = np.clip(lam, 0.0, None)
        proj2 = ((q.T @ r) ** 2).sum(1)  # (L,) squared projections, summed over the 3 axes
        # K = a^2 E + s^2 I has eigenvalues a^2 lam + s^2: the log-likelihood on a grid
        ev = amps2[:, None, None] * lam[None, None, :] + (noises ** 2)[None, :, None]  # (A, S, L)
        ll = -0.5 * (proj2 / ev).sum(-1) - 1.5 * np.log(ev).sum(-1)
        i, j = np.unravel_index(int(np.argmax(ll)), ll.shape)
        if ll[i, j] > best[0]:
            best = (float(ll[i, j]), float(amps2[i]), float(noises[j]), length)
    _, a2, s, length = best
    kernel = a2 * np.exp(-0.5 * d2 / length ** 2)
    k_inv = np.linalg.inv(kernel + s ** 2 * np.eye(n_lm))
    alpha = k_inv @ r  # (L, 3)
    v = np.asarray(vertices, np.float64)
    field = np.zeros_like(v)
    var = np.zeros(len(v))
    for start in range(0, len(v), 20000):  # (chunk, L) kernel rows
        blk = slice(start, start + 20000)
        k = a2 * np.exp(-0.5 * ((v[blk, None] - p[None]) ** 2).sum(-1) / length ** 2)
        field[blk] = k @ alpha
        var[blk] = 3.0 * np.clip(a2 - ((k @ k_inv) * k).sum(1), 0.0, None)
    return LandmarkWarp(field, var, s, float(np.sqrt(a2)), length)


def landmark_warp_stage(problem: FitProblem, state: FitState) -> StageResult:
    """The landmark warp after the model fit ``state``.

    When the warp exceeds ``warp_region_mm`` over a share of the vertices within
    :data:`WARP_REFIT_FRACTION`, the model is fitted again with a smooth deformation
    field over that region (the warp's amplitude, at least 1 mm, times
    ``warp_amplitude_scale``), jointly with the identity, on the whole scan and all the
    landmarks (their sigma ``warp_landmark_sigma_scale`` times larger), without the
    occluded vertices; the warp of what the landmarks still disagree with is added on
    top. Over a larger share the warp is reported but not applied. The state gets the
    identity, the model shape (the start of NICP), the ``region`` and the warp's
    ``field_variance`` there (mm^2) when applied.
    """
    t0 = time.perf_counter()
    cfg = problem.config.refine
    lm_v, lm_points, _ = problem.kept_landmarks(state.landmark_mask)

    def warp_of(x, pose):  # landmark residuals (L, 3) and their warp over the shape x (N, 3), mm
        res = pose.inverse().apply(lm_points) - x[lm_v]
        return res, landmark_warp(x[lm_v], res, x)

    x = problem.model.instance(state.coeffs)
    res, warp = warp_of(x, state.pose)
    if warp is None:
        return StageResult(state, StageReport("landmark_warp", time.perf_counter() - t0, float("nan"),
                                              float("nan"), len(lm_v), extra={"applied": False, "refit": False,
                                                                              "landmarks": len(lm_v)}))
    region = warp.magnitude > cfg.warp_region_mm
    share = float(region.mean())
    applied = share <= WARP_REFIT_FRACTION[1]
    refit = applied and share >= WARP_REFIT_FRACTION[0]
    extra = {"noise_mm": round(warp.noise_mm, 4), "amplitude_mm": round(warp.amplitude_mm, 4),
             "length_mm": warp.length_mm, "max_mm": round(float(warp.magnitude.max()), 4),
             "region_fraction": round(share, 4), "refit": refit, "applied": applied}
    start, final = x, warp
    if refit:
        amplitude = max(warp.amplitude_mm, 1.0) * cfg.warp_amplitude_scale
        fitted = fit_with_field(problem, state, region, amplitude, smoothness=cfg.warp_basis_smoothness,
                                landmark_variance_scale=cfg.warp_landmark_sigma_scale ** 2,
                                identity_sd=cfg.field_identity_sd)
        state, start = fitted.state, fitted.start
        x = problem.model.instance(state.coeffs)
        res, final = warp_of(start, state.pose)  # the same landmarks: never None here
        extra.update(deformation_components=int(fitted.n_fields),
                     deformation_amplitude_mm=round(amplitude, 4), mirror_correlation=round(fitted.mirror_rho, 4),
                     deformation_rms_mm=round(vertex_rms(start - x), 4),
                     residual_warp_max_mm=round(float(final.magnitude.max()), 4))
    # residuals: the accepted landmarks' distances to the warped fit (to the fit when not applied)
    mean, med = residual_stats(np.linalg.norm(res - (final.field[lm_v] if applied else 0.0), axis=1))
    rep = StageReport("landmark_warp", time.perf_counter() - t0, mean, med, len(lm_v), extra=extra)
    if not applied:
        log.info("landmark warp not applied: the landmarks disagree with the model fit over %.0f%% of the "
                 "vertices (their definitions differ from the model's?)", 100 * share)
        return StageResult(state.replace(identity=x, model_shape=x, shape=x), rep)
    shape = start + final.field
    return StageResult(state.replace(identity=x, model_shape=shape, shape=shape, region=region,
                                     field_variance=np.where(region, warp.variance, 0.0)), rep)
