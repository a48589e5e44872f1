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


def test_surface_distances_keep_their_precision_far_from_the_origin():
    """A scan 100 km from its origin (georeferenced photogrammetry, in metres): float32
    coordinates would round it to 8 mm; the queries run about the mesh's centre."""
    from ssm.geometry.surface_distance import SurfaceQuery, point_to_surface

    ii, jj = np.meshgrid(np.arange(20), np.arange(20), indexing="ij")
    v = np.stack([ii.ravel() * 0.01, jj.ravel() * 0.01, np.zeros(400)], 1)  # 1 cm grid, metres
    a = (ii[:-1, :-1] * 20 + jj[:-1, :-1]).ravel()
    f = np.concatenate([np.stack([a, a + 20, a + 21], 1), np.stack([a, a + 21, a + 1], 1)])
    q = np.array([[0.055, 0.071, 0.0003], [0.1, 0.1, -0.0012]])  # 0.3 and 1.2 mm off the plane
    for offset in (0.0, 1e5):
        shift = np.array([offset, -offset, offset])
        np.testing.assert_allclose(point_to_surface(q + shift, v + shift, f), [3e-4, 1.2e-3], atol=2e-6)
        closest, _, _ = SurfaceQuery(v + shift, f).closest(q + shift)
        np.testing.assert_allclose(closest - shift, q * [1, 1, 0], atol=2e-6)
