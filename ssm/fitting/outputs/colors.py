"""The scan's colours on the fit: per vertex, and baked into the model's UV layout.

A scan with colours (per-vertex RGB, a coloured cloud) hands them to the fitted mesh:
each fitted vertex (or texel of the model's UV layout, placed on the fitted surface)
takes the inverse-distance blend of the scan's :data:`NEIGHBOURS` nearest coloured
points within ``max_distance``. A textured scan gives its own texels instead, read at
the texture coordinate of the closest point on it (:func:`texture_colors_at`). What
the scan did not see (the back of the head in a frontal scan, hair left out) is filled
smoothly from what it did: the harmonic interpolation over the model's mesh (a
per-channel Laplace equation with the seen vertices fixed), so the fitted head has no
black holes. Colours are RGB in [0, 1] (float) or 0-255 (uint8 textures).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import spsolve

from ssm.fitting.prepare.scan import Scan
from ssm.geometry.mesh_ops import vertex_adjacency

NEIGHBOURS = 4  # scan points blended per sample
COLOR_DISTANCE_MM = 3.0  # a fitted point takes the scan's colour from this near (mm)
TEXTURE_DILATION = 4  # texels the baked charts grow by, so filtering at a seam meets colour, not black


def scan_colors_at(points: np.ndarray, scan: Scan, max_distance: float) -> tuple[np.ndarray, np.ndarray]:
    """Colours (Q, 3) float in [0, 1] of ``scan`` at points (Q, 3) in the scan's frame and
    units, and (Q,) bool where a coloured scan point lies within ``max_distance`` (scan
    units; elsewhere the colour is NaN). Inverse-distance weights over the nearest points
    that are not stray (:func:`ssm.fitting.prepare.scan.scan_from_arrays` flags those: no normal)."""
    if scan.colors is None:
        raise ValueError("the scan has no colours")
    q = np.asarray(points, dtype=np.float64)
    k = min(NEIGHBOURS, len(scan.points))
    d, j = scan.tree.query(q, k=k, distance_upper_bound=max_distance, workers=-1)
    d, j = d.reshape(len(q), k), j.reshape(len(q), k)
    ok = np.isfinite(d)
    ok[ok] = scan.normals[j[ok]].any(axis=1)  # stray points (no normal: outliers) lend no colour
    w = np.where(ok, 1.0 / np.maximum(d, 1e-6 * max_distance), 0.0)
    colors = scan.colors[np.where(ok, j, 0)].astype(np.float64)  # (Q, k, 3)
    wsum = w.sum(1)
    seen = wsum > 0
    out = np.full((len(q), 3), np.nan)
    out[seen] = (w[seen, :, None] * colors[seen]).sum(1) / wsum[seen, None]
    return out, seen


def texture_colors_at(points: np.ndarray, texture, max_distance: float) -> tuple[np.ndarray, np.ndarray]:
    """Colours (Q, 3) in [0, 1] of a textured scan (:class:`ssm.io.meshes.TextureSource`)
    at points (Q, 3) in its frame: the texture, bilinearly, at the texture coordinate of
    each point's closest point on the mesh; and (Q,) bool where that point is within
    ``max_distance`` (elsewhere NaN). Texture coordinates outside [0, 1] wrap (repeat)."""
    from ssm.fusion.uv_maps import bilinear
    from ssm.geometry.surface_distance import SurfaceQuery

    out = np.full((len(points), 3), np.nan)
    seen = np.zeros(len(points), bool)
    v, f = np.asarray(texture.vertices, np.float64), np.asarray(texture.faces, np.int64)
    good = np.isfinite(v).all(1)[f].all(1)  # triangles with NaN corners hold no surface
    if not good.any() or not len(points):
        return out, seen
    f = f[good]
    closest, tri, bc = SurfaceQuery(v, f).closest(points)
    seen = np.linalg.norm(closest - points, axis=1) <= max_distance
    corners = texture.uv[f[tri[seen]]]  # (S, 3, 2)
    w = np.stack([1.0 - bc[seen, 0] - bc[seen, 1], bc[seen, 0], bc[seen, 1]], 1)
    uv = np.einsum("sk,skd->sd", w, corners)
    uv = uv - np.floor(uv) * ((uv < 0) | (uv > 1))  # repeat outside the unit square
    out[seen] = bilinear(texture.image.astype(np.float64) / 255.0, uv, 1.0)
    seen &= np.isfinite(out).all(1)
    return out, seen


def colors_at(points: np.ndarray, scan: Scan, max_distance: float) -> tuple[np.ndarray, np.ndarray]:
    """The scan's colours (Q, 3) at points (Q, 3) in its frame, and (Q,) bool where it has
    one within ``max_distance``: its texture (:func:`texture_colors_at`) where it has one,
    else its point colours (:func:`scan_colors_at`); NaN where neither reaches."""
    rgb, seen = np.full((len(points), 3), np.nan), np.zeros(len(points), bool)
    if scan.texture is not None:  # the texture itself, at the closest point's texture coordinate
        rgb, seen = texture_colors_at(points, scan.texture, max_distance)
    if scan.colors is not None and not seen.all():
        rgb[~seen], seen[~seen] = scan_colors_at(points[~seen], scan, max_distance)
    return rgb, seen


def harmonic_fill(values: np.ndarray, known: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """(N, C) ``values`` with the rows not ``known`` (N,) bool replaced by the harmonic
    interpolation of the known ones over the mesh (uniform weights): each unknown vertex
    is the mean of its neighbours. A piece of the mesh with no known vertex takes the
    mean of all known values."""
    vals = np.asarray(values, dtype=np.float64)
    n = len(vals)
    unknown = np.flatnonzero(~known)
    if not len(unknown) or not known.any():
        return vals.copy()
    adj = vertex_adjacency(triangles, n).astype(np.float64)
    deg = np.asarray(adj.sum(axis=1)).ravel()
    mean = vals[known].mean(0)
    eps = 1e-6  # a faint pull to the mean keeps pieces without a known vertex solvable
    a_uu = (sp.diags(deg[unknown] + eps) - adj[unknown][:, unknown]).tocsc()
    rhs = adj[unknown][:, np.flatnonzero(known)] @ vals[known] + eps * mean
    out = vals.copy()
    out[unknown] = np.asarray(spsolve(a_uu, rhs)).reshape(len(unknown), -1)
    return out


def vertex_colors(vertices: np.ndarray, scan: Scan, triangles: np.ndarray | None, max_distance: float
                  ) -> np.ndarray | None:
    """(N, 3) float32 RGB in [0, 1] of the fitted ``vertices`` (N, 3; scan frame and units)
    from the scan's texture or colours within ``max_distance`` (scan units), the rest filled
    harmonically over ``triangles`` (or from the nearest seen vertex without them);
    None when the scan has no colours or none lies near the fit."""
    if scan.colors is None and scan.texture is None:
        return None
    rgb, seen = colors_at(vertices, scan, max_distance)
    if not seen.any():
        return None
    if triangles is not None and len(triangles):
        rgb = harmonic_fill(rgb, seen, triangles)
    else:
        from scipy.spatial import cKDTree

        _, j = cKDTree(vertices[seen]).query(vertices[~seen])
        rgb[~seen] = rgb[seen][j]
    return np.clip(rgb, 0.0, 1.0).astype(np.float32)


def bake_texture(vertices: np.ndarray, triangles: np.ndarray, uv: np.ndarray, triangle_uvs: np.ndarray,
                 scan: Scan, vertex_rgb: np.ndarray, height: int, max_distance: float) -> np.ndarray:
    """(H, W, 3) uint8 texture in the model's UV layout (:mod:`ssm.fusion.uv_maps`'
    convention: ``W = H * ceil(max u)``), from the scan's colours.

    vertices : (N, 3) the fit, scan frame and units; uv (T, 2) and triangle_uvs (M, 3):
    the model's layout; vertex_rgb : (N, 3) the fit's :func:`vertex_colors`, used where
    the scan has no colour within ``max_distance`` of a texel's point on the fit. The
    charts are dilated by :data:`TEXTURE_DILATION` texels; the rest is black.
    """
    from ssm.fusion.uv_maps import bake_to_map

    u_span = int(np.ceil(max(float(np.max(uv[:, 0])), 1.0)))
    shape = (int(height), int(height) * u_span)
    baked = bake_to_map(np.hstack([vertices, vertex_rgb]), uv, triangle_uvs, triangles, shape)  # (H, W, 6)
    inside = np.isfinite(baked[..., 0])
    tex = np.full(shape + (3,), np.nan)
    rgb, seen = colors_at(baked[inside, :3], scan, max_distance)
    rgb[~seen] = baked[inside, 3:][~seen]
    tex[inside] = rgb
    tex = _dilate(tex, TEXTURE_DILATION)
    return np.round(255.0 * np.clip(np.nan_to_num(tex, nan=0.0), 0.0, 1.0)).astype(np.uint8)


def _dilate(image: np.ndarray, steps: int) -> np.ndarray:
    """Grow the finite part of an (H, W, C) image by ``steps`` texels: each empty (NaN)
    texel next to filled ones takes their mean (4-neighbourhood)."""
    img = image.copy()
    for _ in range(steps):
        empty = ~np.isfinite(img[..., 0])
        if not empty.any():
            break
        acc = np.zeros_like(img)
        cnt = np.zeros(img.shape[:2])
        filled = np.where(np.isfinite(img), img, 0.0)
        ok = (~empty).astype(np.float64)
        for dst, src in (((slice(1, None), slice(None)), (slice(None, -1), slice(None))),  # from above
                         ((slice(None, -1), slice(None)), (slice(1, None), slice(None))),  # below
                         ((slice(None), slice(1, None)), (slice(None), slice(None, -1))),  # left
                         ((slice(None), slice(None, -1)), (slice(None), slice(1, None)))):  # right
            acc[dst] += filled[src]
            cnt[dst] += ok[src]
        grow = empty & (cnt > 0)
        img[grow] = acc[grow] / cnt[grow, None]
    return img
