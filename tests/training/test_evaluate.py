import numpy as np
import pytest

from ssm.io.corpus import Corpus, write_corpus
from ssm.training.evaluate import (
    components_grid,
    evaluate,
    generalisation_heldout,
    specificity,
)
from ssm.training.trainer import ModelTrainer


@pytest.fixture(scope="module")
def trained(small_corpus):
    return ModelTrainer(12, device="cpu").fit(small_corpus).model_


def test_components_grid():
    assert components_grid(1) == [1]
    assert components_grid(7) == [1, 2, 3, 4, 5, 6, 7]
    assert components_grid(12)[-1] == 12


def test_training_shapes_generalise_perfectly_with_all_components(tmp_path, generator):
    """A model reconstructs its own (noise-free, linear) training data exactly."""
    from ssm.synthetic.heads import sample_heads

    v, _ = sample_heads(generator, 30, seed=2)
    write_corpus(tmp_path / "c.h5", v, generator.triangles, dtype=np.float64)
    m = ModelTrainer(None, align="rigid", device="cpu").fit(tmp_path / "c.h5").model_
    with Corpus(tmp_path / "c.h5") as c:
        curve = generalisation_heldout(m, c)
    assert curve[-1].v2v_mean < 1e-3 and curve[-1].v2s_mean < 1e-3  # mm
    errors = [p.v2v_mean for p in curve]
    assert all(a >= b - 1e-9 for a, b in zip(errors, errors[1:]))


def test_heldout_curves_behave(trained, tmp_path, generator):
    from ssm.synthetic.heads import sample_heads

    v, _ = sample_heads(generator, 15, seed=99)
    write_corpus(tmp_path / "t.h5", v, generator.triangles)
    with Corpus(tmp_path / "t.h5") as t:
        gen = generalisation_heldout(trained, t)
    assert gen[0].v2v_mean > gen[-1].v2v_mean
    # the surface distance never exceeds the correspondence distance
    assert all(p.v2s_mean <= p.v2v_mean + 1e-9 for p in gen)


def test_specificity_of_a_mean_only_model_is_distance_to_nearest(small_corpus, trained):
    with Corpus(small_corpus) as c:
        spec = specificity(trained, c, n_samples=20, seed=1)
        assert len(spec) == len(components_grid(trained.n_components))
        assert all(p.v2s_mean <= p.v2v_mean + 1e-9 for p in spec)
        # samples with more components are more varied: farther from their nearest subject
        assert spec[-1].v2v_mean > spec[0].v2v_mean * 0.9


def test_evaluate_kfold_writes_json_and_png(small_corpus, trained, tmp_path):
    with Corpus(small_corpus) as c:
        ev = evaluate(trained.truncate(6), c, folds=3, n_samples=10)
    assert ev.generalisation_mode == "3-fold"
    assert np.all(np.diff(ev.compactness) >= 0) and ev.compactness[-1] <= 1.0
    ev.plot(tmp_path / "e.png")
    assert (tmp_path / "e.png").stat().st_size > 1000
    import json

    data = json.loads(ev.to_json())
    assert data["generalisation"][0]["n_components"] == 1
