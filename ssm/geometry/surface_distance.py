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


#: above this many triangles, a query set of known vertices builds its scene from the
#: triangles around the queries only (the BVH of a 6M-triangle scan takes 2 s to build)
LOCAL_TRIANGLES = 200_000


def point_to_surface(points: np.ndarray, vertices: np.ndarray, triangles: np.ndarray,
                     vertex_tree=None, k: int = 16) -> np.ndarray:
    """(P,) distance from points (P, 3) to the mesh (vertices (V, 3), triangles (M, 3)).

    vertex_tree : a ``cKDTree`` of ``vertices``; with it, a mesh of more than
    :data:`LOCAL_TRIANGLES` is cut down to the triangles that touch one of each point's
    ``k`` nearest vertices, and those with an edge over 4x the median (bridging a gap or
    at a border: they reach past their corners' neighbourhoods). On a scan the closest
    point lies on one of them; where it does not, the distance is an upper bound.
    """
    tri = np.asarray(triangles)
    if vertex_tree is not None and len(tri) > LOCAL_TRIANGLES:
        _, near = vertex_tree.query(points, k=min(k, len(vertices)), workers=-1)
        mark = np.zeros(len(vertices), bool)
        mark[np.asarray(near).ravel()] = True
        v = np.asarray(vertices, dtype=np.float32)
        a, b, c = v[tri[:, 0]], v[tri[:, 1]], v[tri[:, 2]]
        edge2 = np.maximum(np.maximum(((a - b) ** 2).sum(1), ((b - c) ** 2).sum(1)), ((c - a) ** 2).sum(1))
        # long triangles (bridging a gap, at a border) reach past their corners' neighbourhoods
        tri = tri[mark[tri].any(axis=1) | (edge2 > 16.0 * np.median(edge2))]
    return SurfaceQuery(vertices, tri).distance(points)
