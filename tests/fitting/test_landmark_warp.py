"""Landmark warp: a GP on landmark residuals is ~0 for noise and recovers a smooth field."""

import numpy as np

from ssm.fitting.refine.landmark_warp import MIN_LANDMARKS, landmark_warp


def _grid(n_side: int, size_mm: float) -> np.ndarray:
    """(n_side**2, 3) points on a curved 'face' patch, mm."""
    u, v = np.meshgrid(np.linspace(-size_mm / 2, size_mm / 2, n_side), np.linspace(-size_mm / 2, size_mm / 2, n_side))
    z = 0.004 * (u ** 2 + v ** 2)
    return np.stack([u.ravel(), v.ravel(), z.ravel()], 1)


def _bump(p: np.ndarray) -> np.ndarray:
    """(P, 3) a smooth 6 mm 'jaw drop' around (0, -40) mm, zero far from it."""
    w = np.exp(-0.5 * (((p[:, :2] - [0.0, -40.0]) ** 2).sum(1)) / 20.0 ** 2)
    return w[:, None] * np.array([0.0, -5.0, 3.0])


def test_noise_only_residuals_give_almost_no_warp():
    rng = np.random.default_rng(0)
    lm = _grid(9, 140.0)  # 81 landmarks over the face
    verts = _grid(40, 160.0)
    warp = landmark_warp(lm, rng.normal(0, 1.5, lm.shape), verts)
    assert warp is not None
    assert np.median(warp.magnitude) < 0.3 and warp.magnitude.max() < 1.0  # noise 1.5 mm per axis
    assert 1.0 < warp.noise_mm < 2.0


def test_smooth_systematic_residuals_are_recovered_where_they_are():
    verts = _grid(40, 160.0)
    truth = _bump(verts)
    big = np.linalg.norm(truth, axis=1) > 3.0
    far = np.linalg.norm(verts[:, :2] - [0.0, 60.0], axis=1) < 20.0
    for seed in range(3):
        rng = np.random.default_rng(seed)
        lm = np.vstack([_grid(9, 140.0), _grid(5, 40.0) + [0.0, -40.0, 0.0]])  # denser at the 'mouth'
        warp = landmark_warp(lm, _bump(lm) + rng.normal(0, 1.5, lm.shape), verts)
        err = np.linalg.norm(warp.field - truth, axis=1)
        assert err[big].mean() < 0.35 * np.linalg.norm(truth[big], axis=1).mean()  # most of the 4 mm drop
        # posterior variance: below the prior's (3 a^2) among the landmarks, the prior's far away
        prior = 3.0 * warp.amplitude_mm ** 2
        assert warp.variance[big].max() < 0.5 * prior
        far_away = landmark_warp(lm, _bump(lm) + rng.normal(0, 1.5, lm.shape), np.array([[0.0, 0.0, 500.0]]))
        assert np.isclose(far_away.variance[0], 3.0 * far_away.amplitude_mm ** 2, rtol=1e-6)
        # where the landmarks agree with the fit: under their own noise (2.4 mm in 3D);
        # the amplitude is one for the whole face, so some of the noise is followed there
        assert warp.magnitude[far].mean() < 1.5


def test_too_few_or_missing_landmarks():
    lm = _grid(9, 140.0)
    res = np.zeros_like(lm)
    res[MIN_LANDMARKS - 1:] = np.nan  # NaN rows are dropped: too few left
    assert landmark_warp(lm, res, lm) is None
    assert landmark_warp(lm[: MIN_LANDMARKS - 1], np.zeros((MIN_LANDMARKS - 1, 3)), lm) is None
    exact = landmark_warp(lm, np.zeros_like(lm), lm)
    assert exact is not None and np.allclose(exact.field, 0.0)
