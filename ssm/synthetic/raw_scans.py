"""Turn a mesh with known correspondence into a raw-looking scan, as scanners make them.

The surface is seen by one or more pinhole range cameras (ray casting), each range image
is re-triangulated on its pixel grid (so the topology is new), noise is added along the
viewing ray, holes are punched, outliers are sprinkled, and the result is moved by a
random similarity transform and written in other units. The ground truth (the transform
and the true surface) is returned so fits can be scored per vertex.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ssm.geometry.similarity import Similarity


@dataclass(frozen=True)
class RawScan:
    """A simulated scan.

    vertices : (P, 3) float64, scan frame and units; faces : (F, 3) int64 (may be empty).
    to_scan : Similarity taking the true mesh's frame (mm) to the scan frame (incl. units).
    units_per_mm : scan units per mm (e.g. 0.1 for cm).
    """

    vertices: np.ndarray
    faces: np.ndarray
    to_scan: Similarity
    units_per_mm: float


def _look_at(eye: np.ndarray, target: np.ndarray, up=(0.0, 1.0, 0.0)) -> np.ndarray:
    f = target - eye
    f /= np.linalg.norm(f)
    r = np.cross(f, up)
    r /= np.linalg.norm(r)
    u = np.cross(r, f)
    return np.stack([r, u, f])  # rows: camera x, y, z (z = viewing direction)


def range_scan(vertices: np.ndarray, triangles: np.ndarray, eye: np.ndarray, target: np.ndarray,
               spacing_mm: float = 0.8, noise_mm: float = 0.3, fov_mm: float = 320.0,
               max_angle_deg: float = 80.0, rng: np.random.Generator | None = None):
    """One orthographic-ish range image of the mesh seen from ``eye``: (points, faces).

    Pixels are ``spacing_mm`` apart on the target plane; rays are cast from ``eye`` through
    them (perspective). Grazing hits (angle > max_angle_deg) are dropped like a scanner does.
    """
    import open3d as o3d

    rng = np.random.default_rng() if rng is None else rng
    scene = o3d.t.geometry.RaycastingScene()
    mesh = o3d.t.geometry.TriangleMesh()
    mesh.vertex.positions = o3d.core.Tensor(np.ascontiguousarray(vertices, np.float32))
    mesh.triangle.indices = o3d.core.Tensor(np.ascontiguousarray(triangles, np.int32))
    scene.add_triangles(mesh)
    rot = _look_at(np.asarray(eye, float), np.asarray(target, float))
    n = int(fov_mm / spacing_mm)
    g = (np.arange(n) - n / 2) * spacing_mm
    gx, gy = np.meshgrid(g, g[::-1])
    pix = np.asarray(target) + gx[..., None] * rot[0] + gy[..., None] * rot[1]
    dirs = pix - eye
    dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True)
    rays = np.concatenate([np.broadcast_to(eye, dirs.shape), dirs], -1).reshape(-1, 6).astype(np.float32)
    ans = scene.cast_rays(o3d.core.Tensor(rays))
    t = ans["t_hit"].numpy().reshape(n, n).astype(np.float64)
    normals = ans["primitive_normals"].numpy().reshape(n, n, 3)
    cosang = np.abs((normals * dirs).sum(-1))
    ok = np.isfinite(t) & (cosang > np.cos(np.deg2rad(max_angle_deg)))
    t = np.where(ok, t + rng.normal(0, noise_mm, t.shape), np.inf)  # noise along the ray
    pts = eye + dirs[ok] * t[ok][:, None]
    idx = -np.ones((n, n), dtype=np.int64)
    idx[ok] = np.arange(ok.sum())
    a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, :-1], idx[1:, 1:]
    with np.errstate(invalid="ignore"):
        depth_ok = np.abs(np.diff(t, axis=0))[:, :-1] < 5 * spacing_mm + 10 * noise_mm
    faces = []
    for tri, extra in (((a, c, b), depth_ok), ((b, c, d), depth_ok)):
        m = (tri[0] >= 0) & (tri[1] >= 0) & (tri[2] >= 0) & extra
        faces.append(np.stack([x[m] for x in tri], -1))
    return pts, np.concatenate(faces)


def punch_holes(points: np.ndarray, faces: np.ndarray, n_holes: int, radius_mm: float,
                rng: np.random.Generator):
    """Remove points within ``radius_mm`` of ``n_holes`` random points (and their faces)."""
    keep = np.ones(len(points), bool)
    for c in points[rng.choice(len(points), n_holes, replace=False)]:
        keep &= np.linalg.norm(points - c, axis=1) > radius_mm
    remap = -np.ones(len(points), np.int64)
    remap[keep] = np.arange(keep.sum())
    f = remap[faces]
    return points[keep], f[(f >= 0).all(1)]


def make_raw_scan(vertices: np.ndarray, triangles: np.ndarray, views: str | float = "frontal",
                  spacing_mm: float = 0.8, noise_mm: float = 0.3, n_holes: int = 3,
                  hole_radius_mm: float = 6.0, outlier_fraction: float = 0.01,
                  units: str = "mm", pose: bool = True, seed: int = 0, fov_mm: float = 320.0) -> RawScan:
    """Simulate a raw scan of a head mesh (mm, face looking along +z, y up).

    views : "frontal" (one camera in front), "three" (front, left and right, merged) or
        a number: one camera turned by that many degrees about the vertical axis (45: a
        three-quarter view, 90: a profile).
    units : scan units ("mm", "cm", "m"); pose: apply a random similarity-free rigid
        transform (the unit change is the scale); fov_mm : each range image's width and
        height at the mesh's centre (320: a head; 560: head and shoulders).
    """
    from ssm.units import mm_per_unit

    rng = np.random.default_rng(seed)
    centre = vertices.mean(0)

    def camera(yaw_deg: float) -> np.ndarray:  # 600 mm from the centre, turned about y
        a = np.deg2rad(yaw_deg)
        return centre + 600.0 * np.array([np.sin(a), 0.0, np.cos(a)])

    if views == "frontal":
        eyes = [camera(0.0)]
    elif views == "three":
        eyes = [camera(0.0), camera(-60.0), camera(60.0)]
    else:
        try:
            eyes = [camera(float(views))]
        except (TypeError, ValueError):
            raise ValueError(f"views must be 'frontal', 'three' or an angle in degrees, got {views!r}") from None
    pts_all, faces_all, off = [], [], 0
    for eye in eyes:
        p, f = range_scan(vertices, triangles, eye, centre, spacing_mm, noise_mm, fov_mm, rng=rng)
        pts_all.append(p)
        faces_all.append(f + off)
        off += len(p)
    pts, faces = np.concatenate(pts_all), np.concatenate(faces_all)
    if n_holes:
        pts, faces = punch_holes(pts, faces, n_holes, hole_radius_mm, rng)
    n_out = int(round(outlier_fraction * len(pts)))
    if n_out:
        lo, hi = pts.min(0) - 30, pts.max(0) + 30
        pts = np.concatenate([pts, rng.uniform(lo, hi, (n_out, 3))])  # isolated stray points
    if pose:
        from ssm.synthetic.heads import random_rigid

        r, t = random_rigid(1, rng, max_angle_deg=180.0, max_shift_mm=300.0)
        rot, shift = r[0], t[0]
    else:
        rot, shift = np.eye(3), np.zeros(3)
    upm = 1.0 / mm_per_unit(units)
    sim = Similarity(upm, rot, shift * upm)
    return RawScan(sim.apply(pts), faces, sim, upm)
