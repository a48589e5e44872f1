"""Mesh operators on arrays: face normals, and point-to-surface distances on dense meshes."""

import numpy as np
import trimesh
from scipy.spatial import cKDTree

from ssm.geometry import surface_distance
from ssm.geometry.mesh_ops import face_normals, vertex_normals
from ssm.geometry.surface_distance import point_to_surface


def test_face_normals_match_cross_products():
    m = trimesh.creation.icosphere(subdivisions=2)
    v = m.vertices * [30.0, 20.0, 25.0]
    f = np.asarray(m.faces)
    want = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    np.testing.assert_allclose(face_normals(v, f), want, rtol=1e-12, atol=1e-9)
    n = vertex_normals(v, f, face_normals(v, f))
    np.testing.assert_allclose(n, vertex_normals(v, f), atol=1e-12)
    assert (np.einsum("ij,ij->i", n, v) > 0).all()  # outward on a convex surface


def test_local_point_to_surface_matches_the_whole_mesh(monkeypatch):
    """Above LOCAL_TRIANGLES, only triangles near the queries (and long ones) are used:
    the distances must be those against the whole mesh, bridging triangles included."""
    grid = trimesh.creation.box().subdivide().subdivide().subdivide()
    v = np.asarray(grid.vertices) * 100.0
    f = np.asarray(grid.faces)
    # a long sliver from the box's side to a far point: queries near its middle are closest to it
    f = np.vstack([f, [[len(v), len(v) + 1, len(v) + 2]]])
    v = np.vstack([v, [[50.0, 0.0, -1.0], [50.0, 0.0, 1.0], [400.0, 0.0, 0.0]]])
    # and a small dense patch 30 mm beside the sliver: its vertices are the queries' nearest
    patch = trimesh.creation.box().subdivide().subdivide()
    f = np.vstack([f, np.asarray(patch.faces) + len(v)])
    v = np.vstack([v, np.asarray(patch.vertices) * 5.0 + [225.0, 30.0, 0.0]])
    rng = np.random.default_rng(0)
    q = np.vstack([rng.uniform(-80, 80, (300, 3)) * [0.5, 1, 1] - [40, 0, 0], [[225.0, 0.2, 0.1], [300.0, -0.3, 0.1]]])
    want = point_to_surface(q, v, f)
    monkeypatch.setattr(surface_distance, "LOCAL_TRIANGLES", 10)
    got = point_to_surface(q, v, f, cKDTree(v), k=4)
    np.testing.assert_allclose(got, want, atol=1e-4)
