"""Fusion: precision weighting, robustness to a degraded source, UV map sampling."""

import numpy as np
import pytest

from ssm.fusion.fuse import GeometrySource, fuse
from ssm.fusion.uv_maps import bake_to_map, sample_to_vertices


def _truth(n=None, seed=0):
    """A smooth surface (sphere of radius 100 mm, ~2.6k vertices) and its triangles."""
    import trimesh

    m = trimesh.creation.icosphere(4, radius=100.0)
    return np.asarray(m.vertices), np.asarray(m.faces)


def _err(x, t):
    return float(np.linalg.norm(x - t, axis=1).mean())


def test_two_honest_sources_beat_each_alone():
    t, _ = _truth()
    rng = np.random.default_rng(1)
    a = t + rng.normal(0, 0.5, t.shape)
    b = t + rng.normal(0, 0.5, t.shape)
    var = np.full(len(t), 3 * 0.25)
    res = fuse([GeometrySource("a", a, var), GeometrySource("b", b, var)], align=False)
    assert _err(res.vertices, t) < 0.8 * min(_err(a, t), _err(b, t))
    assert abs(np.median(res.variance) / (var[0] / 2) - 1) < 0.1


def test_degraded_source_is_down_weighted_automatically():
    t, tri = _truth()
    rng = np.random.default_rng(2)
    good = t + rng.normal(0, 0.3, t.shape)
    bad = t + rng.normal(0, 2.0, t.shape)  # degraded, but claims the same variance
    var = np.full(len(t), 3 * 0.09)
    res = fuse([GeometrySource("good", good, var), GeometrySource("bad", bad, var)], align=False, triangles=tri)
    plain = 0.5 * (good + bad)
    assert _err(res.vertices, t) < _err(plain, t)
    assert _err(res.vertices, t) < 1.1 * _err(good, t)
    assert res.inflation[1] > 10 * res.inflation[0]


def test_outlier_vertices_are_gated_and_missing_vertices_ignored():
    t, _ = _truth()
    rng = np.random.default_rng(3)
    a = t + rng.normal(0, 0.3, t.shape)
    b = t + rng.normal(0, 0.3, t.shape)
    c = t + rng.normal(0, 0.3, t.shape)
    c[:50] += 40.0  # a bad patch in one source
    b[100:200] = np.nan  # b says nothing there
    var = np.full(len(t), 0.27)
    res = fuse([GeometrySource(n, x, var) for n, x in (("a", a), ("b", b), ("c", c))], align=False)
    assert _err(res.vertices[:50], t[:50]) < 0.6
    assert np.isfinite(res.vertices).all()


def test_a_source_in_another_frame_is_aligned_and_one_within_its_noise_is_not():
    """A source in other units and pose is brought onto the first (the vertices'
    correspondence gives the similarity); one whose frame differs by less than the
    sources' noise is left where it is (its difference is error, not frame)."""
    from scipy.spatial.transform import Rotation

    t, tri = _truth()
    rng = np.random.default_rng(4)
    a = t + rng.normal(0, 0.3, t.shape)
    b = t + rng.normal(0, 0.3, t.shape)
    var = np.full(len(t), 0.27)
    r = Rotation.from_rotvec([0.3, -0.5, 0.2]).as_matrix()
    b_cm = 0.1 * b @ r.T + [5.0, -3.0, 20.0]  # centimetres, turned and moved
    res = fuse([GeometrySource("a", a, var), GeometrySource("b", b_cm, var)], triangles=tri)
    assert res.aligned == (False, True)
    assert _err(res.vertices, t) < 0.8 * _err(a, t)
    tilt = Rotation.from_rotvec([0.0, 0.002, 0.0]).as_matrix()  # 0.1 degree: 0.2 mm at the rim
    res = fuse([GeometrySource("a", a, var), GeometrySource("b", b @ tilt.T, var)], triangles=tri)
    assert res.aligned == (False, False)
    assert res.summary()["sources"][1]["aligned"] is False


def test_uv_bake_and_sample_round_trip():
    # a square of two triangles with a seam-free UV layout
    verts = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], float)
    tris = np.array([[0, 1, 2], [0, 2, 3]])
    uv = np.array([[0.05, 0.05], [0.95, 0.05], [0.95, 0.95], [0.05, 0.95]])
    values = np.array([[1.0], [2.0], [3.0], [4.0]])
    img = bake_to_map(values, uv, tris, tris, (64, 64))
    back = sample_to_vertices(img, uv, tris, tris, 4)
    np.testing.assert_allclose(back[:, 0], values[:, 0], atol=0.08)


