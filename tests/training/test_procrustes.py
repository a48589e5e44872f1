import numpy as np
from scipy.spatial.transform import Rotation

from ssm.geometry.similarity import Similarity, apply_similarity, fit_similarity
from ssm.io.corpus import Corpus, write_corpus
from ssm.training.procrustes import generalized_procrustes


def test_fit_similarity_recovers_known_transform():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 3))
    r = Rotation.random(random_state=2).as_matrix()
    y = 1.7 * x @ r.T + [3.0, -2.0, 5.0]
    s, rr, t = fit_similarity(x, y)
    assert abs(s - 1.7) < 1e-12
    np.testing.assert_allclose(rr, r, atol=1e-12)
    np.testing.assert_allclose(t, [3.0, -2.0, 5.0], atol=1e-12)
    s, rr, t = fit_similarity(x, y, scale=False)
    assert s == 1.0 and np.allclose(np.linalg.det(rr), 1.0)


def test_weights_ignore_outliers_with_zero_weight():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 3))
    y = x @ Rotation.random(random_state=3).as_matrix().T
    y[:5] += 100.0
    w = np.ones(40)
    w[:5] = 0
    s, r, t = fit_similarity(x, y, weights=w)
    np.testing.assert_allclose(s * x[5:] @ r.T + t, y[5:], atol=1e-10)


def test_similarity_matrix_round_trip():
    sim = Similarity(2.5, Rotation.random(random_state=4).as_matrix(), np.array([1.0, 2.0, 3.0]))
    back = Similarity.from_matrix(sim.matrix())
    np.testing.assert_allclose(back.matrix(), sim.matrix(), atol=1e-12)
    p = np.random.default_rng(0).normal(size=(5, 3))
    np.testing.assert_allclose(sim.inverse().apply(sim.apply(p)), p, atol=1e-12)


def test_gpa_makes_transformed_copies_identical(tmp_path):
    rng = np.random.default_rng(5)
    base = rng.normal(size=(30, 3)) * 50
    n = 12
    r = Rotation.random(n, random_state=6).as_matrix()
    s = rng.uniform(0.5, 2.0, n)
    t = rng.normal(size=(n, 3)) * 100
    write_corpus(tmp_path / "c.h5", apply_similarity(np.broadcast_to(base, (n, 30, 3)), s, r, t), None,
                 dtype=np.float64)
    with Corpus(tmp_path / "c.h5") as c:
        g = generalized_procrustes(c, "similarity", chunk=5)
        aligned = g.align(np.arange(n), c.read())
    assert g.converged
    # GPA arithmetic is float32 on the bulk data: 1e-6 relative (0.1 micrometre on a head)
    np.testing.assert_allclose(aligned, np.broadcast_to(g.mean, aligned.shape), atol=1e-4)
    # the mean keeps the inputs' average centroid size
    size = np.sqrt(((g.mean - g.mean.mean(0)) ** 2).sum(1).mean())
    base_size = np.sqrt(((base - base.mean(0)) ** 2).sum(1).mean())
    assert abs(size - base_size * s.mean()) < 1e-5 * size


def test_known_scale_is_kept_and_translation_follows():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(30, 3))
    r0 = Rotation.random(random_state=8).as_matrix()
    y = 0.1 * x @ r0.T + [1.0, 2.0, 3.0]
    s, r, t = fit_similarity(x, y, scale=0.1, weights=rng.uniform(0.5, 1.0, 30))
    assert s == 0.1
    np.testing.assert_allclose(r, r0, atol=1e-10)
    np.testing.assert_allclose(t, [1.0, 2.0, 3.0], atol=1e-10)
