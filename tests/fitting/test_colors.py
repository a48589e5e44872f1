"""Scan colours: read from files, carried onto the fit, baked into a UV layout."""

import numpy as np
import pytest

from ssm.fitting.outputs.colors import harmonic_fill, scan_colors_at, vertex_colors
from ssm.fitting.prepare.scan import load_scan, scan_from_arrays
from ssm.fusion.uv_maps import bake_to_map, rasterise_uv
from ssm.io.meshes import read_mesh


def _grid(n=20, spacing=1.0):
    """A flat (n x n)-vertex grid in the z = 0 plane, two triangles per square."""
    ii, jj = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    v = np.stack([ii.ravel() * spacing, jj.ravel() * spacing, np.zeros(n * n)], 1).astype(float)
    a = (ii[:-1, :-1] * n + jj[:-1, :-1]).ravel()
    f = np.concatenate([np.stack([a, a + n, a + n + 1], 1), np.stack([a, a + n + 1, a + 1], 1)])
    return v, f


def _ramp(p):
    """A colour that changes linearly with position (x, y), in [0, 1] on the test grids."""
    return np.stack([0.1 + 0.02 * p[:, 0], 0.9 - 0.03 * p[:, 1], np.full(len(p), 0.5)], 1)


def test_rasterise_uv_finds_exactly_the_pixel_centres_inside_each_triangle():
    rng = np.random.default_rng(0)
    uv = rng.uniform([0.0, 0.0], [2.0, 1.0], (30, 2))  # two unit tiles side by side
    tuv = rng.integers(0, 30, (12, 3))
    h, w = 37, 74
    pix, tri, bary = rasterise_uv(uv, tuv, (h, w))
    cols, rows = np.meshgrid(np.arange(w), np.arange(h))
    centres = np.stack([(cols.ravel() + 0.5) / w * 2.0, 1.0 - (rows.ravel() + 0.5) / h], 1)
    expect = {}
    for t, (a, b, c) in enumerate(uv[tuv]):  # brute force: every pixel against every triangle
        m = np.stack([b - a, c - a], 1)
        if abs(np.linalg.det(m)) < 1e-12:
            continue
        l12 = np.linalg.solve(m, (centres - a).T).T
        inside = (l12 >= -1e-9).all(1) & (l12.sum(1) <= 1 + 1e-9)
        for p in np.flatnonzero(inside):
            expect.setdefault(p, t)  # the first triangle wins a shared pixel
    assert sorted(expect) == list(pix)
    assert [expect[p] for p in pix] == list(tri)
    np.testing.assert_allclose(bary.sum(1), 1.0)
    # the barycentric blend of the corners' uv is the pixel centre itself
    np.testing.assert_allclose(np.einsum("pk,pkd->pd", bary, uv[tuv[tri]]), centres[pix], atol=1e-9)
    vals = bake_to_map(uv, uv, tuv, tuv, (h, w)).reshape(-1, 2)
    np.testing.assert_allclose(vals[pix], centres[pix], atol=1e-9)
    assert np.isnan(np.delete(vals, pix, axis=0)).all()


def test_harmonic_fill_reproduces_a_linear_ramp_from_the_border():
    v, f = _grid()
    border = (v[:, 0] == 0) | (v[:, 1] == 0) | (v[:, 0] == 19) | (v[:, 1] == 19)
    truth = _ramp(v)
    vals = np.where(border[:, None], truth, np.nan)
    np.testing.assert_allclose(harmonic_fill(vals, border, f), truth, atol=1e-4)


def test_fit_vertices_take_the_scan_colour_and_unseen_ones_are_filled():
    v, f = _grid(30, 0.5)  # 14.5 x 14.5 scan units
    scan = scan_from_arrays(v, f, colors=_ramp(v))
    fit_v, fit_f = _grid(12, 1.6)  # a coarser "fit" over the same square and beyond it
    fit_v[:, 2] += 0.1  # 0.1 above the scan
    rgb, seen = scan_colors_at(fit_v, scan, 1.0)
    inside = (fit_v[:, :2] <= 14.5).all(1)
    assert (seen == inside).all()
    np.testing.assert_allclose(rgb[seen], _ramp(fit_v[seen]), atol=0.01)  # IDW of a linear ramp
    full = vertex_colors(fit_v, scan, fit_f, 1.0)
    assert full.dtype == np.float32 and np.isfinite(full).all()
    np.testing.assert_allclose(full[seen], rgb[seen], atol=1e-6)
    # beyond the scan the fill continues smoothly: within the range the border holds
    assert full[~seen].min() >= rgb[seen].min() - 1e-6 and full[~seen].max() <= rgb[seen].max() + 1e-6
    assert vertex_colors(fit_v, scan_from_arrays(v, f), fit_f, 1.0) is None  # no colours: none


