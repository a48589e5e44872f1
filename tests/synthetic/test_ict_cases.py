"""Held-out ICT cases: the expressions are the named blendshapes they say."""



import numpy as np
import pytest


def test_expression_offsets_sum_named_blendshapes_and_reject_unknown_names():
    """The held-out expression is the weighted sum of the named ICT blendshapes; a name
    the model lacks raises instead of being left out (it once dropped the brow raise)."""
    from ssm.synthetic.ict_cases import HELDOUT_EXPRESSION, ICT, expression_offsets

    rng = np.random.default_rng(0)
    names = ("jawOpen", "mouthSmile_L", "mouthSmile_R", "browInnerUp_L", "browInnerUp_R", "eyeBlink_L")
    deltas = rng.standard_normal((len(names), 4, 3))
    ict = ICT(np.zeros((4, 3)), np.zeros((1, 4, 3)), deltas, names, np.zeros((0, 3), int), np.arange(4), 4)
    got = expression_offsets(ict, HELDOUT_EXPRESSION)
    want = sum(HELDOUT_EXPRESSION[nm] * deltas[names.index(nm)] for nm in HELDOUT_EXPRESSION)
    np.testing.assert_allclose(got, want)
    with pytest.raises(KeyError, match="browInnerUp"):
        expression_offsets(ict, {"browInnerUp": 0.5})
