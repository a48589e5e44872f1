"""Acceptance (slow): held-out ICT subjects with known truth meet the accuracy targets,
expression, hair, body and uncertainty cases included."""


import json

import numpy as np
import pytest
from conftest import shared_file

from ssm.fitting.config import FitConfig
from ssm.fitting.fit import fit
from ssm.synthetic.raw_scans import make_raw_scan


@pytest.mark.slow
@pytest.mark.parametrize("views,landmarks,limit,expression", [
    ("frontal", "68", 0.8, False), ("frontal", "7", 1.0, False), ("three", "none", 1.2, False),
    ("frontal", "68", 0.8, True), ("frontal", "7", 1.0, True), ("frontal", "none", 1.2, True)])
def test_ict_heldout_targets(ict_model, views, landmarks, limit, expression):
    """Issue targets on the narrow face: 68 lm < 0.8 mm, 7 lm < 1.0 mm, none < 1.2 mm,
    also with an expression the identity model does not span (0.76 / 0.88 / 0.88 mm on
    bench_fitting's 4 subjects)."""
    from ssm.synthetic.ict_cases import heldout_case

    ict, model = ict_model
    errs = []
    for seed in range(2):
        case = heldout_case(ict, seed, views=views, landmarks=landmarks, expression=expression)
        res = fit(model, (case.scan.vertices, case.scan.faces), landmarks=case.landmarks)
        est = case.scan.to_scan.inverse().apply(res.vertices)
        errs.append(np.linalg.norm(est - case.truth, axis=1)[: ict.narrow_face].mean())
    assert np.mean(errs) < limit, errs


@pytest.mark.slow
def test_ict_point_cloud_without_normals(ict_model):
    """A frontal scan as a bare cloud (no faces, no normals), 7 landmarks: its estimated
    normals take their sides again from the model fit, and the fit stays within the
    issue's 1.0 mm (0.54 mm over the robustness benchmark's three subjects)."""
    from ssm.synthetic.ict_cases import heldout_case

    ict, model = ict_model
    errs = []
    for seed in range(2):
        case = heldout_case(ict, seed, views="frontal", landmarks="7")
        res = fit(model, case.scan.vertices, landmarks=case.landmarks)
        est = case.scan.to_scan.inverse().apply(res.vertices)
        errs.append(np.linalg.norm(est - case.truth, axis=1)[: ict.narrow_face].mean())
        turned = next(s for s in res.stages if s.name == "model_fit").extra["cloud_normals_turned"]
        assert 0.0 < turned < 0.2, turned
        assert res.converged
    assert np.mean(errs) < 0.8, errs


@pytest.mark.slow
def test_ict_cloud_with_unoriented_normals_without_landmarks(ict_model, tmp_path):
    """A frontal scan as a PCD whose normals Open3D estimated and saved without
    orientation (sides flipped in patches), no landmarks: fitted as a cloud without
    normals (when their sides were trusted, the fit ended 120 mm off, reported converged)."""
    import open3d as o3d

    from ssm.synthetic.ict_cases import heldout_case

    ict, model = ict_model
    case = heldout_case(ict, 3, views="frontal", landmarks="none")
    pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(case.scan.vertices))
    pc.estimate_normals()
    o3d.io.write_point_cloud(str(tmp_path / "scan.pcd"), pc)
    res = fit(model, tmp_path / "scan.pcd")
    est = case.scan.to_scan.inverse().apply(res.vertices)
    err = np.linalg.norm(est - case.truth, axis=1)[: ict.narrow_face].mean()
    assert res.converged and err < 1.2, err


def _fit_with_and_without(ict, model, case, option: str, values=(True, False), **base) -> dict:
    """Fit an ICT held-out ``case`` with the ``FitConfig`` field ``option`` at ``values``
    (on, off), other fields as in ``base``: {on: (FitResult, (N,) per-vertex error against
    the truth, mm)}."""

    runs = {}
    for on, value in zip((True, False), values):
        res = fit(model, (case.scan.vertices, case.scan.faces), landmarks=case.landmarks,
                  config=FitConfig().replace(**{**base, option: value}))
        runs[on] = res, np.linalg.norm(case.scan.to_scan.inverse().apply(res.vertices) - case.truth, axis=1)
    return runs


