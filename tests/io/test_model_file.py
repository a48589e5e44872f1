import subprocess
import sys

import h5py
import numpy as np
import pytest
from conftest import shared_file

from ssm.errors import SSMError
from ssm.io.model_file import load_model, save_model
from ssm.models.shape_model import ShapeModel


def _model(dtype=np.float64):
    rng = np.random.default_rng(0)
    basis, _ = np.linalg.qr(rng.normal(size=(30, 4)))
    return ShapeModel(rng.normal(size=(10, 3)).astype(dtype), basis.astype(dtype),
                      np.array([5.0, 3.0, 2.0, 0.5], dtype=dtype), 0.125,
                      triangles=np.array([[0, 1, 2], [1, 2, 3]]), landmarks={"nose_tip": 3, "chin": 7},
                      regions={"face": np.array([0, 1, 2])}, units="mm",
                      provenance={"align": "similarity", "n_subjects": 12})


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_round_trip_is_bit_exact(tmp_path, dtype):
    m = _model(dtype)
    save_model(m, tmp_path / "m.h5")
    r = load_model(tmp_path / "m.h5")
    for name in ("mean", "basis", "variances"):
        a, b = getattr(m, name), getattr(r, name)
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    assert r.noise_variance == m.noise_variance
    np.testing.assert_array_equal(r.triangles, m.triangles)
    assert dict(r.landmarks) == dict(m.landmarks)
    np.testing.assert_array_equal(r.regions["face"], [0, 1, 2])
    assert r.provenance["n_subjects"] == 12 and r.units == "mm"


def test_written_file_has_statismo_layout(tmp_path):
    m = _model()
    save_model(m, tmp_path / "m.h5")
    with h5py.File(tmp_path / "m.h5") as f:
        assert f["model/mean"].shape == (30,) and f["model/mean"].dtype == np.float32
        assert f["model/pcaBasis"].shape == (30, 4) and f["model/pcaBasis"].dtype == np.float32
        assert f["model/pcaVariance"].shape == (4,)
        assert f["model/noiseVariance"][0] == pytest.approx(0.125)
        assert f["representer/points"].shape == (3, 10)
        assert f["representer/cells"].shape == (3, 2) and f["representer/cells"].dtype == np.int32
        assert f["representer"].attrs["datasetType"][0] == b"POLYGON_MESH"
        assert int(f["version/majorVersion"][()]) == 0 and int(f["version/minorVersion"][()]) == 9
        # vertex-interleaved mean, points as (3, N)
        np.testing.assert_allclose(f["model/mean"][:3], m.mean[0], rtol=1e-6)
        np.testing.assert_allclose(f["representer/points"][:, 1], m.mean[1], rtol=1e-6)


def test_reads_scalismo_file():
    path = shared_file("interop/scalismo_model.h5")
    m = load_model(path)
    assert m.n_vertices == 1400 and m.triangles.shape == (2800, 3)
    with h5py.File(path) as f:
        b = f["model/pcaBasis"][()].astype(np.float64)
        v = f["model/pcaVariance"][()].astype(np.float64)
        mean = f["model/mean"][()]
    # same distribution, orthonormal basis
    np.testing.assert_allclose(m.basis.T @ m.basis, np.eye(m.n_components), atol=1e-8)
    cov_file = (b * v) @ b.T
    cov_ours = (m.basis * m.variances) @ m.basis.T
    np.testing.assert_allclose(cov_ours, cov_file, atol=1e-6 * np.abs(cov_file).max())
    np.testing.assert_allclose(m.mean.reshape(-1), mean)


def test_reads_basel_style_shape_group(tmp_path):
    m = _model()
    p = tmp_path / "basel.h5"
    with h5py.File(p, "w") as f:
        g = f.create_group("shape")
        g["model/mean"] = m.mean.reshape(-1).astype(np.float32)
        g["model/pcaBasis"] = m.basis.astype(np.float32)
        g["model/pcaVariance"] = m.variances.astype(np.float32)
        g["model/noiseVariance"] = np.array([0.0], np.float32)
        g["representer/points"] = m.mean.T.astype(np.float32)
        g["representer/cells"] = m.triangles.T
        f["metadata/landmarks/json"] = '[{"id": "nose", "coordinates": %s}]' % list(map(float, m.mean[3]))
    r = load_model(p)
    np.testing.assert_allclose(r.basis, m.basis, atol=1e-6)
    assert dict(r.landmarks) == {"nose": 3}