def test_stray_points_lend_no_colour():
    v, f = _grid(30, 0.5)
    stray = np.array([[7.0, 7.0, 30.0]])  # an outlier far above the scan, in pure red
    scan = scan_from_arrays(np.vstack([v, stray]), f, colors=np.vstack([_ramp(v), [[1.0, 0.0, 0.0]]]))
    rgb, seen = scan_colors_at(stray + [0.0, 0.0, 0.2], scan, 1.0)
    assert not seen.any()


def _sphere_points(n=500):
    p = np.random.default_rng(1).normal(size=(n, 3))
    return 80.0 * p / np.linalg.norm(p, axis=1, keepdims=True)


@pytest.mark.parametrize("kind", ["xyz rgb", "xyz normals rgb", "leica pts", "ply cloud", "pcd"])
def test_cloud_colours_are_read(tmp_path, kind):
    p = _sphere_points()
    rgb8 = np.random.default_rng(2).integers(0, 256, (len(p), 3))
    n = p / 80.0
    if kind == "xyz rgb":
        path = tmp_path / "c.xyz"
        np.savetxt(path, np.hstack([p, rgb8]), fmt="%.6f %.6f %.6f %d %d %d")
    elif kind == "xyz normals rgb":
        path = tmp_path / "c.xyz"
        np.savetxt(path, np.hstack([p, n, rgb8 / 255.0]), fmt="%.6f")
    elif kind == "leica pts":
        path = tmp_path / "c.pts"
        rows = np.hstack([p, np.full((len(p), 1), -1200), rgb8])
        path.write_text(f"{len(p)}\n" + "".join(" ".join(f"{c:g}" for c in r) + "\n" for r in rows))
    elif kind == "ply cloud":
        import trimesh

        path = tmp_path / "c.ply"
        trimesh.PointCloud(p, colors=np.hstack([rgb8, np.full((len(p), 1), 255)]).astype(np.uint8)).export(path)
    else:
        o3d = pytest.importorskip("open3d")
        path = tmp_path / "c.pcd"
        pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(p))
        pc.colors = o3d.utility.Vector3dVector(rgb8 / 255.0)
        o3d.io.write_point_cloud(str(path), pc)
    data = read_mesh(path, allow_points=True, colors=True)
    np.testing.assert_allclose(data.colors, rgb8 / 255.0, atol=1e-5)
    if kind == "xyz normals rgb":
        np.testing.assert_allclose(data.normals, n, atol=1e-5)


def test_mesh_colours_survive_welding_and_textures_are_sampled(tmp_path):
    import trimesh
    from PIL import Image

    v, f = _grid(12, 2.0)
    v[:, 2] = 0.01 * ((v[:, :2] - 11.0) ** 2).sum(1)  # a bowl: not flat, not degenerate
    # per-vertex colours on a mesh written with every corner its own vertex (as STL does)
    corners = v[f.ravel()]
    path = tmp_path / "split.ply"
    trimesh.Trimesh(corners, np.arange(len(corners)).reshape(-1, 3), process=False,
                    vertex_colors=(255 * _ramp(corners)).astype(np.uint8)).export(path)
    scan = load_scan(path)
    assert len(scan.points) == len(v)  # welded
    np.testing.assert_allclose(scan.colors, _ramp(scan.points), atol=1 / 255)
    # a texture (OBJ, GLB): kept whole, and each vertex reads the texel under its uv
    from ssm.fitting.outputs.colors import texture_colors_at

    uv = (v[:, :2] - v[:, :2].min(0)) / np.ptp(v[:, :2], axis=0) * 0.8 + 0.1
    img = np.zeros((64, 64, 3), np.uint8)
    img[:, :32] = (200, 30, 30)  # left half red, right half blue
    img[:, 32:] = (30, 30, 200)
    mesh = trimesh.Trimesh(v, f, process=False,
                           visual=trimesh.visual.TextureVisuals(uv=uv, image=Image.fromarray(img)))
    left = uv[:, 0] < 0.45
    right = uv[:, 0] > 0.55
    for name in ("tex.obj", "tex.glb"):
        mesh.export(tmp_path / name)
        data = read_mesh(tmp_path / name, colors=True)
        assert data.colors is None and data.texture.image.shape == (64, 64, 3)
        c, seen = texture_colors_at(v, data.texture, 1e-3)
        assert seen.all()
        np.testing.assert_allclose(c[left], np.tile([200, 30, 30], (left.sum(), 1)) / 255, atol=1e-6)
        np.testing.assert_allclose(c[right], np.tile([30, 30, 200], (right.sum(), 1)) / 255, atol=1e-6)