@pytest.mark.slow
def test_ict_expression_field_with_7_landmarks(ict_model):
    """With 7 landmarks the warp cannot find the expression's region. The expression
    field's probe finds the identity bending and refits with the field over the whole
    model (1.33 against 1.98 mm on this subject); on the same subject without the
    expression the probe stays under its gate and the fit is the plain one."""
    from ssm.synthetic.ict_cases import heldout_case

    ict, model = ict_model
    case = heldout_case(ict, 0, views="frontal", landmarks="7", expression=True)
    runs = _fit_with_and_without(ict, model, case, "expression_field_mm", values=(1.0, 0.0))
    errs = {on: err[: ict.narrow_face].mean() for on, (_, err) in runs.items()}
    stage = [st for st in runs[True][0].stages if st.name == "expression_field"]
    assert len(stage) == 1 and stage[0].extra["applied"] and stage[0].extra["deformation_components"] > 0
    assert stage[0].extra["probe_rms_mm"] > FitConfig().refine.expression_field_gate_mm
    assert not any(st.name == "expression_field" for st in runs[False][0].stages)
    assert errs[True] < 0.75 * errs[False], errs

    neutral = heldout_case(ict, 0, views="frontal", landmarks="7")
    runs = _fit_with_and_without(ict, model, neutral, "expression_field_mm", values=(1.0, 0.0))
    stage = next(st for st in runs[True][0].stages if st.name == "expression_field")
    assert not stage.extra["applied"] and stage.extra["probe_rms_mm"] < FitConfig().refine.expression_field_gate_mm
    np.testing.assert_allclose(runs[True][1], runs[False][1], atol=1e-6)


@pytest.mark.slow
def test_ict_expression_landmark_warp(ict_model):
    """An expression the identity model does not span, 68 landmarks: the landmark warp
    (the model refitted with a smooth deformation field over the warped region, landmarks
    kept there in NICP) beats the plain fit by a clear margin (the issue's 0.8 mm on
    two subjects: test_ict_heldout_targets), and the reported stddev stays calibrated."""
    from ssm.synthetic.ict_cases import heldout_case

    ict, model = ict_model
    case = heldout_case(ict, 0, views="frontal", landmarks="68", expression=True)
    # without the warp the expression field's probe would step in: the plain fit has neither
    runs = _fit_with_and_without(ict, model, case, "landmark_warp", expression_field_mm=0.0)
    errs = {on: err[: ict.narrow_face].mean() for on, (_, err) in runs.items()}
    res, err = runs[True]
    warp = next(st for st in res.stages if st.name == "landmark_warp")
    assert warp.extra["refit"] and 0.05 < warp.extra["region_fraction"] < 0.3
    assert warp.extra["deformation_components"] > 0
    # the stddev takes the warp's own uncertainty where the model does not hold
    assert 0.85 <= np.mean(err[: ict.narrow_face] < 2 * res.stddev_mm[: ict.narrow_face]) <= 0.99
    assert errs[True] < 0.7 * errs[False] and errs[True] < 1.2, errs


