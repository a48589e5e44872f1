"""Expression models from paired neutral / expression scans (known truth, synthetic heads)."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from ssm.errors import SSMError
from ssm.training.expressions import pair_expressions, train_expression_model


def _expression_fields(gen, rng) -> np.ndarray:
    """(3, N, 3) smooth displacement fields of up to 5 mm over a 25 mm radius (a part of
    the face moving, the rest of the head still): the true expression basis."""
    v = gen.mean
    out = []
    for _ in range(3):
        c = v[rng.integers(len(v))]
        d = rng.normal(size=3)
        out.append(5.0 * np.exp(-0.5 * ((v - c) ** 2).sum(1) / 25.0 ** 2)[:, None] * d / np.linalg.norm(d))
    return np.array(out)


def _moved(x, rng, deg=4.0, mm=8.0):
    """``x`` (N, 3) under a random rigid motion (the head moving between two scans)."""
    r = Rotation.from_rotvec(np.deg2rad(deg) * rng.normal(size=3) / np.sqrt(3)).as_matrix()
    return x @ r.T + rng.normal(0, mm, 3)


def test_pairing_by_id_prefix():
    pairs = pair_expressions(["s1", "s12", "s3"], ["s12_smile", "s1-jaw", "s3", "s1/brows"])
    assert pairs == [(0, 1), (1, 0), (2, 2), (3, 0)]
    with pytest.raises(SSMError, match="no neutral scan.*s120_smile"):
        pair_expressions(["s1", "s12"], ["s120_smile"])  # "s12" + "0...": another subject


def test_expression_model_recovers_the_true_expressions(generator, tmp_path):
    """40 subjects, 2 expressions each (3 known fields, random weights), every scan moved
    by its own rigid motion: the expression model's first 3 components span the true
    fields in the identity model's frame (principal angles under 0.5 degrees) and its mean
    is their mean offset; saved beside the identity model, load_expression_model finds it."""
    from ssm.io.corpus import write_corpus
    from ssm.io.model_file import load_expression_model, save_model
    from ssm.training.trainer import ModelTrainer

    rng = np.random.default_rng(0)
    fields = _expression_fields(generator, rng)
    ident = generator.heads(rng.standard_normal((40, generator.fields.shape[0])))
    weights = rng.normal(0.5, 1.0, (80, 3))
    neutral = np.array([_moved(x, rng) for x in ident])
    expr = np.array([_moved(ident[j // 2] + np.einsum("k,knd->nd", weights[j], fields), rng) for j in range(80)])
    ids = [f"s{i:02d}" for i in range(40)]
    write_corpus(tmp_path / "n.h5", neutral, generator.triangles, ids=ids, dtype=np.float64)
    model = ModelTrainer(0.9999, device="cpu").fit(tmp_path / "n.h5").model_
    pairs = pair_expressions(ids, [f"s{j // 2:02d}_e{j % 2}" for j in range(80)])
    e = train_expression_model(model, neutral, expr, pairs)
    # the fields in the identity model's frame (its Procrustes mean, turned 4 degrees from
    # the generator's)
    from ssm.geometry.similarity import fit_similarity

    s, r, _ = fit_similarity(generator.mean, model.mean)
    true_fields = s * np.einsum("knd,ed->kne", fields, r)
    q_true, _ = np.linalg.qr(true_fields.reshape(3, -1).T)
    cos = np.linalg.svd(q_true.T @ e.basis[:, :3], compute_uv=False)
    assert np.degrees(np.arccos(np.clip(cos.min(), -1, 1))) < 0.5, cos
    assert e.n_components == 3 or e.variances[3] < 1e-4 * e.variances[2]  # nothing beyond the 3 fields
    true_mean = np.einsum("sk,knd->nd", weights, true_fields) / len(weights)
    assert np.linalg.norm(e.mean - true_mean, axis=1).mean() < 0.02 * np.linalg.norm(true_mean, axis=1).mean()
    save_model(model, tmp_path / "m.h5", expression=e)
    back = load_expression_model(tmp_path / "m.h5")
    np.testing.assert_allclose(back.mean, e.mean, atol=1e-4)
    with pytest.raises(SSMError, match="at least 2 expression scans"):
        train_expression_model(model, neutral, expr, pairs[:1])


def test_train_cli_with_an_expression_corpus(generator, tmp_path):
    """'ssm train neutral.h5 --expressions expressions.h5' writes the identity model with
    the expression model beside it; 'ssm info' reports it; an expression scan without its
    neutral is one error line."""
    import json

    from typer.testing import CliRunner

    from ssm.cli.app import app
    from ssm.io.corpus import write_corpus

    rng = np.random.default_rng(1)
    fields = _expression_fields(generator, rng)
    ident = generator.heads(rng.standard_normal((20, generator.fields.shape[0])))
    write_corpus(tmp_path / "n.h5", np.array([_moved(x, rng) for x in ident]), generator.triangles,
                 ids=[f"p{i}" for i in range(20)], dtype=np.float64)
    expr = [_moved(ident[i] + np.einsum("k,knd->nd", rng.normal(size=3), fields), rng) for i in range(20)]
    write_corpus(tmp_path / "e.h5", np.array(expr), generator.triangles, ids=[f"p{i}_smile" for i in range(20)],
                 dtype=np.float64)
    runner = CliRunner()
    res = runner.invoke(app, ["train", str(tmp_path / "n.h5"), "--expressions", str(tmp_path / "e.h5"),
                              "--out", str(tmp_path / "m.h5"), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "expression model: 3 components from 20 expression scans of 20 subjects" in res.output
    info = json.loads(runner.invoke(app, ["info", str(tmp_path / "m.h5"), "--json"]).output)
    assert info["expression_components"] == 3
    write_corpus(tmp_path / "e2.h5", np.array(expr[:2]), generator.triangles, ids=["q0_smile", "p1_smile"],
                 dtype=np.float64)
    res = runner.invoke(app, ["train", str(tmp_path / "n.h5"), "--expressions", str(tmp_path / "e2.h5"),
                              "--out", str(tmp_path / "m2.h5"), "--device", "cpu"])
    assert isinstance(res.exception, SSMError) and "q0_smile" in str(res.exception)
    assert not (tmp_path / "m2.h5").exists()
