"""``ssm fit`` as a user runs it: outputs, errors that do not stop a batch, worker processes,
colours and textures, geometry maps."""


import json

import numpy as np
from conftest import synthetic_case


def test_fit_cli_writes_outputs_and_flags_errors(synth_model, head_generator, tmp_path):
    from typer.testing import CliRunner

    from ssm.cli.app import app
    from ssm.io.meshes import write_mesh
    from ssm.io.model_file import save_model

    save_model(synth_model, tmp_path / "m.h5")
    truth, raw = synthetic_case(head_generator, seed=6, units="mm", views="frontal")
    write_mesh(tmp_path / "a.ply", raw.vertices, raw.faces)
    (tmp_path / "b.ply").write_bytes(b"")  # a bad scan must not stop the others
    np.savetxt(tmp_path / "a.xyz", raw.vertices[::3])  # a point cloud
    names = ["right_eye_outer", "left_eye_outer", "nose_tip", "right_mouth_corner", "left_mouth_corner"]
    pts = raw.to_scan.apply(truth[[head_generator.landmarks[n] for n in names]])
    (tmp_path / "a_lm.csv").write_text("".join(f"{n},{p[0]},{p[1]},{p[2]}\n" for n, p in zip(names, pts)))
    res = CliRunner().invoke(app, ["fit", str(tmp_path / "m.h5"), str(tmp_path / "a.ply"), str(tmp_path / "b.ply"),
                                   str(tmp_path / "a.xyz"), "--out", str(tmp_path / "out"), "--units", "mm",
                                   "--landmarks", str(tmp_path / "{stem}_lm.csv")])
    assert res.exit_code == 2, res.output  # b.ply could not be fitted (an error); the others were
    assert "b.ply: file is empty" in res.output
    face = head_generator.regions["face"]
    # same stem: sub-folders named by the whole file name; a cloud's distances are to
    # its nearest point (sparser than a surface), hence the looser bound
    for sub, limit in (("a_ply", 1.0), ("a_xyz", 1.5)):
        for name in ("fit.ply", "fit_model_frame.ply", "fit.json", "report.png"):
            assert (tmp_path / "out" / sub / name).exists()
        d = json.loads((tmp_path / "out" / sub / "fit.json").read_text())
        assert d["converged"] and d["units"] == "mm" and not d["units_estimated"]
        assert {s["name"] for s in d["stages"]} >= {"landmark_init", "model_fit", "nicp"}
        assert 0.9 <= d["scan_within_2.5mm"] <= 1.0, d["scan_within_2.5mm"]  # the fit covers the scan
        import trimesh

        mesh = trimesh.load(tmp_path / "out" / sub / "fit.ply", process=False)
        assert len(mesh.vertices) == synth_model.n_vertices
        dist = np.asarray(mesh.metadata["_ply_raw"]["vertex"]["data"]["distance_mm"])
        assert np.median(dist[face]) < limit, (sub, np.median(dist[face]))
        # the model's landmarks on the scan: all of them (5 were given), where the fit
        # put them, near the truth, and readable as the next fit's --landmarks
        from ssm.io.landmarks import read_landmark_points

        for suffix in (".csv", ".json"):
            lm = read_landmark_points(tmp_path / "out" / sub / f"landmarks{suffix}")
            assert lm.names == tuple(synth_model.landmarks)
            idx = list(synth_model.landmarks.values())
            np.testing.assert_allclose(lm.points, mesh.vertices[idx])
            err = np.linalg.norm(raw.to_scan.inverse().apply(lm.points) - truth[idx], axis=1)
            assert err.mean() < 1.5, (sub, err)
        assert set(d["fitted_landmarks"]) == set(synth_model.landmarks)
        assert all(v["stddev_mm"] > 0 for v in d["fitted_landmarks"].values())