@pytest.mark.slow
def test_ict_mirror_correlated_field_for_a_symmetric_expression_only(ict_model, monkeypatch):
    """The benchmark's expression (jaw open, a smile and raised brows on both sides) is
    symmetric: the landmark warp's refit finds its field mostly mirrored and fits it again
    with its two sides correlated (by 0.85), closer to the truth than without (0.91
    against 0.97 mm on this subject); a smile and squint on one side keeps the field it
    had, to the bit."""
    import ssm.synthetic.ict_cases as ict_cases

    ict, model = ict_model
    case = ict_cases.heldout_case(ict, 0, views="frontal", landmarks="68", expression=True)
    runs = _fit_with_and_without(ict, model, case, "mirror_field")
    errs = {on: err[: ict.narrow_face].mean() for on, (_, err) in runs.items()}
    rho = {on: next(st for st in res.stages if st.name == "landmark_warp").extra["mirror_correlation"]
           for on, (res, _) in runs.items()}
    assert rho[True] > 0.5 and rho[False] == 0.0, rho
    assert errs[True] < errs[False] - 0.02, errs

    monkeypatch.setattr(ict_cases, "HELDOUT_EXPRESSION", {"mouthSmile_L": 0.8, "eyeSquint_L": 0.5, "browDown_R": 0.4})
    one_sided = ict_cases.heldout_case(ict, 0, views="frontal", landmarks="68", expression=True)
    runs = _fit_with_and_without(ict, model, one_sided, "mirror_field")
    warp = next(st for st in runs[True][0].stages if st.name == "landmark_warp")
    assert warp.extra["refit"] and warp.extra["mirror_correlation"] == 0.0
    np.testing.assert_array_equal(runs[True][1], runs[False][1])