def _write_statismo_group(f, name, mean, basis, variances, triangles):
    g = f.create_group(name)
    g["model/mean"] = mean.reshape(-1).astype(np.float32)
    g["model/pcaBasis"] = basis.astype(np.float32)
    g["model/pcaVariance"] = variances.astype(np.float32)
    g["model/noiseVariance"] = np.array([0.0], np.float32)
    g["representer/points"] = mean.reshape(-1, 3).T.astype(np.float32)
    g["representer/cells"] = triangles.T


def test_basel_expression_model_is_read_beside_the_shape_model(tmp_path):
    """A Basel-style file with /shape and /expression (as the Basel Face Model 2017): the
    expression model comes with its mean as offsets from the shape's (a whole face stored
    there is turned into its offsets), an orthonormal basis of the same covariance and the
    shape's triangles; a file without one gives None, and one of another mesh an error."""
    from ssm.io.model_file import load_expression_model

    m = _model()
    rng = np.random.default_rng(5)
    e_basis = rng.normal(size=(30, 3))  # not orthonormal
    e_var = np.array([4.0, 1.0, 0.25])
    e_mean = rng.normal(0, 0.1, size=(10, 3))  # offsets from the shape's mean
    p = tmp_path / "bfm.h5"
    with h5py.File(p, "w") as f:
        _write_statismo_group(f, "shape", m.mean, m.basis, m.variances, m.triangles)
        _write_statismo_group(f, "expression", e_mean, e_basis, e_var, m.triangles)
    assert load_model(p).n_components == 4  # the shape model alone
    e = load_expression_model(p)
    np.testing.assert_allclose(e.mean, e_mean, atol=1e-6)
    np.testing.assert_allclose(e.basis.T @ e.basis, np.eye(3), atol=1e-8)
    cov = (e_basis * e_var) @ e_basis.T
    np.testing.assert_allclose((e.basis * e.variances) @ e.basis.T, cov, atol=1e-5 * np.abs(cov).max())
    np.testing.assert_array_equal(e.triangles, m.triangles)
    with h5py.File(p, "a") as f:  # a whole face in the expression mean
        del f["expression/model/mean"]
        f["expression/model/mean"] = (m.mean + e_mean).reshape(-1).astype(np.float32)
    np.testing.assert_allclose(load_expression_model(p).mean, e_mean, atol=1e-5)
    save_model(m, tmp_path / "ours.h5")
    assert load_expression_model(tmp_path / "ours.h5") is None
    save_model(m, tmp_path / "ours_x.h5", expression=e)  # ours, with the expression model beside it
    back = load_expression_model(tmp_path / "ours_x.h5")
    np.testing.assert_allclose(back.mean, e.mean, atol=1e-6)
    np.testing.assert_allclose((back.basis * back.variances) @ back.basis.T, cov, atol=1e-5 * np.abs(cov).max())
    assert load_model(tmp_path / "ours_x.h5").n_components == 4
    with h5py.File(p, "a") as f:  # an expression model of another mesh
        del f["expression"]
        _write_statismo_group(f, "expression", np.zeros((12, 3)), rng.normal(size=(36, 2)), np.ones(2),
                              m.triangles)
    with pytest.raises(SSMError, match="expression model has 12 vertices but the shape model 10"):
        load_expression_model(p)


def test_corrupt_and_missing_files_give_clear_errors(tmp_path):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not hdf5 at all")
    with pytest.raises(SSMError, match="bad.h5: not a readable HDF5"):
        load_model(bad)
    with pytest.raises(SSMError, match="no such model file"):
        load_model(tmp_path / "missing.h5")
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = 1
    with pytest.raises(SSMError, match="no statismo model group"):
        load_model(other)


def test_save_never_leaves_half_written_file(tmp_path, monkeypatch):
    target = tmp_path / "m.h5"
    save_model(_model(), target)
    before = target.read_bytes()
    import ssm.io.model_file as mf

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(mf.json, "dumps", boom)
    with pytest.raises(SSMError, match="disk full"):
        save_model(_model(), target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.h5"]


def test_load_model_imports_no_heavy_libraries(tmp_path):
    save_model(_model(), tmp_path / "m.h5")
    code = ("import sys, time; t = time.perf_counter(); import ssm; m = ssm.load_model(%r); "
            "dt = time.perf_counter() - t; heavy = [k for k in ('torch', 'open3d', 'trimesh') if k in sys.modules]; "
            "print(heavy, dt); assert not heavy, heavy; assert dt < 1.0, dt" % str(tmp_path / "m.h5"))
    subprocess.run([sys.executable, "-c", code], check=True)
