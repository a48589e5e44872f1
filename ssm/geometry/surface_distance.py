"""Point-to-surface distances against a triangle mesh: Open3D's ray-casting scene (a
BVH in C++), or, where Open3D does not import (no wheel for this Python or platform,
Debian's libusb missing, a GPU image without it), a search in numpy that is exact near
the surface (:class:`TriangleSearch`)."""

from __future__ import annotations

import logging

import numpy as np
from scipy.spatial import cKDTree

log = logging.getLogger(__name__)

_OPEN3D: list = []  # [module or None], once per process: a failed import is not cached by Python


def optional_open3d():
    """The ``open3d`` module, or None where it does not import (warned once)."""
    if not _OPEN3D:
        try:
            import open3d

            _OPEN3D.append(open3d)
        except (ImportError, OSError) as exc:  # OSError: a shared library it needs is missing
            log.warning("Open3D does not import (%s): surface distances and cloud normals use slower "
                        "numpy fallbacks", exc)
            _OPEN3D.append(None)
    return _OPEN3D[0]


def closest_on_triangles(p: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Closest points of triangles ``(a, b, c)`` to points ``p``, row by row.

    p, a, b, c : (n, 3) float64. Returns the closest points (n, 3) and their barycentric
    coordinates (n, 2) ``(u, v)`` with ``point = (1 - u - v) a + u b + v c``, by the
    Voronoi regions of the triangle's corners, edges and face (Ericson, Real-Time
    Collision Detection, 5.1.5). A degenerate (zero-area) triangle gives its nearest corner.
    """
    ab, ac, ap = b - a, c - a, p - a
    d1, d2 = (ab * ap).sum(1), (ac * ap).sum(1)
    bp = p - b
    d3, d4 = (ab * bp).sum(1), (ac * bp).sum(1)
    cp = p - c
    d5, d6 = (ab * cp).sum(1), (ac * cp).sum(1)
    va, vb, vc = d3 * d6 - d5 * d4, d5 * d2 - d1 * d6, d1 * d4 - d3 * d2
    u = np.zeros(len(p))
    v = np.zeros(len(p))
    done = np.zeros(len(p), bool)

    def take(mask, uu, vv):
        m = mask & ~done
        u[m], v[m] = uu[m], vv[m]
        done[m] = True

    zero, one = np.zeros(len(p)), np.ones(len(p))
    with np.errstate(divide="ignore", invalid="ignore"):
        take((d1 <= 0) & (d2 <= 0), zero, zero)  # corner a
        take((d3 >= 0) & (d4 <= d3), one, zero)  # corner b
        take((d6 >= 0) & (d5 <= d6), zero, one)  # corner c
        take((vc <= 0) & (d1 >= 0) & (d3 <= 0), d1 / (d1 - d3), zero)  # edge ab
        take((vb <= 0) & (d2 >= 0) & (d6 <= 0), zero, d2 / (d2 - d6))  # edge ac
        t_bc = (d4 - d3) / ((d4 - d3) + (d5 - d6))
        take((va <= 0) & (d4 - d3 >= 0) & (d5 - d6 >= 0), 1.0 - t_bc, t_bc)  # edge bc
        denom = va + vb + vc
        take(np.isfinite(1.0 / denom) & (denom != 0), vb / denom, vc / denom)  # the face
    rest = ~done | ~np.isfinite(u) | ~np.isfinite(v)
    if rest.any():  # degenerate (zero-area) triangles: the nearest of the corners
        corners = np.stack([a[rest], b[rest], c[rest]], 1)
        k = np.argmin(((corners - p[rest, None]) ** 2).sum(-1), axis=1)
        u[rest], v[rest] = (k == 1).astype(float), (k == 2).astype(float)
    q = a + u[:, None] * ab + v[:, None] * ac
    return q, np.stack([u, v], 1)


FAR = 4.0  # TriangleSearch: distances (in typical triangle radii) within which the search is exhaustive


class TriangleSearch:
    """Closest points on a triangle mesh in numpy: Open3D's stand-in.

    A point's closest triangle is searched among those whose centroids are within the
    best distance found so far plus the triangles' circumscribing radius: KD-trees over
    the centroids, one per class of triangle size (a scan's triangles bridging holes and
    borders are far larger than the rest), and two passes. This is exact for points
    within :data:`FAR` typical radii of the surface (all that a fit's residuals use);
    a farther point keeps the best of the triangles near it, off by at most a share of
    the triangles' size over its distance.
    """

    def __init__(self, vertices: np.ndarray, triangles: np.ndarray):
        self.v = np.asarray(vertices, dtype=np.float64)
        self.f = np.asarray(triangles, dtype=np.int64).reshape(-1, 3)
        corners = self.v[self.f]  # (M, 3, 3)
        centroid = corners.mean(1)
        radius = np.linalg.norm(corners - centroid[:, None], axis=2).max(1)
        typical = float(np.median(radius)) if len(radius) else 0.0
        size_class = np.floor(np.log2(np.maximum(radius, 1e-300) / max(typical, 1e-300))).clip(0, 60).astype(int)
        self.reach = FAR * 2.0 * typical  # class 0 holds radii up to twice the median
        self.groups = []  # (triangle ids, KD-tree of their centroids, their largest radius), most first
        for c in np.unique(size_class):
            ids = np.flatnonzero(size_class == c)
            self.groups.append((ids, cKDTree(centroid[ids]), float(radius[ids].max())))
        self.groups.sort(key=lambda g: -len(g[0]))

    def _pairs(self, p: np.ndarray, rows: np.ndarray, tris: np.ndarray):
        a, b, c = (self.v[self.f[tris, i]] for i in range(3))
        q, uv = closest_on_triangles(p[rows], a, b, c)
        return q, uv, ((q - p[rows]) ** 2).sum(1)

    def closest(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """As :meth:`SurfaceQuery.closest`, and the distances (P,)."""
        p = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        n = len(p)
        best = np.full(n, np.inf)
        out_q, out_t, out_uv = np.zeros((n, 3)), np.zeros(n, np.int64), np.zeros((n, 2))
        if not n or not self.groups:
            return out_q, out_t, out_uv, best

        def keep(rows, tris):  # the nearest of each row's candidates, where nearer than so far
            for s in range(0, len(rows), 1_000_000):  # bounded memory
                r, t = rows[s:s + 1_000_000], tris[s:s + 1_000_000]
                q, uv, d2 = self._pairs(p, r, t)
                order = np.lexsort((d2, r))
                first = order[np.r_[True, r[order][1:] != r[order][:-1]]]
                first = first[d2[first] < best[r[first]]]
                rr = r[first]
                best[rr], out_q[rr], out_t[rr], out_uv[rr] = d2[first], q[first], t[first], uv[first]

        ids, tree, _ = self.groups[0]
        k = min(8, len(ids))
        _, j = tree.query(p, k=k, workers=-1)
        keep(np.repeat(np.arange(n), k), ids[j.reshape(n, k).ravel()])
        reach = np.minimum(np.sqrt(best), self.reach)
        for ids, tree, rmax in self.groups:  # every triangle that could still be nearer
            lists = tree.query_ball_point(p, reach + rmax + 1e-12, workers=-1)
            lens = np.fromiter((len(x) for x in lists), np.int64, n)
            if lens.sum():
                keep(np.repeat(np.arange(n), lens), ids[np.concatenate([np.asarray(x, np.int64) for x in lists])])
        return out_q, out_t, out_uv, np.sqrt(best)


class SurfaceQuery:
    """Closest-point queries against one triangle mesh.

    vertices : (V, 3) float, triangles : (M, 3) int. Queries are (P, 3) float in the
    same frame and units; results are float64. Open3D's ray-casting scene (float32, about
    the mesh's centre, so a scan far from its origin, such as georeferenced photogrammetry,
    keeps its precision) where Open3D imports, else :class:`TriangleSearch` (float64,
    exact near the surface, slower).
    """

    def __init__(self, vertices: np.ndarray, triangles: np.ndarray):
        o3d = optional_open3d()
        self._search = None
        if o3d is None:
            self._search = TriangleSearch(vertices, triangles)
            return
        v = np.asarray(vertices, dtype=np.float64)
        finite = np.isfinite(v).all(1)  # (a textured scan's own vertices may hold NaN ones)
        self._origin = v[finite].mean(0) if finite.any() else np.zeros(3)
        self._scene = o3d.t.geometry.RaycastingScene()
        mesh = o3d.t.geometry.TriangleMesh()
        mesh.vertex.positions = o3d.core.Tensor(np.ascontiguousarray(v - self._origin, dtype=np.float32))
        mesh.triangle.indices = o3d.core.Tensor(np.ascontiguousarray(triangles, dtype=np.int32))
        self._scene.add_triangles(mesh)
        self._o3c = o3d.core

    def _q(self, points: np.ndarray):
        return self._o3c.Tensor(np.ascontiguousarray(np.asarray(points, np.float64) - self._origin, dtype=np.float32))

    def distance(self, points: np.ndarray) -> np.ndarray:
        """(P,) unsigned distance from each point to the surface."""
        if self._search is not None:
            return self._search.closest(points)[3]
        return self._scene.compute_distance(self._q(points)).numpy().astype(np.float64)

    def closest(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Closest surface points (P, 3), their triangle ids (P,), and barycentrics (P, 2)
        ``(u, v)``: the point is ``(1 - u - v) v0 + u v1 + v v2`` of its triangle."""
        if self._search is not None:
            return self._search.closest(points)[:3]
        ans = self._scene.compute_closest_points(self._q(points))
        return (ans["points"].numpy().astype(np.float64) + self._origin, ans["primitive_ids"].numpy().astype(np.int64),
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
        v = (np.asarray(vertices, dtype=np.float64) - vertices[0]).astype(np.float32)  # edges keep their precision
        a, b, c = v[tri[:, 0]], v[tri[:, 1]], v[tri[:, 2]]
        edge2 = np.maximum(np.maximum(((a - b) ** 2).sum(1), ((b - c) ** 2).sum(1)), ((c - a) ** 2).sum(1))
        # long triangles (bridging a gap, at a border) reach past their corners' neighbourhoods
        tri = tri[mark[tri].any(axis=1) | (edge2 > 16.0 * np.median(edge2))]
    return SurfaceQuery(vertices, tri).distance(points)