@pytest.mark.slow
def test_basel_style_model_with_expressions(tmp_path):
    """A Basel-style file (/shape: ICT's identity modes; /expression: its blendshapes), as
    the Basel Face Model 2017 lays them out, landmarks named with --model-landmarks. On a
    face with an expression, 'ssm fit' (--expression-model auto) finds it, fits identity and
    expression together and does much better than with the identity alone (off); on a
    neutral face the probe leaves the identity fit as it is."""
    import h5py
    import trimesh
    from typer.testing import CliRunner

    from ssm.cli.app import app
    from ssm.io.meshes import write_mesh
    from ssm.synthetic.ict_cases import heldout_case, load_ict

    ict = load_ict(shared_file("ict_head/ict_head.npz"))

    def group(f, name, mean, basis_rows, scale):  # statismo layout; basis rows (K, N, 3)
        b = basis_rows.reshape(len(basis_rows), -1).T
        norms = np.linalg.norm(b, axis=0)
        f[f"{name}/model/mean"] = mean.reshape(-1).astype(np.float32)
        f[f"{name}/model/pcaBasis"] = (b / norms).astype(np.float32)
        f[f"{name}/model/pcaVariance"] = ((scale * norms) ** 2).astype(np.float32)
        f[f"{name}/model/noiseVariance"] = np.float32(0.0)
        f[f"{name}/representer/points"] = ict.mean.T.astype(np.float32)
        f[f"{name}/representer/cells"] = ict.triangles.T.astype(np.int32)

    with h5py.File(tmp_path / "bfm.h5", "w") as f:
        group(f, "shape", ict.mean, ict.modes, 1.0)
        group(f, "expression", np.zeros_like(ict.mean), ict.expressions, 0.3)  # offsets; weights ~0.3
    (tmp_path / "model_lm.csv").write_text("".join(f"ibug{i:02d},{v}\n" for i, v in enumerate(ict.landmarks68)))

    def run(case, mode):
        name = f"{'expr' if case is expr else 'neutral'}_{mode}"
        write_mesh(tmp_path / f"{name}.ply", case.scan.vertices, case.scan.faces)
        np.savetxt(tmp_path / f"{name}.csv", case.landmarks, delimiter=",")
        res = CliRunner().invoke(app, ["fit", str(tmp_path / "bfm.h5"), str(tmp_path / f"{name}.ply"),
                                       "--landmarks", str(tmp_path / f"{name}.csv"), "--model-landmarks",
                                       str(tmp_path / "model_lm.csv"), "--expression-model", mode,
                                       "--out", str(tmp_path / name)])
        assert res.exit_code == 0, res.output
        v = np.asarray(trimesh.load(tmp_path / name / "fit.ply", process=False).vertices)
        err = np.linalg.norm(case.scan.to_scan.inverse().apply(v) - case.truth, axis=1)[:ict.narrow_face].mean()
        return err, json.loads((tmp_path / name / "fit.json").read_text())

    expr = heldout_case(ict, 0, views="frontal", landmarks="68", expression=True)
    e_auto, d_auto = run(expr, "auto")
    e_off, d_off = run(expr, "off")
    # the expression model against the identity alone with its landmark warp and field
    # (0.89 against 1.00 mm on this one subject; 0.83 against 1.02 before the model fit's
    # exact last iteration, which on bench_fitting's 4 subjects took the expression model
    # 0.57 -> 0.46 mm and the identity alone 0.82 -> 0.76: one subject moves by +-0.06 mm
    # with such changes)
    assert e_auto < e_off - 0.08, (e_auto, e_off)
    stage = next(st for st in d_auto["stages"] if st["name"] == "expression_model")
    assert stage["extra"]["applied"] and stage["extra"]["probe_rms_mm"] > 2.0
    assert d_auto["expression_model"] == {"components": 53, "mode": "auto"}
    assert len(d_auto["expression_coefficients"]) == 53 and len(d_auto["coefficients"]) == 100
    assert d_off["expression_coefficients"] is None and "expression_model" not in d_off
    # the subject without the expression, against the true neutral face (truth frame)
    from ssm.synthetic.ict_cases import HELDOUT_EXPRESSION, expression_offsets

    pose = np.array(d_auto["pose_model_to_scan"])
    neutral_fit = np.asarray(trimesh.load(tmp_path / "expr_auto" / "fit_neutral_model_frame.ply",
                                          process=False).vertices)
    to_truth = expr.scan.to_scan.inverse()
    neutral_truth = expr.truth - expression_offsets(ict, HELDOUT_EXPRESSION)
    nf = ict.narrow_face
    e_neutral = np.linalg.norm(to_truth.apply(neutral_fit @ pose[:3, :3].T + pose[:3, 3]) - neutral_truth,
                               axis=1)[:nf].mean()
    e_as_is = np.linalg.norm(expr.truth - neutral_truth, axis=1)[:nf].mean()  # the expression's own size
    assert e_neutral < 0.45 * e_as_is, (e_neutral, e_as_is)  # 1.21 against 2.97 mm
    assert not (tmp_path / "expr_off" / "fit_neutral_model_frame.ply").exists()
    neutral = heldout_case(ict, 0, views="frontal", landmarks="68")
    e_auto, d_auto = run(neutral, "auto")
    stage = next(st for st in d_auto["stages"] if st["name"] == "expression_model")
    assert not stage["extra"]["applied"] and d_auto["expression_coefficients"] is None
    e_off, _ = run(neutral, "off")  # (off: the generic landmark warp may differ slightly)
    assert e_auto < e_off + 0.05, (e_auto, e_off)


@pytest.mark.slow
def test_ict_uncertainty_is_calibrated(ict_model):
    """Issue 4: 85-99 % of face vertices within 2 sigma on held-out cases; unseen > seen."""
    from ssm.synthetic.ict_cases import heldout_case

    ict, model = ict_model
    inside, n = 0, 0
    for seed, (views, lmk) in enumerate([("frontal", "68"), ("frontal", "7"), ("three", "none")]):
        case = heldout_case(ict, 30 + seed, views=views, landmarks=lmk)
        res = fit(model, (case.scan.vertices, case.scan.faces), landmarks=case.landmarks)
        err = np.linalg.norm(case.scan.to_scan.inverse().apply(res.vertices) - case.truth, axis=1)
        face = slice(0, ict.narrow_face)
        inside += int((err[face] < 2 * res.stddev_mm[face]).sum())
        n += ict.narrow_face
        if views == "frontal":  # the back of the head was not seen: less certain
            assert np.median(res.stddev_mm[res.distance_mm > 5]) > 1.5 * np.median(res.stddev_mm[face])
    assert 0.85 <= inside / n <= 0.99, inside / n


