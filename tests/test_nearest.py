"""Nearest neighbours: the brute-force device search against scipy's KD-tree."""

import numpy as np
import pytest
from scipy.spatial import cKDTree

from ssm.geometry.nearest import DevicePoints, nearest


def _devices():
    import torch

    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", _devices())
@pytest.mark.parametrize("offset", [0.0, 1e4])  # a head far from the origin (scanner frame, mm)
def test_brute_force_matches_the_kd_tree(offset, device):
    rng = np.random.default_rng(3)
    pts = rng.normal(size=(20000, 3)) * 80.0 + offset
    q = np.concatenate([pts[rng.choice(len(pts), 3000)] + rng.normal(size=(3000, 3)) * 0.5,
                        rng.normal(size=(50, 3)) * 400.0 + offset])  # some far from every point
    d0, j0 = cKDTree(pts).query(q, distance_upper_bound=2.0)
    d1, j1 = DevicePoints(pts, device).query(q, 2.0)
    hit = np.isfinite(d0)
    assert (np.isfinite(d1) == hit).all()
    assert (j1[~hit] == len(pts)).all()
    # the same point, or one at the same distance to float32 rounding (exact distances)
    assert (j0[hit] == j1[hit]).mean() > 0.999
    np.testing.assert_allclose(d1[hit], d0[hit], atol=1e-6)


def test_nearest_without_a_bound_and_empty_queries():
    pts = np.array([[0.0, 0, 0], [10, 0, 0], [0, 10, 0]])
    q = np.array([[9.0, 1, 0], [1, 8, 0]])
    for device in (None, "cpu"):
        d, j = nearest(pts, q, device=device) if device is None else DevicePoints(pts, device).query(q)
        assert list(j) == [1, 2]
        np.testing.assert_allclose(d, [np.sqrt(2), np.sqrt(5)])
    d, j = DevicePoints(pts, "cpu").query(np.zeros((0, 3)), 1.0)
    assert d.shape == (0,) and j.shape == (0,)