def test_fit_cli_goes_on_after_an_unexpected_error(synth_model, head_generator, tmp_path, monkeypatch):
    """A bug met on one scan (not an SSMError) is reported on one line, and the other
    scans are still fitted."""
    from typer.testing import CliRunner

    import ssm.fitting.fit as pipeline
    from ssm.cli.app import app
    from ssm.io.meshes import write_mesh
    from ssm.io.model_file import save_model

    save_model(synth_model, tmp_path / "m.h5")
    truth, raw = synthetic_case(head_generator, seed=6, units="mm", views="frontal")
    for name in ("boom.ply", "fine.ply"):
        write_mesh(tmp_path / name, raw.vertices, raw.faces)
    real_fit = pipeline.fit

    def fit_or_fail(model, scan, **kw):
        if scan.path.endswith("boom.ply"):
            raise ZeroDivisionError("division by zero")
        return real_fit(model, scan, **kw)

    monkeypatch.setattr(pipeline, "fit", fit_or_fail)
    res = CliRunner().invoke(app, ["fit", str(tmp_path / "m.h5"), str(tmp_path / "boom.ply"),
                                   str(tmp_path / "fine.ply"), "--out", str(tmp_path / "out"), "--units", "mm"])
    assert res.exit_code == 2, res.output  # an error, not a wrong fit
    assert "boom.ply: unexpected ZeroDivisionError: division by zero" in res.output
    assert (tmp_path / "out" / "fine" / "fit.json").exists() and not (tmp_path / "out" / "boom").exists()


def test_fit_cli_jobs_fit_scans_in_worker_processes(synth_model, head_generator, tmp_path):
    """--jobs 2: the same fits as one at a time, a bad scan reported from its worker,
    and the table in the order the scans were given."""
    from typer.testing import CliRunner

    from ssm.cli.app import app
    from ssm.io.meshes import write_mesh
    from ssm.io.model_file import save_model

    save_model(synth_model, tmp_path / "m.h5")
    truth, raw = synthetic_case(head_generator, seed=6, units="mm", views="frontal")
    for name in ("a.ply", "c.ply"):
        write_mesh(tmp_path / name, raw.vertices, raw.faces)
    (tmp_path / "b.ply").write_bytes(b"")
    scans = [str(tmp_path / n) for n in ("a.ply", "b.ply", "c.ply")]
    runs = {}
    for jobs in ("1", "2"):
        res = CliRunner().invoke(app, ["fit", str(tmp_path / "m.h5"), *scans, "--out", str(tmp_path / jobs),
                                       "--units", "mm", "--jobs", jobs])
        assert res.exit_code == 2, res.output  # b.ply: an error
        assert "b.ply: file is empty" in res.output
        assert res.output.index("a.ply") < res.output.index("c.ply")
        runs[jobs] = [json.loads((tmp_path / jobs / s / "fit.json").read_text()) for s in ("a", "c")]
    for one, two in zip(runs["1"], runs["2"]):
        assert two["converged"]
        assert abs(one["distance_to_scan_mm"]["median"] - two["distance_to_scan_mm"]["median"]) < 0.02


def _with_spherical_uv(model):
    """``model`` with a UV layout: spherical angles about its mean's centre, the seam at
    the back (per-corner coordinates, so no vertex is split)."""
    v, tri = model.mean, model.triangles
    c = v - v.mean(0)
    u = 0.5 + np.arctan2(c[:, 0], c[:, 2]) / (2 * np.pi)
    w = 0.5 + np.arcsin(np.clip(c[:, 1] / np.linalg.norm(c, axis=1), -1, 1)) / np.pi
    cu = u[tri]  # per corner: a triangle across the seam takes its low side past 1
    cu = np.where((cu.max(1, keepdims=True) - cu.min(1, keepdims=True) > 0.5) & (cu < 0.5), cu + 1.0, cu)
    uv = np.stack([cu.ravel() / 1.1, w[tri].ravel()], 1) * 0.9 + 0.05
    return model.with_metadata(uv=uv, triangle_uvs=np.arange(3 * len(tri)).reshape(-1, 3))


