"""The default model that ships in models/: what it holds, that ``ssm.fit(scan)`` and
``ssm fit SCAN`` use it, and that no fit computes what it ships."""

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, shared_file

from ssm.io.model_file import DEFAULT_MODEL, default_model_path, load_blendshapes, load_model

EXAMPLE = ROOT / "examples" / "james"


def test_the_default_model_holds_identity_expressions_landmarks_regions_and_uvs():
    assert default_model_path() == DEFAULT_MODEL and DEFAULT_MODEL.stat().st_size < 26e6
    m = load_model(DEFAULT_MODEL)
    assert m.n_vertices == 11248 and m.n_components == 100 and m.units == "mm"
    assert len(m.landmarks) == 68 and m.landmarks["ibug30"] < m.n_vertices
    assert set(m.regions) == {"face", "narrow_face"} and len(m.regions["narrow_face"]) == 6706
    assert m.uv is not None and m.triangle_uvs.shape == m.triangles.shape
    np.testing.assert_allclose(m.basis[:, :5].T @ m.basis[:, :5], np.eye(5), atol=1e-5)  # orthonormal
    assert np.all(np.diff(m.variances) <= 0)
    shapes = load_blendshapes(DEFAULT_MODEL)
    assert len(shapes.names) == 53 and {"jawOpen", "mouthSmile_L", "eyeBlink_R"} <= set(shapes.names)
    assert "MIT" in (ROOT / "models" / "LICENSE-ICT-FaceKit.txt").read_text()


def test_the_default_model_matches_its_source(tmp_path):
    """models/build_ict_head.py's model is the ICT file's distribution of heads (the same
    mean and covariance: its modes' span and spread along any direction) and shapes."""
    from ssm.io.ict_facekit import ict_head_model

    d = np.load(shared_file("ict_head/ict_head.npz"))
    built, shapes = ict_head_model(shared_file("ict_head/ict_head.npz"))
    shipped = load_model(DEFAULT_MODEL)
    assert "basis_orthonormalised" not in shipped.provenance  # stored orthonormal
    modes = d["identity_modes"].reshape(100, -1).astype(float)
    directions = np.random.default_rng(0).standard_normal((modes.shape[1], 5))
    want = ((modes @ directions) ** 2).sum(0)  # variance of the heads along each direction
    for model in (shipped, built):
        np.testing.assert_allclose(model.mean, d["mean"], atol=1e-4)
        got = ((model.basis.astype(float).T @ directions) ** 2 * model.variances[:, None]).sum(0)
        np.testing.assert_allclose(got, want, rtol=1e-4)
    assert shapes.names == tuple(d["expression_names"])
    np.testing.assert_array_equal(shapes.deltas, d["expression_deltas"].astype(np.float32))


def test_shipped_harmonics_are_used_not_computed(monkeypatch):
    import ssm.fitting.refine.deformation_basis as db

    def no_solve(*args, **kwargs):
        raise AssertionError("computed the harmonics the model ships")

    monkeypatch.setattr(db, "low_harmonics", no_solve)
    monkeypatch.setenv("SSM_CACHE_DIR", "off")
    m = load_model(DEFAULT_MODEL)
    for length in (30.0, 50.0):
        h = db.model_harmonics(m, length)
        assert len(h.eigenvalues) > 50 and h.eigenvalues.max() <= db.harmonics_bound(length)
    # a model whose mean changed (scaled to other units) does not take them
    moved = m.with_metadata(mean=m.mean * 1.01)
    with pytest.raises(AssertionError, match="computed the harmonics"):
        db.model_harmonics(moved, 50.0)


@pytest.mark.slow
def test_fit_and_ssm_fit_use_the_default_model(tmp_path):
    """``ssm.fit(scan)`` and the README's first command: the bundled james scan fits the
    default model, converged, its face on the scan and its landmarks where they were given."""
    import ssm
    from typer.testing import CliRunner

    from ssm.cli.app import app

    res = ssm.fit(EXAMPLE / "james.ply", landmarks=EXAMPLE / "james_landmarks68.csv", units="mm")
    assert res.converged, res.message
    assert res.face_distance_mm < 0.5
    kept = [e for n, e in res.landmark_errors_mm.items() if n not in res.rejected_landmarks]
    assert np.median(kept) < 3.0
    out = CliRunner().invoke(app, ["fit", str(EXAMPLE / "james.ply"), "--landmarks",
                                   str(EXAMPLE / "james_landmarks68.csv"), "--units", "mm", "--out",
                                   str(tmp_path / "james")])
    assert out.exit_code == 0, out.output
    assert "converged" in out.output
    summary = json.loads((tmp_path / "james" / "fit.json").read_text())
    assert summary["converged"] and summary["face_distance_to_scan_mm"] < 0.5
    assert Path(tmp_path / "james" / "report.png").stat().st_size > 50_000
