"""Mesh operators on numpy arrays: vertex normals, boundary, edges, graph Laplacian."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(N, 3) area-weighted unit vertex normals; zero rows for vertices in no face."""
    v = np.asarray(vertices, dtype=np.float64)
    out = np.zeros_like(v)
    if len(faces):
        f = np.asarray(faces)
        fn = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
        idx = f.T.reshape(-1).astype(np.intp, copy=False)  # each face normal goes to its three corners
        for c in range(3):
            out[:, c] = np.bincount(idx, np.tile(fn[:, c], 3), minlength=len(v))
    norm = np.linalg.norm(out, axis=1, keepdims=True)
    return np.divide(out, norm, out=np.zeros_like(out), where=norm > 0)


def edges(faces: np.ndarray) -> np.ndarray:
    """(E, 2) unique undirected edges (i < j) of a triangle list."""
    f = np.asarray(faces, dtype=np.int64)
    e = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    e.sort(axis=1)
    return np.unique(e, axis=0)


def boundary_vertices(faces: np.ndarray, n_vertices: int) -> np.ndarray:
    """(N,) bool: vertices on an edge used by exactly one triangle (holes, borders)."""
    f = np.asarray(faces, dtype=np.int64)
    out = np.zeros(n_vertices, bool)
    if not len(f):
        return out
    e = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    e.sort(axis=1)
    key = e[:, 0] * n_vertices + e[:, 1]
    uniq, counts = np.unique(key, return_counts=True)
    b = uniq[counts == 1]
    out[b // n_vertices] = True
    out[b % n_vertices] = True
    return out


def uniform_laplacian(faces: np.ndarray, n_vertices: int) -> sp.csr_matrix:
    """(N, N) graph Laplacian ``D - A`` of the mesh edges (symmetric, PSD)."""
    e = edges(faces)
    a = sp.coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(n_vertices, n_vertices))
    a = (a + a.T).tocsr()
    deg = np.asarray(a.sum(axis=1)).ravel()
    return (sp.diags(deg) - a).tocsr()
