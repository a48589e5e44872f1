import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from ssm.errors import SSMError
from ssm.geometry.similarity import apply_similarity, similarity_tangent_basis
from ssm.io.corpus import write_corpus
from ssm.training.trainer import ModelTrainer


def _largest_angle(a, b):
    qa, _ = np.linalg.qr(a)
    qb, _ = np.linalg.qr(b)
    s = np.linalg.svd(qa.T @ qb, compute_uv=False)
    return float(np.arccos(np.clip(s.min(), -1, 1)))


@pytest.mark.slow
def test_recovers_known_ict_subspace_and_variances(tmp_path, ict):
    """2,000 subjects from 20 ICT modes, random similarity transforms, streamed PCA."""
    mean = ict["mean"].astype(np.float64)
    modes = ict["identity_modes"][:20].astype(np.float64).reshape(20, -1).T  # (D, 20)
    # Procrustes removes similarity motions: the truth is the modes' part orthogonal to them
    tangent = similarity_tangent_basis(mean)
    modes = modes - tangent @ (tangent.T @ modes)
    n = 2000
    rng = np.random.default_rng(0)
    c = rng.standard_normal((n, 20))
    shapes = (mean.reshape(-1) + c @ modes.T).reshape(n, -1, 3)
    r = Rotation.random(n, random_state=1).as_matrix()
    s = rng.uniform(0.8, 1.25, n)
    t = rng.normal(0, 200, (n, 3))
    write_corpus(tmp_path / "ict.h5", (apply_similarity(shapes[i:i + 250], s[i:i + 250], r[i:i + 250],
                                                        t[i:i + 250]) for i in range(0, n, 250)),
                 ict["triangles"])
    del shapes
    model = ModelTrainer(20, pca="streamed", device="cpu").fit(tmp_path / "ict.h5").model_
    # truth: eigen-decomposition of the sample covariance of the drawn shapes
    cov_c = np.cov(c, rowvar=False)
    w, v = np.linalg.eigh(cov_c)
    half = v @ np.diag(np.sqrt(w)) @ v.T
    tv, tvec = np.linalg.eigh(half @ (modes.T @ modes) @ half)
    true_var = tv[::-1]
    true_basis = modes @ half @ tvec[:, ::-1]
    # the model lives in the pose of the Procrustes mean: rotate the truth there
    from ssm.geometry.similarity import fit_similarity

    sc, rot, _ = fit_similarity(mean, model.mean)
    true_basis = (true_basis.T.reshape(20, -1, 3) @ rot.T).reshape(20, -1).T
    angle = _largest_angle(true_basis, model.basis)
    assert angle < 0.01, angle
    np.testing.assert_allclose(model.variances / sc ** 2, true_var, rtol=0.05)


def test_exact_and_streamed_training_agree(small_corpus):
    a = ModelTrainer(10, pca="exact", device="cpu").fit(small_corpus).model_
    b = ModelTrainer(10, pca="streamed", n_iter=6, chunk=17, device="cpu").fit(small_corpus).model_
    np.testing.assert_allclose(b.variances[:8], a.variances[:8], rtol=1e-4)
    np.testing.assert_allclose(np.abs(np.sum(a.basis[:, :8] * b.basis[:, :8], 0)), 1, atol=1e-4)
    np.testing.assert_allclose(a.mean, b.mean, atol=1e-4)  # mm; the streamed rows are float32
    assert a.provenance["pca_method"] == "exact" and b.provenance["pca_method"] == "streamed"


def test_variance_fraction_and_noise(small_corpus):
    m = ModelTrainer(0.99, device="cpu").fit(small_corpus).model_
    frac = m.variance_fraction()
    assert frac[-1] >= 0.99 and (m.n_components == 1 or frac[-2] < 0.99)
    assert m.noise_variance > 0
    total = m.provenance["total_variance"]
    d = 3 * m.n_vertices
    assert m.noise_variance == pytest.approx((total - m.variances.sum()) / (d - m.n_components))


def test_pruning_drops_injected_outliers(tmp_path, generator):
    from ssm.synthetic.heads import sample_heads

    v, _ = sample_heads(generator, 76, seed=11)
    bad = generator.heads(np.random.default_rng(2).standard_normal((4, generator.fields.shape[0])) * 6)
    ids = [f"ok{i}" for i in range(76)] + [f"outlier{i}" for i in range(4)]
    write_corpus(tmp_path / "c.h5", np.concatenate([v, bad]), generator.triangles, ids=ids)
    tr = ModelTrainer(8, prune=0.05, device="cpu").fit(tmp_path / "c.h5")
    assert sorted(p.subject_id for p in tr.pruned_) == [f"outlier{i}" for i in range(4)]
    assert tr.model_.provenance["n_subjects"] == 76
    assert len(tr.model_.provenance["pruned"]) == 4


def test_partial_registrations_are_imputed(tmp_path, generator):
    from ssm.synthetic.heads import sample_heads

    v, _ = sample_heads(generator, 120, seed=4, pose=False)
    write_corpus(tmp_path / "full.h5", v, generator.triangles, dtype=np.float64)
    masks = np.ones(v.shape[:2], bool)
    back = generator.mean[:, 2] < -30  # back of the head missing in a third of the subjects
    masks[::3][:, back] = False
    v2 = v.copy()
    v2[~masks] = 0.0  # garbage where unregistered
    write_corpus(tmp_path / "part.h5", v2, generator.triangles, masks=masks, dtype=np.float64)
    full = ModelTrainer(8, align="rigid", device="cpu").fit(tmp_path / "full.h5").model_
    part = ModelTrainer(8, align="rigid", device="cpu").fit(tmp_path / "part.h5").model_
    from ssm.geometry.similarity import fit_similarity

    _, r, t = fit_similarity(part.mean, full.mean, scale=False)
    err = np.linalg.norm(part.mean @ r.T + t - full.mean, axis=1)
    assert err.mean() < 0.3 and err.max() < 1.5  # the back is estimated from 2/3 of the subjects
    # held-out full heads are reconstructed almost as well as by the model of complete data
    test, _ = sample_heads(generator, 30, seed=9, pose=False)

    def recon_error(m):
        errs = []
        for x in test:
            s, rr, tt = fit_similarity(x, m.mean, scale=False)
            xa = x @ rr.T + tt
            errs.append(np.linalg.norm(m.reconstruct(xa) - xa, axis=1).mean())
        return float(np.mean(errs))

    e_full, e_part = recon_error(full), recon_error(part)
    assert e_part < 2.2 * e_full and e_part < 0.5, (e_full, e_part)


def test_landmark_weighted_alignment(small_corpus):
    m = ModelTrainer(5, align_weights="landmarks", device="cpu").fit(small_corpus).model_
    assert m.n_components == 5 and m.provenance["align_weights"] == "landmarks"
    with pytest.raises(SSMError, match="no template region 'ears'"):
        ModelTrainer(5, align_weights="region:ears", device="cpu").fit(small_corpus)


def test_bad_parameters_and_devices(small_corpus, tmp_path):
    with pytest.raises(SSMError, match="--align"):
        ModelTrainer(align="affine").fit(small_corpus)
    with pytest.raises(SSMError, match="--prune"):
        ModelTrainer(prune=1.5).fit(small_corpus)
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(SSMError, match="no CUDA GPU"):
            ModelTrainer(3, device="cuda").fit(small_corpus)
    write_corpus(tmp_path / "one.h5", np.zeros((1, 5, 3)), None)
    with pytest.raises(SSMError, match="at least 2 subjects"):
        ModelTrainer().fit(tmp_path / "one.h5")