@pytest.mark.slow
def test_ict_hair_is_left_out(ict_model):
    """18 mm of hair over the scalp and a fringe: the occlusion stage finds it (the
    'occluded' vertices are where the hair is) and the face fits nearly as without hair;
    without the stage the hair drags the skull, and the face with it."""
    from ssm.synthetic.ict_cases import hair_weight, heldout_case

    ict, model = ict_model
    case = heldout_case(ict, 0, views="frontal", landmarks="68", hair_mm=18.0)
    runs = _fit_with_and_without(ict, model, case, "occlusion")
    errs = {on: err[: ict.narrow_face].mean() for on, (_, err) in runs.items()}
    occluded = runs[True][0].occluded
    assert runs[True][0].summary()["occluded_fraction"] == pytest.approx(occluded.mean())
    w = hair_weight(ict, case.truth)
    hair, bare = w > 0.5, w == 0
    seen = case.truth[:, 2] > case.truth[ict.landmarks68[0], 2]  # in front of the ears: the frontal scan sees it
    assert occluded[hair & seen].mean() > 0.8 and occluded[bare].mean() < 0.08
    assert errs[True] < 0.75 and errs[True] < 0.8 * errs[False], errs


@pytest.mark.slow
@pytest.mark.parametrize("units", ["m", "auto"])
def test_ict_whole_body_without_landmarks(ict_model, units):
    """A frontal scan of a whole body (1.7 m; the head about a tenth of the points), no
    landmarks: the whole-scan and bust searches miss the head, the head-sized windows
    (init_auto.head_window_starts) find it, in the units given or, without them, in
    the units the scan would be a body in (init_auto.body_scales)."""
    import trimesh

    from ssm.synthetic.ict_cases import subjects, with_shoulders

    ict, model = ict_model
    truth = subjects(ict, 1, 10_001)[0]
    v, f = with_shoulders(truth, ict.triangles)
    below = v[:, 1].min()
    for height, radius, x, drop in ((500.0, 150.0, 0.0, 250.0), (800.0, 70.0, -90.0, 900.0), (800.0, 70.0, 90.0, 900.0)):
        part = trimesh.creation.capsule(height=height, radius=radius, count=[24, 24])  # trunk, legs
        f = np.concatenate([f, part.faces + len(v)])
        v = np.concatenate([v, part.vertices[:, [0, 2, 1]] + [x, below - drop, truth[:, 2].mean() - 30.0]])
    raw = make_raw_scan(v, f, views="frontal", fov_mm=1900.0, spacing_mm=2.0, seed=20_001, units="m")
    res = fit(model, (raw.vertices, raw.faces), units=units)
    err = np.linalg.norm(raw.to_scan.inverse().apply(res.vertices) - truth, axis=1)[: ict.narrow_face]
    assert res.converged, res.message
    assert res.units == "m"
    assert err.mean() < 1.2, err.mean()
    assert res.stages[0].extra["window_starts"] > 6  # the bust windows and the head-sized ones


@pytest.mark.slow
def test_ict_bust_without_landmarks(ict_model):
    """Head and shoulders, no landmarks: the whole-scan search lays a head twice the size
    over head and torso; the window search finds the head, and the fit is as good as on a
    head alone."""
    from ssm.synthetic.ict_cases import subjects, with_shoulders
    from ssm.synthetic.raw_scans import make_raw_scan

    ict, model = ict_model
    truth = subjects(ict, 1, 10_001)[0]
    raw = make_raw_scan(*with_shoulders(truth, ict.triangles), seed=20_001, fov_mm=560.0)
    res = fit(model, (raw.vertices, raw.faces))
    err = np.linalg.norm(raw.to_scan.inverse().apply(res.vertices) - truth, axis=1)[: ict.narrow_face].mean()
    init = next(st for st in res.stages if st.name == "auto_init")
    assert init.extra["window_starts"] > 0
    assert res.converged and err < 1.0, err
