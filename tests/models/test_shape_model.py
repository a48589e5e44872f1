import numpy as np
import pytest
from scipy.stats import multivariate_normal

from ssm.models.shape_model import ShapeModel


def _model(noise=0.05, n=6, k=3, seed=0):
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.normal(size=(3 * n, k)))
    return ShapeModel(rng.normal(size=(n, 3)), basis, np.array([9.0, 4.0, 1.0])[:k], noise,
                      triangles=np.array([[0, 1, 2], [2, 3, 4]]), landmarks={"a": 0, "b": 5})


def test_instance_and_project_recover_coefficients():
    m = _model(noise=0.0)
    c = np.array([1.5, -0.7, 0.2])
    x = m.instance(c)
    assert x.shape == (6, 3)
    np.testing.assert_allclose(m.project(x), c, atol=1e-8)
    np.testing.assert_allclose(m.instance(), m.mean)


def test_project_partial_shape_matches_least_squares():
    m = _model(noise=1e-9)
    c = np.array([0.3, 1.1, -2.0])
    mask = np.array([True, True, False, True, True, False])
    x = m.instance(c)
    x[~mask] = 1e6  # unobserved vertices must not matter
    np.testing.assert_allclose(m.project(x, mask=mask), c, atol=1e-6)


def test_map_shrinks_towards_prior_with_noise():
    m = _model(noise=2.0)
    c = np.array([1.0, 1.0, 1.0])
    got = m.project(m.instance(c))
    np.testing.assert_allclose(got, m.variances / (m.variances + 2.0) * c, rtol=1e-9)


def test_log_prob_matches_dense_gaussian():
    m = _model(noise=0.3)
    cov = (m.basis * m.variances) @ m.basis.T + 0.3 * np.eye(18)
    x = m.sample(1, seed=1, with_noise=True)[0]
    ref = multivariate_normal(m.mean.reshape(-1), cov).logpdf(x.reshape(-1))
    assert m.log_prob(x) == pytest.approx(ref, rel=1e-9)


def test_sample_statistics_and_seed():
    m = _model()
    a = m.sample(4000, seed=7)
    np.testing.assert_array_equal(a, m.sample(4000, seed=7))
    coeffs = (a - m.mean).reshape(4000, -1) @ m.basis
    np.testing.assert_allclose(coeffs.var(axis=0), m.variances, rtol=0.08)


def test_model_is_immutable_and_validates():
    m = _model()
    with pytest.raises(ValueError):
        m.mean[0, 0] = 1.0
    with pytest.raises(ValueError, match="basis must be"):
        ShapeModel(np.zeros((4, 3)), np.zeros((10, 2)), np.ones(2))
    with pytest.raises(ValueError, match="landmark"):
        ShapeModel(np.zeros((4, 3)), np.zeros((12, 1)), np.ones(1), landmarks={"x": 9})
    t = m.truncate(2)
    assert t.n_components == 2 and m.n_components == 3


def test_posterior_matches_dense_gaussian_conditioning():
    m = _model(noise=0.0)
    idx = np.array([1, 4])
    y = m.instance([1.0, -1.0, 0.5])[idx] + 0.1
    var = 0.2
    post = m.posterior(idx, y, covariances=var)
    # dense reference: condition N(mu, C) on the observed coordinates
    C = (m.basis * m.variances) @ m.basis.T
    rows = np.concatenate([np.arange(3 * i, 3 * i + 3) for i in idx])
    Coo = C[np.ix_(rows, rows)] + var * np.eye(len(rows))
    K = C[:, rows] @ np.linalg.inv(Coo)
    mean_ref = m.mean.reshape(-1) + K @ (y.reshape(-1) - m.mean.reshape(-1)[rows])
    cov_ref = C - K @ C[rows, :]
    np.testing.assert_allclose(post.mean.reshape(-1), mean_ref, atol=1e-10)
    np.testing.assert_allclose((post.basis * post.variances) @ post.basis.T, cov_ref, atol=1e-10)
    np.testing.assert_allclose(post.vertex_covariances(), np.stack(
        [cov_ref[3 * i:3 * i + 3, 3 * i:3 * i + 3] for i in range(6)]), atol=1e-10)
    # observed vertices become more certain than unobserved ones
    sd = post.vertex_stddev(include_noise=False)
    assert sd[idx].max() < m.vertex_stddev(include_noise=False)[idx].min()
