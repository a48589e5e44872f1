"""Mesh operators on numpy arrays: vertex normals, boundary, edges, graph Laplacian."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def face_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(M, 3) float64 face normals scaled by twice the face area (right-hand winding).

    The cross product written out per component: ``np.cross`` takes 3x as long on the
    millions of faces of a dense scan.
    """
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces)
    a = v[f[:, 0]]
    u = v[f[:, 1]] - a
    w = v[f[:, 2]] - a
    out = np.empty_like(u)
    out[:, 0] = u[:, 1] * w[:, 2] - u[:, 2] * w[:, 1]
    out[:, 1] = u[:, 2] * w[:, 0] - u[:, 0] * w[:, 2]
    out[:, 2] = u[:, 0] * w[:, 1] - u[:, 1] * w[:, 0]
    return out


def vertex_normals(vertices: np.ndarray, faces: np.ndarray, fn: np.ndarray | None = None) -> np.ndarray:
    """(N, 3) area-weighted unit vertex normals; zero rows for vertices in no face.

    fn : the :func:`face_normals` of ``faces`` when already at hand.
    """
    v = np.asarray(vertices, dtype=np.float64)
    out = np.zeros_like(v)
    if len(faces):
        f = np.asarray(faces)
        fn = face_normals(v, f) if fn is None else fn
        idx = f.T.reshape(-1).astype(np.intp, copy=False)  # each face normal goes to its three corners
        for c in range(3):
            out[:, c] = np.bincount(idx, np.tile(fn[:, c], 3), minlength=len(v))
    norm = np.linalg.norm(out, axis=1, keepdims=True)
    return np.divide(out, norm, out=np.zeros_like(out), where=norm > 0)


def edge_counts(faces: np.ndarray, n_vertices: int) -> sp.coo_matrix:
    """Upper-triangular (N, N) counts of the triangles using each undirected edge (i < j).

    Summing duplicates in a sparse matrix is several times faster than ``np.unique`` on
    the edge list (0.03 vs 0.14 s for a 200k-vertex scan).
    """
    f = np.asarray(faces, dtype=np.int64)
    a = np.concatenate([f[:, 0], f[:, 1], f[:, 2]])
    b = np.concatenate([f[:, 1], f[:, 2], f[:, 0]])
    m = sp.csr_matrix((np.ones(len(a), np.int32), (np.minimum(a, b), np.maximum(a, b))),
                      shape=(n_vertices, n_vertices))
    m.sum_duplicates()
    return m.tocoo()


def edges(faces: np.ndarray) -> np.ndarray:
    """(E, 2) unique undirected edges (i < j) of a triangle list, sorted."""
    f = np.asarray(faces, dtype=np.int64)
    if not len(f):
        return np.zeros((0, 2), np.int64)
    c = edge_counts(f, int(f.max()) + 1)
    return np.stack([c.row, c.col], axis=1).astype(np.int64)


def boundary_vertices(faces: np.ndarray, n_vertices: int, counts: sp.coo_matrix | None = None) -> np.ndarray:
    """(N,) bool: vertices on an edge used by exactly one triangle (holes, borders).

    counts : the :func:`edge_counts` of ``faces`` when already at hand.
    """
    out = np.zeros(n_vertices, bool)
    if not len(faces):
        return out
    c = edge_counts(faces, n_vertices) if counts is None else counts
    one = c.data == 1
    out[c.row[one]] = True
    out[c.col[one]] = True
    return out


def component_labels(n_points: int, pairs: np.ndarray) -> np.ndarray:
    """(P,) label of the connected component of each point of the graph whose edges are
    ``pairs`` (E, 2) int (mesh edges, or neighbour pairs of a point set)."""
    from scipy.sparse.csgraph import connected_components

    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    graph = sp.coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n_points, n_points))
    return connected_components(graph, directed=False)[1]


def _row_keys(columns: np.ndarray) -> np.ndarray:
    """(R,) 64-bit hashes (FNV-style) of the rows of (R, C) uint64 ``columns``: equal rows
    have equal keys, and one sort of the keys says whether any row repeats."""
    key = np.zeros(len(columns), np.uint64)
    for c in range(columns.shape[1]):
        key = (key ^ columns[:, c]) * np.uint64(0x100000001B3)
    return key


def _any_repeat(keys: np.ndarray) -> bool:
    """Whether any of the (R,) keys occurs twice."""
    ordered = np.sort(keys)
    return bool(np.any(ordered[1:] == ordered[:-1]))


def weld_vertices(vertices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Merge exactly coincident vertices, keeping the first of each in its order.

    STL files, and OBJ files split at texture seams, give every triangle (or every seam
    side) its own copy of a corner, so the surface looks cut along every edge.
    vertices : (V, 3). Returns (kept (U,) indices into ``vertices``, new index (V,) of
    each old vertex); ``kept`` is ``arange(V)`` when nothing coincides.
    """
    v = np.ascontiguousarray(vertices, dtype=np.float64) + 0.0  # -0.0 -> 0.0, so both compare equal
    key = _row_keys(v.view(np.uint64).reshape(len(v), -1))  # sorts 10x faster than rows
    if not _any_repeat(key):  # nothing coincides (most scans): no stable argsort
        return np.arange(len(v)), np.arange(len(v))
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    inverse = inverse.ravel()
    if not np.array_equal(v[first[inverse]], v):  # a hash collision (never seen): compare rows
        rows = v.view(np.dtype((np.void, v.dtype.itemsize * v.shape[1]))).ravel()
        _, first, inverse = np.unique(rows, return_index=True, return_inverse=True)
        inverse = inverse.ravel()
    if len(first) == len(v):
        return np.arange(len(v)), np.arange(len(v))
    order = np.argsort(first)  # unique groups by first appearance
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return first[order], rank[inverse]


def first_of_repeated_faces(faces: np.ndarray) -> np.ndarray:
    """(F,) bool, True for each face but the repeats of an earlier one on the same three
    vertices, in any order or winding.

    Some exporters write every triangle twice, or a double-sided mesh as each triangle and
    its reverse: the edges are then shared by four faces, and the surface's real borders
    (a scan's holes and rim, which the fit must not be pulled to) vanish.
    """
    f = np.sort(np.asarray(faces, dtype=np.int64), axis=1)
    keep = np.ones(len(f), bool)
    if not _any_repeat(_row_keys(f.astype(np.uint64))):  # of the sorted corners
        return keep
    order = np.lexsort((f[:, 2], f[:, 1], f[:, 0]))  # equal rows together (stable: the first one first)
    same = np.all(f[order[1:]] == f[order[:-1]], axis=1)
    keep[order[1:][same]] = False
    return keep


def vertex_adjacency(faces: np.ndarray, n_vertices: int) -> sp.csr_matrix:
    """(N, N) symmetric 0/1 adjacency ``A`` of the mesh edges (zero diagonal)."""
    e = edges(faces)
    a = sp.coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(n_vertices, n_vertices))
    return (a + a.T).tocsr()


def uniform_laplacian(faces: np.ndarray, n_vertices: int) -> sp.csr_matrix:
    """(N, N) graph Laplacian ``D - A`` of the mesh edges (symmetric, PSD)."""
    a = vertex_adjacency(faces, n_vertices)
    deg = np.asarray(a.sum(axis=1)).ravel()
    return (sp.diags(deg) - a).tocsr()
