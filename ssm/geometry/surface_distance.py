"""Point-to-surface distances against a triangle mesh (Open3D ray-casting scene)."""

from __future__ import annotations

import numpy as np


class SurfaceQuery:
    """Closest-point queries against one triangle mesh.

    vertices : (V, 3) float, triangles : (M, 3) int. Queries are (P, 3) float in the
    same frame and units; results are float64.
    """

    def __init__(self, vertices: np.ndarray, triangles: np.ndarray):
        import open3d as o3d

        self._scene = o3d.t.geometry.RaycastingScene()
        mesh = o3d.t.geometry.TriangleMesh()
        mesh.vertex.positions = o3d.core.Tensor(np.ascontiguousarray(vertices, dtype=np.float32))
        mesh.triangle.indices = o3d.core.Tensor(np.ascontiguousarray(triangles, dtype=np.int32))
        self._scene.add_triangles(mesh)
        self._o3c = o3d.core

    def _q(self, points: np.ndarray):
        return self._o3c.Tensor(np.ascontiguousarray(points, dtype=np.float32))

    def distance(self, points: np.ndarray) -> np.ndarray:
        """(P,) unsigned distance from each point to the surface."""
        return self._scene.compute_distance(self._q(points)).numpy().astype(np.float64)

    def closest(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Closest surface points (P, 3), their triangle ids (P,), and barycentrics (P, 2)."""
        ans = self._scene.compute_closest_points(self._q(points))
        return (ans["points"].numpy().astype(np.float64), ans["primitive_ids"].numpy().astype(np.int64),
                ans["primitive_uvs"].numpy().astype(np.float64))


def point_to_surface(points: np.ndarray, vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """(P,) distance from points (P, 3) to the mesh (vertices (V, 3), triangles (M, 3))."""
    return SurfaceQuery(vertices, triangles).distance(points)
