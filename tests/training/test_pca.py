import numpy as np
import pytest
from sklearn.decomposition import PCA

from ssm.training.pca import pca_exact, pca_streamed


def _data(s=300, d=600, rank=12, seed=0):
    rng = np.random.default_rng(seed)
    comps, _ = np.linalg.qr(rng.normal(size=(d, rank)))
    sd = np.geomspace(50, 2, rank)
    x = (rng.normal(size=(s, rank)) * sd) @ comps.T + rng.normal(scale=0.05, size=(s, d))
    return x - x.mean(0)


@pytest.mark.parametrize("shape", [(300, 600), (600, 200)])
def test_exact_matches_scikit_learn(shape):
    x = _data(*shape)
    basis, var, total, _ = pca_exact(x, 10)
    ref = PCA(10, svd_solver="full").fit(x)
    np.testing.assert_allclose(var, ref.explained_variance_, rtol=1e-8)
    np.testing.assert_allclose(np.abs(basis.T @ ref.components_.T), np.eye(10), atol=1e-6)
    assert total == pytest.approx(x.var(axis=0, ddof=1).sum(), rel=1e-10)


@pytest.mark.parametrize("block", [7, 64, 300])
def test_streamed_matches_exact_for_any_chunking(block):
    x = _data()
    eb, ev, et, _ = pca_exact(x, 12)

    def blocks():
        for i in range(0, len(x), block):
            yield x[i:i + block]

    sb, sv, st, mu = pca_streamed(blocks, len(x), x.shape[1], 12, seed=1)
    np.testing.assert_allclose(sv, ev, rtol=1e-6)
    np.testing.assert_allclose(np.abs(np.sum(sb * eb, axis=0)), 1.0, atol=1e-6)
    assert st == pytest.approx(et, rel=1e-9)
    # deterministic sign convention: identical, not just up to sign
    np.testing.assert_allclose(sb, eb, atol=1e-5)


def test_streamed_rejects_wrong_row_count():
    x = _data(50, 40)
    with pytest.raises(ValueError, match="covered"):
        pca_streamed(lambda: iter([x[:10]]), 50, 40, 3)


def test_both_paths_centre_uncentred_rows():
    x = _data() + 7.0
    eb, ev, _, emu = pca_exact(x, 5)
    sb, sv, _, smu = pca_streamed(lambda: iter([x[:100], x[100:]]), len(x), x.shape[1], 5)
    np.testing.assert_allclose(emu, x.mean(0), atol=1e-12)
    np.testing.assert_allclose(smu, x.mean(0), atol=1e-12)
    np.testing.assert_allclose(sv, ev, rtol=1e-6)
    np.testing.assert_allclose(ev, PCA(5).fit(x).explained_variance_, rtol=1e-8)
