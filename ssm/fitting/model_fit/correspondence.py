"""Closest-point correspondences between a model instance and a scan, with rejection.

Matches are made in both directions: every model vertex looks for its nearest scan
point (model -> scan), and a sample of scan points looks for their nearest model vertex
(scan -> model), whose targets are averaged per vertex. Model -> scan matches that land
on the scan's border are dropped, so a partial scan does not drag the unseen parts of the
model onto its edge; scan -> model matches keep small scan regions from being ignored.
Pairs farther than a gate or with incompatible normals are rejected, and the survivors
get robust (Geman-McClure) weights. The searches run where the scan says
(:attr:`Scan.device`: KD-trees on the CPU, brute force on a GPU).

Each correspondence carries the normal of the plane its residual is measured across:
the model vertex's own normal (the scan's, averaged over the pair's points, only where
the model has none: a point model). The scan's normals are noisy (0.3 mm of scanner
noise at 0.8 mm sampling tilts a mesh's vertex normals by 9 degrees, median) and carry
the surface's detail, and a residual measured along them leaks a tangential pull of
that noise into every solve; the model's normals are smooth and agree from one
iteration to the next. Scan normals still decide which pairs are compatible
(``normal_cos``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ssm.fitting.prepare.scan import Scan
from ssm.geometry.nearest import nearest


@dataclass(frozen=True)
class Correspondences:
    """Targets for some model vertices.

    vertex : (C,) model vertex indices (unique); target : (C, 3) scan frame;
    normal : (C, 3) unit normals of the residuals' planes, scan frame: the model
        vertex's normal (the scan's at the targets where the model has none; zero if
        neither is known);
    weight : (C,) in (0, 1]; distance_mm : (C,) residual before the update, mm.
    """

    vertex: np.ndarray
    target: np.ndarray
    normal: np.ndarray
    weight: np.ndarray
    distance_mm: np.ndarray

    def __len__(self) -> int:
        return len(self.vertex)


def find_correspondences(verts: np.ndarray, vnormals: np.ndarray, scan: Scan, mm_per_unit: float,
                         gate_mm: float, normal_cos: float, scan_samples: int,
                         rng: np.random.Generator, candidates: np.ndarray | None = None,
                         robust_mm: float | None = None) -> Correspondences:
    """Correspondences for model vertices ``verts`` (N, 3) already in the scan frame.

    vnormals : (N, 3) model vertex normals in the scan frame.
    mm_per_unit : scan units -> mm (1 / pose scale), for the gate and residuals.
    candidates : (N,) bool, vertices allowed to match (default all).
    robust_mm : scale of the robust weights (default: from the median residual).
    """
    n = len(verts)
    allowed = np.ones(n, bool) if candidates is None else candidates
    gate = gate_mm / mm_per_unit
    # model -> scan (only the allowed vertices are queried)
    idx_allowed = np.flatnonzero(allowed)
    d_a, j_a = scan.nearest_match(verts[idx_allowed], gate)
    ok_a = np.isfinite(d_a)
    ok_a &= ~scan.boundary[j_a]
    # a vertex without a normal (a point model) is compatible with any scan point
    blind = ~np.any(vnormals, axis=1)
    cos = (vnormals[idx_allowed] * scan.normals[j_a]).sum(1)
    ok_a &= ((cos if scan.oriented else np.abs(cos)) >= normal_cos) | blind[idx_allowed]
    tgt_sum = np.zeros((n, 3))
    nrm_sum = np.zeros((n, 3))
    cnt = np.zeros(n)
    hit = idx_allowed[ok_a]
    tgt_sum[hit] = scan.points[j_a[ok_a]]
    nrm_sum[hit] = scan.normals[j_a[ok_a]]
    if not scan.oriented:  # unoriented (point-cloud) normals: turn them to agree with the model
        nrm_sum[hit] *= np.where(cos[ok_a] < 0, -1.0, 1.0)[:, None]
    cnt[hit] = 1.0
    # scan -> model
    pick = scan.matchable
    if len(pick) > scan_samples:  # drawn with replacement; a mask merges repeats (no sort)
        chosen = np.zeros(len(pick), bool)
        chosen[rng.integers(0, len(pick), scan_samples)] = True
        pick = pick[chosen]
    if len(pick) and len(idx_allowed):
        d2, i2 = nearest(verts[idx_allowed], scan.points[pick], gate, scan.device)
        ok2 = np.isfinite(d2)
        vi = idx_allowed[np.where(ok2, i2, 0)]
        c2 = (vnormals[vi] * scan.normals[pick]).sum(1)
        ok2 &= ((c2 if scan.oriented else np.abs(c2)) >= normal_cos) | blind[vi]
        vi, pts, pn = vi[ok2], scan.points[pick[ok2]], scan.normals[pick[ok2]]
        if not scan.oriented:  # or the per-vertex averages of opposite normals cancel
            pn = pn * np.where(c2[ok2] < 0, -1.0, 1.0)[:, None]
        for c in range(3):
            tgt_sum[:, c] += np.bincount(vi, pts[:, c], minlength=n)
            nrm_sum[:, c] += np.bincount(vi, pn[:, c], minlength=n)
        cnt += np.bincount(vi, minlength=n)
    have = np.flatnonzero(cnt > 0)
    target = tgt_sum[have] / cnt[have, None]
    nrm = nrm_sum[have]
    has_own = ~blind[have]  # the model's normal where it has one (see the module docstring)
    nrm[has_own] = vnormals[have][has_own]
    nn = np.linalg.norm(nrm, axis=1, keepdims=True)
    nrm = np.divide(nrm, nn, out=np.zeros_like(nrm), where=nn > 0)
    dist_mm = np.linalg.norm(target - verts[have], axis=1) * mm_per_unit
    # robust weights: Geman-McClure with a scale from the median residual
    if robust_mm is None:
        scale = max(robust_sigma_mm(dist_mm) if len(dist_mm) else 1.0, 0.5)
    else:
        scale = robust_mm / 2.0
    w = 1.0 / (1.0 + (dist_mm / (2.0 * scale)) ** 2) ** 2
    return Correspondences(have, target, nrm, w, dist_mm)


def robust_sigma_mm(distance_mm: np.ndarray) -> float:
    """The Gaussian sigma (mm) that the median of the (C,) residual lengths implies
    (1.4826 x the median): the spread of the inliers, whatever the outliers do."""
    return 1.4826 * float(np.median(distance_mm))


def adaptive_gate(previous: Correspondences | None, config_max: float, config_min: float) -> float:
    """Distance gate (mm) for the next search: 3 robust sigmas of the last residuals."""
    if previous is None or len(previous) < 10:
        return config_max
    sigma = robust_sigma_mm(previous.distance_mm)
    return float(np.clip(4.0 * sigma + 1.0, config_min, config_max))