@pytest.mark.slow
def test_fusing_two_noisy_fits_of_one_subject(tmp_path):
    """Two independent scans of one held-out ICT subject: fused beats each, and beats the
    plain average when one scan is degraded."""
    from conftest import shared_file

    from ssm.fitting.fit import fit
    from ssm.io.corpus import write_corpus
    from ssm.synthetic.ict_cases import heldout_case, load_ict, subjects
    from ssm.training.trainer import ModelTrainer

    ict = load_ict(shared_file("ict_head/ict_head.npz"))
    write_corpus(tmp_path / "c.h5", subjects(ict, 150, seed=1), ict.triangles, landmarks=ict.landmark_names)
    model = ModelTrainer(None, device="cpu").fit(tmp_path / "c.h5").model_
    nf = ict.narrow_face
    srcs, errs = [], []
    for i, noise in enumerate((0.3, 1.5)):  # the second scan is much noisier
        case = heldout_case(ict, 7, views="frontal", landmarks="68", noise_mm=noise)
        case = type(case)(case.truth, case.scan, case.landmarks)
        res = fit(model, (case.scan.vertices, case.scan.faces), landmarks=case.landmarks)
        est = case.scan.to_scan.inverse().apply(res.vertices)  # the truth's frame
        srcs.append(GeometrySource(f"scan{i}", est, res.stddev_mm ** 2))
        errs.append(np.linalg.norm(est - case.truth, axis=1)[:nf].mean())
        truth = case.truth
    fused = fuse(srcs, align=False, triangles=ict.triangles)
    e_fused = np.linalg.norm(fused.vertices - truth, axis=1)[:nf].mean()
    e_plain = np.linalg.norm(0.5 * (srcs[0].vertices + srcs[1].vertices) - truth, axis=1)[:nf].mean()
    assert e_fused < e_plain, (e_fused, e_plain, errs)
    assert e_fused < max(errs), (e_fused, errs)


def test_fuse_cli_on_fits_and_a_position_map(tmp_path):
    """Two fit folders (as 'ssm fit' writes them) and a UV position map, fused from the CLI."""
    import json

    import trimesh
    from typer.testing import CliRunner

    from ssm.cli.app import app
    from ssm.io.meshes import write_mesh
    from ssm.io.model_file import save_model
    from ssm.models.shape_model import ShapeModel

    sphere = trimesh.creation.icosphere(4, radius=100.0)
    v, f = np.asarray(sphere.vertices), np.asarray(sphere.faces)
    # a UV layout: spherical angles (one chart; seams do not matter for the test)
    uv = np.stack([(np.arctan2(v[:, 1], v[:, 0]) / (2 * np.pi)) % 1.0, 0.5 + v[:, 2] / 200.0], 1) * 0.9 + 0.05
    model = ShapeModel(v, np.zeros((3 * len(v), 0)), np.zeros(0), 0.0, triangles=f, uv=uv, triangle_uvs=f)
    save_model(model, tmp_path / "m.h5")
    rng = np.random.default_rng(0)
    for name, noise in (("fit_a", 0.3), ("fit_b", 0.3)):
        d = tmp_path / name
        d.mkdir()
        write_mesh(d / "fit_model_frame.ply", v + rng.normal(0, noise, v.shape), f,
                   {"stddev_mm": np.full(len(v), np.sqrt(3) * noise)})
        (d / "fit.json").write_text(json.dumps({"model": str(tmp_path / "m.h5")}))
    from ssm.fusion.uv_maps import bake_to_map

    pos = bake_to_map(v + rng.normal(0, 0.3, v.shape), uv, f, f, (512, 512))
    np.save(tmp_path / "pos.npy", pos)
    np.save(tmp_path / "var.npy", np.full(pos.shape[:2], 0.27))
    from ssm.geometry.mesh_ops import vertex_normals

    nmap = bake_to_map(vertex_normals(v, f), uv, f, f, (512, 512))
    np.save(tmp_path / "n.npy", nmap)
    np.save(tmp_path / "nvar.npy", np.full(nmap.shape[:2], 1e-2))
    res = CliRunner().invoke(app, ["fuse", str(tmp_path / "fit_a"), str(tmp_path / "fit_b"),
                                   "--map", f"{tmp_path / 'pos.npy'}:{tmp_path / 'var.npy'}",
                                   "--normal-map", f"{tmp_path / 'n.npy'}:{tmp_path / 'nvar.npy'}",
                                   "--out", str(tmp_path / "fused"), "--smooth", "0"])
    assert res.exit_code == 0, res.output
    fused = trimesh.load(tmp_path / "fused" / "fused.ply", process=False)
    err = np.linalg.norm(np.asarray(fused.vertices) - v, axis=1).mean()
    assert err < 0.4, err  # three sources of 0.3 mm noise each (mean error of one ~0.48 mm)
    summary = json.loads((tmp_path / "fused" / "fused.json").read_text())
    assert [s["name"] for s in summary["sources"]] == ["fit_a", "fit_b", "pos"]


