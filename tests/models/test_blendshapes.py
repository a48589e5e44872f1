"""Named blendshapes: offsets by name, the fit's expression basis they make, named weights."""

import numpy as np
import pytest

from ssm.models.blendshapes import WEIGHT_SD, Blendshapes, named_weights
from ssm.models.shape_model import ShapeModel


def _shapes():
    rng = np.random.default_rng(0)
    return Blendshapes(("jawOpen", "mouthSmile_L", "eyeBlink_R"), rng.normal(size=(3, 5, 3)).astype(np.float32))


def test_offsets_are_the_weighted_sum_of_the_named_shapes():
    bs = _shapes()
    want = 0.5 * bs.deltas[0].astype(float) + 0.2 * bs.deltas[2].astype(float)
    np.testing.assert_allclose(bs.offsets({"jawOpen": 0.5, "eyeBlink_R": 0.2}), want, rtol=1e-6)
    np.testing.assert_allclose(bs.offsets(np.array([0.5, 0.0, 0.2])), want, rtol=1e-6)
    with pytest.raises(KeyError, match="browDown"):
        bs.offsets({"browDown": 1.0})
    with pytest.raises(ValueError, match="unique"):
        Blendshapes(("a", "a"), np.zeros((2, 5, 3)))
    with pytest.raises(ValueError, match=r"\(E=2, N, 3\)"):
        Blendshapes(("a", "b"), np.zeros((3, 5, 3)))


def test_expression_model_keeps_each_named_shape_and_weights_come_back_by_name():
    bs = _shapes()
    like = ShapeModel(np.zeros((5, 3)), np.eye(15)[:, :2], np.ones(2))
    expr = bs.expression_model(like)
    # an instance with standardised coefficients c is the blend with weights WEIGHT_SD * c
    c = np.array([1.0, -0.5, 2.0])
    np.testing.assert_allclose(expr.instance(c), bs.offsets(WEIGHT_SD * c), atol=1e-5)
    w = named_weights(expr, c)
    assert list(w) == ["jawOpen", "mouthSmile_L", "eyeBlink_R"]
    assert w["jawOpen"] == pytest.approx(0.3) and w["mouthSmile_L"] == 0.0  # clipped to [0, 1]
    assert named_weights(like, np.zeros(2)) is None  # not a blendshape basis


def test_blendshapes_round_trip_through_a_model_file(tmp_path):
    from ssm.io.model_file import load_blendshapes, load_expression_model, load_model, save_model

    bs = _shapes()
    model = ShapeModel(np.random.default_rng(1).normal(size=(5, 3)), np.eye(15)[:, :2], np.array([4.0, 1.0]))
    save_model(model, tmp_path / "m.h5", blendshapes=bs)
    back = load_blendshapes(tmp_path / "m.h5")
    assert back.names == bs.names and back.value_range == (0.0, 1.0)
    np.testing.assert_array_equal(back.deltas, bs.deltas)
    expr = load_expression_model(tmp_path / "m.h5")  # the named shapes, not orthogonalised
    assert expr.provenance["blendshapes"] == list(bs.names)
    np.testing.assert_allclose(expr.instance([1.0, 0, 0]), bs.offsets({"jawOpen": WEIGHT_SD}), atol=1e-5)
    save_model(model, tmp_path / "plain.h5")
    assert load_blendshapes(tmp_path / "plain.h5") is None and load_model(tmp_path / "plain.h5").n_components == 2
