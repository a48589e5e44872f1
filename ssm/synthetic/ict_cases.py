"""Held-out fitting cases with known truth, from the ICT head model (../shared/data).

Training subjects and held-out subjects are ICT identities plus per-subject surface
detail that no linear model of other subjects spans (smooth random bumps along the
normal), optionally with an expression (ICT blendshapes) that an identity model does not
span. Held-out subjects become raw scans with :func:`ssm.synthetic.raw_scans.make_raw_scan`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ssm.synthetic.raw_scans import RawScan, make_raw_scan
from ssm.geometry.mesh_ops import vertex_normals

IBUG7 = (36, 39, 42, 45, 30, 48, 54)  # eye corners, nose tip, mouth corners


@dataclass(frozen=True)
class ICT:
    mean: np.ndarray  # (N, 3) mm
    modes: np.ndarray  # (100, N, 3)
    expressions: np.ndarray  # (53, N, 3)
    expression_names: tuple[str, ...]
    triangles: np.ndarray
    landmarks68: np.ndarray
    narrow_face: int

    @property
    def landmark_names(self) -> dict[str, int]:
        return {f"ibug{i:02d}": int(v) for i, v in enumerate(self.landmarks68)}


def load_ict(path: str | Path) -> ICT:
    d = np.load(path)
    return ICT(d["mean"].astype(np.float64), d["identity_modes"].astype(np.float64),
               d["expression_deltas"].astype(np.float64), tuple(str(x) for x in d["expression_names"]),
               d["triangles"].astype(np.int64), d["landmarks68"].astype(np.int64),
               int(d["narrow_face_vertex_count"]))


def surface_detail(vertices: np.ndarray, triangles: np.ndarray, rng: np.random.Generator,
                   amplitude_mm: float = 0.8, n_bumps: int = 60, width_mm: float = 12.0) -> np.ndarray:
    """(N, 3) smooth random displacement along the normals (detail outside a model)."""
    n = vertex_normals(vertices, triangles)
    centres = vertices[rng.choice(len(vertices), n_bumps, replace=False)]
    amp = rng.normal(0, amplitude_mm, n_bumps)
    h = np.zeros(len(vertices))
    for c, a in zip(centres, amp):
        h += a * np.exp(-0.5 * (((vertices - c) ** 2).sum(1)) / width_mm ** 2)
    return h[:, None] * n


def subjects(ict: ICT, n: int, seed: int, detail_mm: float = 0.8) -> np.ndarray:
    """(n, N, 3) identities with their own surface detail, mm."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((n, len(ict.modes)))
    out = ict.mean[None] + np.einsum("sk,knd->snd", c, ict.modes)
    if detail_mm > 0:
        for i in range(n):
            out[i] += surface_detail(out[i], ict.triangles, rng, detail_mm)
    return out


#: the held-out cases' expression (ICT blendshape weights): jaw open, a smile, brows raised
HELDOUT_EXPRESSION = {"jawOpen": 0.35, "mouthSmile_L": 0.5, "mouthSmile_R": 0.5,
                      "browInnerUp_L": 0.5, "browInnerUp_R": 0.5}


def expression_offsets(ict: ICT, weights: dict[str, float]) -> np.ndarray:
    """(N, 3) mm: the sum of the named ICT blendshapes times their weights.

    Raises KeyError naming a blendshape the model does not have (a misspelt name would
    otherwise leave that part of the expression out without a word).
    """
    names = list(ict.expression_names)
    missing = [n for n in weights if n not in names]
    if missing:
        raise KeyError(f"no ICT blendshape named {missing} (have {names})")
    w = np.zeros(len(names))
    for name, val in weights.items():
        w[names.index(name)] = val
    return np.einsum("k,knd->nd", w, ict.expressions)


def with_expressions(ict: ICT, identities: np.ndarray, seed: int, active: float = 0.1) -> np.ndarray:
    """(n, N, 3) ``identities`` (n, N, 3) each with a random expression, mm: every ICT
    blendshape is on with probability ``active``, at a weight drawn from U(0, 1).

    A corpus of such scans next to the neutral ones trains a model that spans
    expressions too (one PCA over both), for scans of people who are not neutral.
    """
    rng = np.random.default_rng(seed)
    n, k = len(identities), len(ict.expressions)
    w = rng.uniform(0.0, 1.0, (n, k)) * (rng.random((n, k)) < active)
    return identities + np.einsum("sk,knd->snd", w, ict.expressions)