def test_normal_map_term_removes_bumps_the_positions_do_not_see():
    from ssm.fusion.fuse import refine_with_normals
    from ssm.geometry.mesh_ops import vertex_normals

    t, tri = _truth()
    rng = np.random.default_rng(5)
    noisy = t + rng.normal(0, 0.5, t.shape)
    var = np.full(len(t), 3 * 0.25)
    true_n = vertex_normals(t, tri)
    out = refine_with_normals(noisy, var, tri, true_n, normal_variance=1e-4)
    assert _err(out, t) < 0.6 * _err(noisy, t)
    # no normals: nothing changes
    np.testing.assert_allclose(refine_with_normals(noisy, var, tri, np.full_like(t, np.nan)), noisy, atol=1e-9)


def test_depth_map_source_measures_the_seen_side():
    from ssm.fusion.fuse import source_from_depth_map

    t, tri = _truth()
    k = np.array([[800.0, 0, 320], [0, 800.0, 240], [0, 0, 1]])
    cam = np.eye(4)
    cam[:3, 3] = [0, 0, -600.0]  # camera 600 mm in front of the sphere, looking along +z
    # render a depth map of the true sphere analytically
    rows, cols = np.mgrid[0:480, 0:640]
    dirs = np.stack([(cols - 320) / 800.0, (rows - 240) / 800.0, np.ones_like(cols, float)], -1)
    dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True)
    o = np.array([0, 0, -600.0])
    b = (dirs @ o)
    disc = b ** 2 - (o @ o - 100.0 ** 2)
    dist = -b - np.sqrt(np.where(disc > 0, disc, np.nan))
    depth = dist * dirs[..., 2]
    base = t * 1.01  # a slightly wrong estimate
    src = source_from_depth_map(base, tri, depth, np.full(depth.shape, 0.01), k, cam)
    seen = np.isfinite(src.variance)
    assert 0.2 < seen.mean() < 0.5  # the side facing the camera, less the grazing rim
    err = np.linalg.norm(src.vertices[seen], axis=1) - 100.0  # measured points lie on the true sphere
    assert np.abs(err).max() < 0.05
    assert (t[seen, 2] < 0).all()  # only the near side


def test_fuse_cli_with_a_depth_map(tmp_path):
    import json

    import trimesh
    from typer.testing import CliRunner

    from ssm.cli.app import app
    from ssm.io.meshes import write_mesh
    from ssm.io.model_file import save_model
    from ssm.models.shape_model import ShapeModel

    t, tri = _truth()
    save_model(ShapeModel(t, np.zeros((3 * len(t), 0)), np.zeros(0), 0.0, triangles=tri), tmp_path / "m.h5")
    d = tmp_path / "fit_a"
    d.mkdir()
    rng = np.random.default_rng(0)
    write_mesh(d / "fit_model_frame.ply", t + rng.normal(0, 0.5, t.shape), tri, {"stddev_mm": np.full(len(t), 0.87)})
    (d / "fit.json").write_text(json.dumps({"model": str(tmp_path / "m.h5")}))
    k = np.array([[800.0, 0, 320], [0, 800.0, 240], [0, 0, 1]])
    cam = np.eye(4)
    cam[:3, 3] = [0, 0, -600.0]
    rows, cols = np.mgrid[0:480, 0:640]
    dirs = np.stack([(cols - 320) / 800.0, (rows - 240) / 800.0, np.ones_like(cols, float)], -1)
    dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True)
    o = np.array([0, 0, -600.0])
    b = dirs @ o
    disc = b ** 2 - (o @ o - 100.0 ** 2)
    depth = (-b - np.sqrt(np.where(disc > 0, disc, np.nan))) * dirs[..., 2]
    np.save(tmp_path / "d.npy", depth)
    np.save(tmp_path / "dv.npy", np.full(depth.shape, 0.01))
    np.savetxt(tmp_path / "K.txt", k)
    np.savetxt(tmp_path / "pose.txt", cam)
    spec = ":".join(str(tmp_path / f) for f in ("d.npy", "dv.npy", "K.txt", "pose.txt"))
    res = CliRunner().invoke(app, ["fuse", str(d), "--depth-map", spec, "--out", str(tmp_path / "out"),
                                   "--smooth", "0"])
    assert res.exit_code == 0, res.output
    fused = np.asarray(trimesh.load(tmp_path / "out" / "fused.ply", process=False).vertices)
    near = t[:, 2] < -60  # seen by the camera: the precise depth wins there
    err = np.abs(np.linalg.norm(fused, axis=1) - 100.0)
    assert err[near].mean() < 0.1 < err[~near].mean()