def test_a_textured_scan_gives_the_fit_its_texture_at_full_resolution(tmp_path):
    """A coarse scan (a 6 x 6 grid) with a fine checkerboard texture: per-vertex colours
    cannot hold the checks, the texture baked from the scan's own texels does."""
    import trimesh
    from PIL import Image

    from ssm.fitting.outputs.colors import bake_texture

    v, f = _grid(6, 20.0)  # 100 x 100 scan units
    uv = v[:, :2] / 100.0
    checks = ((np.arange(256)[:, None] // 16 + np.arange(256)[None] // 16) % 2).astype(np.uint8)
    img = np.stack([255 * checks, 255 * (1 - checks), np.full_like(checks, 128)], 2)
    trimesh.Trimesh(v, f, process=False,
                    visual=trimesh.visual.TextureVisuals(uv=uv, image=Image.fromarray(img))).export(tmp_path / "s.obj")
    scan = load_scan(tmp_path / "s.obj")
    assert scan.texture is not None and scan.texture.image.shape == (256, 256, 3)
    fit_v, fit_f = _grid(11, 10.0)  # the "fit": a finer grid 0.5 above the scan, the same UV mapping
    fit_v[:, 2] = 0.5
    fit_uv = fit_v[:, :2] / 100.0
    rgb = vertex_colors(fit_v, scan, fit_f, 3.0)
    tex = bake_texture(fit_v, fit_f, fit_uv, fit_f, scan, rgb, 256, 3.0).astype(float)
    inner = (slice(8, 248), slice(8, 248))  # away from the checks' edges at the border
    np.testing.assert_allclose(np.median(np.abs(tex[inner] - img[inner])), 0.0, atol=1.0)
    assert np.mean(np.abs(tex[inner] - img[inner]) < 8) > 0.9  # all but the checks' edges
    # without the texture (only the colours sampled at the scan's 36 vertices): a blur
    plain = bake_texture(fit_v, fit_f, fit_uv, fit_f, scan_from_arrays(scan.points, scan.faces, colors=scan.colors),
                         rgb, 256, 3.0).astype(float)
    assert np.mean(np.abs(plain[inner] - img[inner]) < 8) < 0.5


def test_obj_texture_coordinates_per_corner_keep_their_charts_across_a_seam(tmp_path):
    """An OBJ whose texture coordinates are indexed per corner (``f v/vt``), two charts
    meeting at a seam down the middle of the mesh: every triangle samples its own chart
    (read in vertex order, the seam's vertices would keep one chart's coordinate)."""
    from PIL import Image

    from ssm.fitting.outputs.colors import texture_colors_at

    v, f = _grid(6, 20.0)
    v[:, 2] = 0.01 * ((v[:, :2] - 50.0) ** 2).sum(1)
    right = v[f].mean(1)[:, 0] > 50.0  # faces of the right chart
    corner_uv = v[f.ravel(), :2] / 100.0 * [0.4, 1.0]  # left chart: u in [0, 0.4]
    corner_uv[np.repeat(right, 3), 0] += 0.6  # right chart: u in [0.6, 1]
    img = np.zeros((8, 8, 3), np.uint8)
    img[:, :4] = (220, 20, 20)
    img[:, 4:] = (20, 20, 220)
    Image.fromarray(img).save(tmp_path / "t.png")
    (tmp_path / "t.mtl").write_text("newmtl skin\nmap_Kd t.png\n")
    lines = ["mtllib t.mtl", "usemtl skin"] + [f"v {x} {y} {z}" for x, y, z in v]
    lines += [f"vt {p} {q}" for p, q in corner_uv]
    lines += [f"f {a + 1}/{3 * i + 1} {b + 1}/{3 * i + 2} {c + 1}/{3 * i + 3}" for i, (a, b, c) in enumerate(f)]
    (tmp_path / "s.obj").write_text("\n".join(lines) + "\n")
    scan = load_scan(tmp_path / "s.obj")
    assert len(scan.points) == len(v)  # the scan as read, in order
    centres = v[f].mean(1)
    rgb, seen = texture_colors_at(centres, scan.texture, 1.0)
    assert seen.all()
    np.testing.assert_allclose(rgb[~right], np.tile([220, 20, 20], ((~right).sum(), 1)) / 255, atol=1e-6)
    np.testing.assert_allclose(rgb[right], np.tile([20, 20, 220], (right.sum(), 1)) / 255, atol=1e-6)
