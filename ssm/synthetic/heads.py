"""A parametric head generator in a fixed topology, for demos and tests.

Heads are a latitude-longitude sphere (open at the neck) deformed into an ellipsoid with
a nose, eye sockets, brow, cheeks, chin, mouth and ears. Each subject is the base head
plus a linear combination of ``K`` displacement fields with N(0, 1) weights, so the
generator *is* a known linear shape model: a trained model should recover its span.

Frame: y up, z forward (the face looks along +z), x to the subject's left; units mm.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class HeadGenerator:
    """Ground truth of the synthetic population.

    mean : (N, 3) float64 mm, the base head.
    fields : (K, N, 3) float64 mm, displacement per unit of each parameter.
    triangles : (M, 3) int32; landmarks : name -> vertex; regions : name -> indices.
    """

    mean: np.ndarray
    fields: np.ndarray
    triangles: np.ndarray
    landmarks: dict
    regions: dict
    parameter_names: tuple[str, ...]

    @property
    def n_vertices(self) -> int:
        return self.mean.shape[0]

    def heads(self, params: np.ndarray) -> np.ndarray:
        """Heads for parameters (S, K) -> (S, N, 3) mm in the canonical frame."""
        p = np.atleast_2d(params)
        return self.mean[None] + np.einsum("sk,knd->snd", p, self.fields)


def _directions(n_lat: int, n_lon: int, max_polar_deg: float):
    polar = np.linspace(0, np.deg2rad(max_polar_deg), n_lat + 1)[1:]
    azim = np.linspace(0, 2 * np.pi, n_lon, endpoint=False)
    th, ph = np.meshgrid(polar, azim, indexing="ij")
    u = np.stack([np.sin(th) * np.sin(ph), np.cos(th), np.sin(th) * np.cos(ph)], -1).reshape(-1, 3)
    u = np.vstack([[0.0, 1.0, 0.0], u])  # top pole first
    tris = []
    for j in range(n_lon):  # cap fan
        tris.append([0, 1 + j, 1 + (j + 1) % n_lon])
    for i in range(n_lat - 1):
        for j in range(n_lon):
            a = 1 + i * n_lon + j
            b = 1 + i * n_lon + (j + 1) % n_lon
            c = a + n_lon
            d = b + n_lon
            tris += [[a, d, b], [a, c, d]]
    return u, np.asarray(tris, dtype=np.int32)


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def _bump(u: np.ndarray, centre, width_deg: float) -> np.ndarray:
    """Gaussian of the angle between directions u (N, 3) and ``centre``."""
    ang = np.arccos(np.clip(u @ _unit(centre), -1, 1))
    return np.exp(-0.5 * (ang / np.deg2rad(width_deg)) ** 2)


# (name, centre direction, width in degrees, base height mm, per-subject sd mm)
_FEATURES = (
    ("nose", (0.0, -0.05, 1.0), 9.0, 22.0, 4.0),
    ("nose_bridge", (0.0, 0.12, 1.0), 6.0, 6.0, 2.0),
    ("eye_sockets", None, 8.0, -9.0, 2.0),
    ("brow", (0.0, 0.30, 1.0), 16.0, 5.0, 2.0),
    ("cheeks", None, 14.0, 6.0, 2.5),
    ("chin", (0.0, -0.55, 1.0), 11.0, 10.0, 3.0),
    ("lips", (0.0, -0.33, 1.0), 7.0, 5.0, 1.5),
    ("ears", None, 9.0, 14.0, 3.0),
    ("jaw", None, 18.0, 4.0, 3.0),
    ("occiput", (0.0, 0.2, -1.0), 30.0, 6.0, 4.0),
)
_PAIRS = {
    "eye_sockets": ((0.33, 0.16, 0.93), (-0.33, 0.16, 0.93)),
    "cheeks": ((0.45, -0.15, 0.88), (-0.45, -0.15, 0.88)),
    "ears": ((1.0, 0.0, -0.05), (-1.0, 0.0, -0.05)),
    "jaw": ((0.6, -0.55, 0.5), (-0.6, -0.55, 0.5)),
}
_RADII = np.array([74.0, 112.0, 96.0])  # half width, half height, half depth (mm)
_AXIS_SD = np.array([4.5, 6.0, 5.0])

_LANDMARKS = {
    "right_eye_outer": (-0.52, 0.17, 0.85), "right_eye_inner": (-0.16, 0.15, 0.98),
    "left_eye_inner": (0.16, 0.15, 0.98), "left_eye_outer": (0.52, 0.17, 0.85),
    "nose_tip": (0.0, -0.05, 1.0), "right_mouth_corner": (-0.22, -0.34, 0.95),
    "left_mouth_corner": (0.22, -0.34, 0.95), "chin": (0.0, -0.62, 0.8),
    "right_ear": (-1.0, 0.0, -0.05), "left_ear": (1.0, 0.0, -0.05),
}


def make_generator(n_lat: int = 40, n_lon: int = 64, max_polar_deg: float = 140.0) -> HeadGenerator:
    """The synthetic head population (about ``n_lat * n_lon`` vertices, 13 parameters)."""
    u, tris = _directions(n_lat, n_lon, max_polar_deg)
    radial = u * _RADII  # ellipsoid surface points; displacements along the ellipsoid normal
    normal = u / _RADII
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    base_disp = np.zeros(len(u))
    fields, names = [], []
    for name, centre, width, height, sd in _FEATURES:
        if centre is None:
            a, b = _PAIRS[name]
            shape = _bump(u, a, width) + _bump(u, b, width)
        else:
            shape = _bump(u, centre, width)
        base_disp += height * shape
        fields.append(sd * shape[:, None] * normal)
        names.append(name)
    for axis, label in enumerate(("width", "height", "depth")):
        f = np.zeros_like(radial)
        f[:, axis] = u[:, axis] * _AXIS_SD[axis]
        fields.append(f)
        names.append(label)
    # an asymmetric mode (faces are not perfectly symmetric)
    fields.append(2.0 * (_bump(u, (0.4, -0.2, 0.9), 15) - _bump(u, (-0.4, -0.2, 0.9), 15))[:, None] * normal)
    names.append("asymmetry")
    mean = radial + base_disp[:, None] * normal
    landmarks = {k: int(np.argmax(u @ _unit(v))) for k, v in _LANDMARKS.items()}
    face = np.flatnonzero(np.arccos(np.clip(u @ np.array([0, -0.1, 1.0]) / np.linalg.norm([0, -0.1, 1.0]),
                                            -1, 1)) < np.deg2rad(60))
    return HeadGenerator(mean, np.stack(fields), tris, landmarks, {"face": face}, tuple(names))


def random_rigid(n: int, rng: np.random.Generator, max_angle_deg: float = 20.0,
                 max_shift_mm: float = 40.0):
    """n random rotations (about random axes, up to ``max_angle_deg``) and shifts."""
    axes = rng.standard_normal((n, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    ang = np.deg2rad(rng.uniform(-max_angle_deg, max_angle_deg, n))
    k = np.zeros((n, 3, 3))
    k[:, 0, 1], k[:, 0, 2], k[:, 1, 2] = -axes[:, 2], axes[:, 1], -axes[:, 0]
    k = k - k.transpose(0, 2, 1)
    r = np.eye(3) + np.sin(ang)[:, None, None] * k + (1 - np.cos(ang))[:, None, None] * (k @ k)
    t = rng.uniform(-max_shift_mm, max_shift_mm, (n, 3))
    return r, t


def sample_heads(gen: HeadGenerator, n: int, seed: int | np.random.Generator | None = 0,
                 pose: bool = True, noise_mm: float = 0.0):
    """Draw n registered heads.

    Returns ``(vertices (n, N, 3) mm, params (n, K))``: each head posed by a random rigid
    transform when ``pose`` (as registered scans come), plus isotropic vertex noise.
    """
    rng = np.random.default_rng(seed)
    params = rng.standard_normal((n, gen.fields.shape[0]))
    v = gen.heads(params)
    if pose:
        r, t = random_rigid(n, rng)
        v = np.einsum("bij,bnj->bni", r, v) + t[:, None]
    if noise_mm > 0:
        v = v + rng.normal(0, noise_mm, v.shape)
    return v, params
