import h5py
import numpy as np
import pytest

from ssm.errors import SSMError
from ssm.io.corpus import Corpus, write_corpus
from ssm.io.corpus_import import import_meshes, partial_path
from ssm.io.meshes import write_mesh


@pytest.fixture()
def meshes(tmp_path, generator):
    from ssm.synthetic.heads import sample_heads

    v, _ = sample_heads(generator, 6, seed=1)
    folder = tmp_path / "meshes"
    folder.mkdir()
    for i, x in enumerate(v):
        write_mesh(folder / f"s{i}.ply", x, generator.triangles)
    return folder, v


def test_write_read_round_trip_bit_exact(tmp_path):
    rng = np.random.default_rng(0)
    v = rng.normal(size=(7, 20, 3)) * 100
    masks = rng.random((7, 20)) > 0.2
    tri = np.array([[0, 1, 2], [3, 4, 5]])
    p = write_corpus(tmp_path / "c.h5", v, tri, ids=[f"id{i}" for i in range(7)], landmarks={"a": 3},
                     masks=masks, dtype=np.float64)
    with Corpus(p) as c:
        np.testing.assert_array_equal(c.read(), v)
        np.testing.assert_array_equal(c.read_masks(), masks)
        np.testing.assert_array_equal(c.read([5, 1, 5]), v[[5, 1, 5]])
        assert c.ids[2] == "id2" and c.landmarks == {"a": 3} and c.units == "mm"
        got = np.concatenate([x for _, x, _ in c.iter_chunks(chunk=3)])
        np.testing.assert_array_equal(got, v)


def test_import_meshes_converts_units_and_reads_landmarks(tmp_path, meshes, generator):
    folder, v = meshes
    for p in folder.iterdir():  # re-write in metres
        from ssm.io.meshes import read_mesh

        m = read_mesh(p)
        write_mesh(p, m.vertices / 1000.0, m.faces)
    lm = tmp_path / "lm.csv"
    lm.write_text("name,vertex\nnose_tip,%d\nchin,%d\n" % (generator.landmarks["nose_tip"],
                                                          generator.landmarks["chin"]))
    rep = import_meshes([folder], tmp_path / "c.h5", landmarks=lm, units="m")
    assert rep.n_imported == 6
    with Corpus(tmp_path / "c.h5") as c:
        np.testing.assert_allclose(c.read(), v, atol=1e-3)  # float32 storage, mm
        assert c.landmarks == {"nose_tip": generator.landmarks["nose_tip"], "chin": generator.landmarks["chin"]}
        assert c.ids == [f"s{i}" for i in range(6)]


def test_bad_files_are_all_named_and_no_corpus_is_written(tmp_path, meshes, generator):
    folder, v = meshes
    write_mesh(folder / "s7_fewer.ply", v[0][:-3], generator.triangles[:-20])
    tri = generator.triangles.copy()
    tri[[0, 1]] = tri[[1, 0]]
    write_mesh(folder / "s8_faces.ply", v[0], tri)
    write_mesh(folder / "s9_metres.ply", v[0] / 1000, generator.triangles)
    (folder / "sa_empty.ply").write_bytes(b"")
    (folder / "sb_corrupt.ply").write_bytes(b"ply\nformat ascii 1.0\nelement vertex 3\nend_header\n1 2\n")
    out = tmp_path / "c.h5"
    with pytest.raises(SSMError) as err:
        import_meshes([folder], out)
    msg = str(err.value)
    assert "5 of 11 files could not be imported" in msg
    assert "s7_fewer.ply: has" in msg and "vertices, the template has" in msg
    assert "s8_faces.ply: its triangles differ" in msg
    assert "s9_metres.ply" in msg and "pass --units m" in msg
    assert "sa_empty.ply: file is empty" in msg
    assert "sb_corrupt.ply" in msg
    assert not out.exists()
    # fix the inputs and re-run: resumes from the partial file
    for bad in folder.glob("s[7-9ab]_*.ply"):
        bad.unlink()
    rep = import_meshes([folder], out)
    assert rep.n_imported == 0 and rep.n_skipped_existing == 6
    assert out.exists() and not partial_path(out).exists()


def test_nan_vertices_error_or_become_masks(tmp_path, meshes, generator):
    folder, v = meshes
    bad = v[0].copy()
    bad[:10] = np.nan
    write_mesh(folder / "s_nan.ply", bad, generator.triangles)
    with pytest.raises(SSMError, match="s_nan.ply: 10 vertices have NaN"):
        import_meshes([folder], tmp_path / "c.h5")
    import_meshes([folder], tmp_path / "c2.h5", nan_as_missing=True)
    with Corpus(tmp_path / "c2.h5") as c:
        masks = c.read_masks()
        i = c.ids.index("s_nan")
        assert masks[i, :10].sum() == 0 and masks[i, 10:].all() and masks[:i].all()


def test_incomplete_and_foreign_files_are_refused(tmp_path):
    p = tmp_path / "x.h5"
    with h5py.File(p, "w") as f:
        f["data"] = np.zeros(3)
    with pytest.raises(SSMError, match="not an ssm corpus"):
        Corpus(p)
    with pytest.raises(SSMError, match="no such corpus"):
        Corpus(tmp_path / "nope.h5")


def test_existing_output_needs_overwrite(tmp_path, meshes):
    folder, _ = meshes
    out = tmp_path / "c.h5"
    import_meshes([folder], out)
    with pytest.raises(SSMError, match="already exists"):
        import_meshes([folder], out)
    import_meshes([folder], out, overwrite=True)
