"""Surface distances and cloud normals without Open3D: the numpy stand-ins against it."""

import numpy as np
import pytest
import trimesh

import ssm.geometry.surface_distance as surface_distance
from ssm.geometry.surface_distance import (
    SurfaceQuery,
    TriangleSearch,
    closest_on_triangles,
)


@pytest.fixture()
def no_open3d(monkeypatch):
    """As if Open3D did not import (no wheel, Debian's libusb missing)."""
    monkeypatch.setattr(surface_distance, "_OPEN3D", [None])


def test_closest_point_on_a_triangle_in_each_region():
    a, b, c = np.array([0.0, 0, 0]), np.array([2.0, 0, 0]), np.array([0.0, 2, 0])
    p = np.array([[0.5, 0.5, 3.0],  # over the face
                  [-1.0, -1.0, 0.0],  # beyond corner a
                  [3.0, -0.5, 1.0],  # beyond corner b
                  [1.0, -1.0, 0.0],  # beside edge ab
                  [2.0, 2.0, 0.0],  # beside edge bc
                  [-1.0, 1.0, 0.0]])  # beside edge ac
    want = np.array([[0.5, 0.5, 0], [0, 0, 0], [2, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]])
    n = len(p)
    q, uv = closest_on_triangles(p, np.tile(a, (n, 1)), np.tile(b, (n, 1)), np.tile(c, (n, 1)))
    np.testing.assert_allclose(q, want, atol=1e-12)
    np.testing.assert_allclose(a + uv[:, :1] * (b - a) + uv[:, 1:] * (c - a), want, atol=1e-12)
    # a degenerate (zero-area) triangle still gives a point on it
    q, _ = closest_on_triangles(np.array([[1.0, 1.0, 0.0]]), a[None], b[None], (a + b)[None] / 2)
    assert np.isfinite(q).all() and abs(q[0, 1]) < 1e-12


def test_numpy_search_matches_open3d_near_the_surface():
    """A noisy sphere with holes and a few long triangles bridging it (a scan's border)."""
    rng = np.random.default_rng(0)
    m = trimesh.creation.icosphere(4)
    v = m.vertices * 50 + rng.normal(0, 0.5, m.vertices.shape)
    f = np.concatenate([m.faces[rng.random(len(m.faces)) > 0.05], [[0, 100, 200], [5, 600, 900]]])
    q = v[rng.choice(len(v), 5000)] + rng.normal(0, 2.0, (5000, 3))
    pts, tri, uv, d = TriangleSearch(v, f).closest(q)
    np.testing.assert_allclose(d, SurfaceQuery(v, f).distance(q), atol=1e-4)  # Open3D is float32
    np.testing.assert_allclose(np.linalg.norm(pts - q, axis=1), d, atol=1e-9)
    corners = v[f[tri]]
    np.testing.assert_allclose((1 - uv.sum(1, keepdims=True)) * corners[:, 0] + uv[:, :1] * corners[:, 1]
                               + uv[:, 1:] * corners[:, 2], pts, atol=1e-9)


def test_surface_query_and_cloud_normals_fall_back_to_numpy(no_open3d):
    from ssm.fitting.prepare.scan import pca_normals

    rng = np.random.default_rng(1)
    m = trimesh.creation.icosphere(3)
    v, f = m.vertices * 30, m.faces
    q = rng.normal(size=(500, 3)) * 10 + v[rng.choice(len(v), 500)]
    sq = SurfaceQuery(v, f)
    assert sq._search is not None
    d = sq.distance(q)
    want = np.abs(trimesh.proximity.ProximityQuery(trimesh.Trimesh(v, f)).signed_distance(q))
    np.testing.assert_allclose(d, want, atol=1e-6)
    u, w = rng.uniform(0.3, 2.8, 3000), rng.uniform(0, 2 * np.pi, 3000)
    p = 50 * np.stack([np.sin(u) * np.cos(w), np.sin(u) * np.sin(w), np.cos(u)], 1)
    n = pca_normals(p)
    assert np.abs((n * p / 50.0).sum(1)).min() > 0.99  # radial, of either side