@dataclass(frozen=True)
class Case:
    """A held-out subject (truth, mm) and its raw scan with landmarks in the scan frame."""

    truth: np.ndarray
    scan: RawScan
    landmarks: np.ndarray | None  # (68, 3) scan frame, NaN rows missing; None = no landmarks


def hair_weight(ict: ICT, head: np.ndarray) -> np.ndarray:
    """(N,) in [0, 1]: how much of a full head of hair covers each vertex of ``head`` (mm,
    face along +z, y up): the scalp above the brows (with a fringe over the upper
    forehead) and the back of the head, ramping up over 20-30 mm from the hairline."""
    lm = ict.landmarks68
    brow = head[lm[19], 1] + 12.0
    behind = head[lm[0], 2] - 20.0
    w = np.clip((head[:, 1] - brow) / 20.0, 0, 1)
    w = w + np.clip((behind - head[:, 2]) / 30.0, 0, 1) * (head[:, 1] > head[lm[8], 1] + 20.0)
    w = np.clip(w, 0.0, 1.0)
    w[:ict.narrow_face] *= head[:ict.narrow_face, 1] > brow
    return w


def with_hair(ict: ICT, head: np.ndarray, hair_mm: float) -> np.ndarray:
    """(N, 3) the surface a scanner sees of ``head`` (mm) under ``hair_mm`` of hair: the
    skin pushed out along its normals by ``hair_mm`` times :func:`hair_weight`."""
    from ssm.geometry.mesh_ops import vertex_normals

    return head + (hair_mm * hair_weight(ict, head))[:, None] * vertex_normals(head, ict.triangles)


def with_shoulders(head: np.ndarray, triangles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A bust: ``head`` (N, 3) mm with a torso under the neck, an ellipsoid 380 x 260 x
    220 mm (642 vertices) whose top meets the neck. Returns (vertices (N + 642, 3),
    triangles); the head's vertices come first, unchanged. Scan it with a wider camera
    (``make_raw_scan(..., fov_mm=560)``)."""
    import trimesh

    ball = trimesh.creation.icosphere(subdivisions=3)
    torso = ball.vertices * [190.0, 130.0, 110.0] + [0.0, head[:, 1].min() - 125.0, head[:, 2].mean() - 30.0]
    return np.concatenate([head, torso]), np.concatenate([triangles, ball.faces + len(head)])


def heldout_case(ict: ICT, seed: int, views: str = "frontal", landmarks: str = "68",
                 expression: bool = False, landmark_sigma_mm: float = 1.5, units: str = "cm",
                 noise_mm: float = 0.3, spacing_mm: float = 0.8, hair_mm: float = 0.0) -> Case:
    """One held-out case: identity + detail (+ expression) -> raw scan + noisy landmarks.

    hair_mm : thickness of hair over the scalp (:func:`hair_weight`): the scan sees the
        hair's surface, the truth stays the skin under it.
    """
    rng = np.random.default_rng(10_000 + seed)
    truth = subjects(ict, 1, 10_000 + seed)[0]
    if expression:
        truth = truth + expression_offsets(ict, HELDOUT_EXPRESSION)
    surface = with_hair(ict, truth, hair_mm) if hair_mm > 0 else truth
    raw = make_raw_scan(surface, ict.triangles, views=views, spacing_mm=spacing_mm, noise_mm=noise_mm, units=units,
                        seed=20_000 + seed)
    lm = None
    if landmarks != "none":
        pts = truth[ict.landmarks68] + rng.normal(0, landmark_sigma_mm, (68, 3))
        lm = raw.to_scan.apply(pts)
        if landmarks == "7":
            keep = np.zeros(68, bool)
            keep[list(IBUG7)] = True
            lm[~keep] = np.nan
    return Case(truth, raw, lm)