def test_fit_cli_carries_the_scan_colours_onto_the_fit_and_its_texture(synth_model, head_generator, tmp_path):
    """A coloured scan: fit.ply's vertex colours are the scan's where it saw the head (and
    filled smoothly behind), fit.obj carries the model's UVs and a texture whose texels
    under each seen vertex hold that vertex's colour; --texture 0 bakes none."""
    import trimesh
    from PIL import Image
    from typer.testing import CliRunner

    from ssm.cli.app import app
    from ssm.io.meshes import read_mesh, write_mesh
    from ssm.io.model_file import save_model

    model = _with_spherical_uv(synth_model)
    save_model(model, tmp_path / "m.h5")
    truth, raw = synthetic_case(head_generator, seed=6, units="mm", views="frontal")

    def paint(p_mm):  # a colour that varies smoothly over the head (truth frame, mm)
        return np.clip(np.stack([0.5 + 0.4 * np.sin(p_mm[:, 0] / 25.0), 0.5 + 0.4 * np.cos(p_mm[:, 1] / 30.0),
                                 0.5 + 0.004 * p_mm[:, 2]], 1), 0.0, 1.0)

    colors = paint(raw.to_scan.inverse().apply(raw.vertices))
    write_mesh(tmp_path / "a.ply", raw.vertices, raw.faces, vertex_colors=colors)
    args = ["fit", str(tmp_path / "m.h5"), str(tmp_path / "a.ply"), "--units", "mm"]
    res = CliRunner().invoke(app, args + ["--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    fit_mesh = read_mesh(tmp_path / "out" / "fit.ply", colors=True)
    dist = np.asarray(trimesh.load(tmp_path / "out" / "fit.ply", process=False)
                      .metadata["_ply_raw"]["vertex"]["data"]["distance_mm"])
    seen = dist < 0.5
    assert seen.mean() > 0.2 and np.isfinite(fit_mesh.colors).all()  # a frontal scan
    expect = paint(raw.to_scan.inverse().apply(fit_mesh.vertices))
    assert np.abs(fit_mesh.colors[seen] - expect[seen]).mean() < 0.01  # 8-bit colours, 0.5 mm of fit error
    obj = trimesh.load(tmp_path / "out" / "fit.obj", process=False, maintain_order=True)
    assert isinstance(obj.visual, trimesh.visual.TextureVisuals) and obj.visual.material.image is not None
    frame = trimesh.load(tmp_path / "out" / "fit_model_frame.obj", process=False, maintain_order=True)
    np.testing.assert_allclose(frame.vertices, read_mesh(tmp_path / "out" / "fit_model_frame.ply").vertices,
                               atol=1e-6)  # the model frame, the same texture
    assert frame.visual.material.image is not None
    tex = np.asarray(Image.open(tmp_path / "out" / "fit_texture.png")).astype(float) / 255.0
    assert tex.shape == (1024, 2048, 3)  # the layout spans two unit tiles (u up to 1.1 / 1.1 * 0.9 + 0.05)
    # each seen vertex's corners: the texel under their uv has about the vertex's colour
    corner_v = model.triangles.ravel()
    ok = seen[corner_v]
    uvc = model.uv[model.triangle_uvs.ravel()][ok]
    rows = np.clip(((1.0 - uvc[:, 1]) * 1024).astype(int), 0, 1023)
    cols = np.clip((uvc[:, 0] / 2.0 * 2048).astype(int), 0, 2047)
    assert np.median(np.abs(tex[rows, cols] - fit_mesh.colors[corner_v[ok]]).max(1)) < 0.03
    res = CliRunner().invoke(app, args + ["--out", str(tmp_path / "plain"), "--texture", "0"])
    assert res.exit_code == 0, res.output
    assert not (tmp_path / "plain" / "fit_texture.png").exists()  # the UVs still, no texture
    plain = trimesh.load(tmp_path / "plain" / "fit.obj", process=False, maintain_order=True)
    np.testing.assert_allclose(plain.vertices, fit_mesh.vertices, atol=1e-6)


def test_fit_cli_fuses_a_position_map_with_the_fit(synth_model, head_generator, tmp_path):
    """``ssm fit --map POS:VAR``: a UV position map of the subject (model frame, 0.15 mm
    noise per axis) is fused with the fit by their uncertainties; fused.ply is closer to
    the truth than the fit alone (and is not moved onto the fit's slightly turned face),
    and a spec without its variance file is one error line."""
    import trimesh
    from typer.testing import CliRunner

    from ssm.cli.app import app
    from ssm.fusion.uv_maps import bake_to_map
    from ssm.io.meshes import write_mesh
    from ssm.io.model_file import save_model

    model = _with_spherical_uv(synth_model)
    uv, tri = model.uv, model.triangles
    save_model(model, tmp_path / "m.h5")
    truth, raw = synthetic_case(head_generator, seed=6, units="mm", views="frontal")
    write_mesh(tmp_path / "a.ply", raw.vertices, raw.faces)
    runner = CliRunner()
    args = ["fit", str(tmp_path / "m.h5"), str(tmp_path / "a.ply"), "--units", "mm"]
    res = runner.invoke(app, args + ["--out", str(tmp_path / "plain")])
    assert res.exit_code == 0, res.output
    # the truth in the model frame, through the pose the fit found (the fit is seeded:
    # the run with the map finds the same pose)
    pose = np.array(json.loads((tmp_path / "plain" / "fit.json").read_text())["pose_model_to_scan"])
    ts = raw.to_scan.apply(truth)
    t_model = np.linalg.solve(pose[:3, :3], (ts - pose[:3, 3]).T).T
    rng = np.random.default_rng(0)
    pos = bake_to_map(t_model + rng.normal(0, 0.15, t_model.shape), uv, model.triangle_uvs, tri, (512, 512))
    np.save(tmp_path / "pos.npy", pos)
    np.save(tmp_path / "var.npy", np.full(pos.shape[:2], 0.0675))  # 3 x 0.15^2 mm^2
    res = runner.invoke(app, args + ["--out", str(tmp_path / "mapped"),
                                     "--map", f"{tmp_path / 'pos.npy'}:{tmp_path / 'var.npy'}"])
    assert res.exit_code == 0, res.output
    fit = np.asarray(trimesh.load(tmp_path / "mapped" / "fit_model_frame.ply", process=False).vertices)
    fused = np.asarray(trimesh.load(tmp_path / "mapped" / "fused.ply", process=False).vertices)
    face = head_generator.regions["face"]
    e_fit = np.linalg.norm(fit - t_model, axis=1)[face].mean()
    e_fused = np.linalg.norm(fused - t_model, axis=1)[face].mean()
    assert e_fused < 0.75 * e_fit, (e_fused, e_fit)
    sources = json.loads((tmp_path / "mapped" / "fused.json").read_text())["sources"]
    assert [s["name"] for s in sources] == ["fit", "pos"] and not sources[1]["aligned"]
    res = runner.invoke(app, args + ["--out", str(tmp_path / "bad"), "--map", str(tmp_path / "pos.npy")])
    assert res.exit_code != 0 and "give POSITIONS:VARIANCE files" in res.output, res.output


def test_fit_cli_never_overwrites_its_inputs(synth_model, head_generator, tmp_path):
    """A scan named fit.ply, or hand-placed landmarks.csv, in the output folder: the fit
    refuses to write over them (exit 2, the file named), and they are unchanged."""
    from typer.testing import CliRunner

    from ssm.cli.app import app
    from ssm.io.meshes import write_mesh
    from ssm.io.model_file import save_model

    save_model(synth_model, tmp_path / "m.h5")
    truth, raw = synthetic_case(head_generator, seed=6, units="mm", views="frontal")
    write_mesh(tmp_path / "fit.ply", raw.vertices, raw.faces)
    names = ["right_eye_outer", "left_eye_outer", "nose_tip", "right_mouth_corner", "left_mouth_corner"]
    pts = raw.to_scan.apply(truth[[head_generator.landmarks[n] for n in names]])
    (tmp_path / "landmarks.csv").write_text("".join(f"{n},{p[0]},{p[1]},{p[2]}\n" for n, p in zip(names, pts)))
    before = {p.name: p.read_bytes() for p in (tmp_path / "fit.ply", tmp_path / "landmarks.csv")}
    for args in (["--landmarks", str(tmp_path / "landmarks.csv")], []):
        res = CliRunner().invoke(app, ["fit", str(tmp_path / "m.h5"), str(tmp_path / "fit.ply"), "--out",
                                       str(tmp_path), "--units", "mm", *args])
        assert res.exit_code == 2, res.output
        assert "is an input, and the fit's" in res.output and "another folder with --out" in res.output
    assert {p.name: p.read_bytes() for p in (tmp_path / "fit.ply", tmp_path / "landmarks.csv")} == before
    assert not (tmp_path / "fit.json").exists()
