"""Geometry maps on the model's UV parameterisation: reading, sampling, baking.

Convention: ``u`` runs left to right, ``v`` bottom to top (OpenGL); a map covers
``u in [0, U]`` x ``v in [0, 1]`` where ``U = ceil(max u)`` (so a model whose UVs use two
unit tiles side by side, as the ICT head does, has maps twice as wide as tall); pixel
``(row r, col c)`` has its centre at ``u = U (c + 0.5) / W``, ``v = 1 - (r + 0.5) / H``.
Values are in the model frame and mm (position: xyz; displacement: mm along the
vertex normal; variance: mm^2 as E|error|^2).

Files: ``.npy``, ``.npz`` (first array), and 16-bit PNG / TIFF read as raw integers
(give ``value_range=(lo, hi)`` to map 0..65535 to lo..hi), OpenEXR when imageio can.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ssm.errors import InputFileError


def read_map(path: str | Path, value_range: tuple[float, float] | None = None) -> np.ndarray:
    """A map as float64 (H, W) or (H, W, C)."""
    path = Path(path)
    if not path.exists():
        raise InputFileError(path, "no such map file", "check the path")
    suf = path.suffix.lower()
    try:
        if suf == ".npy":
            arr = np.load(path)
        elif suf == ".npz":
            with np.load(path) as z:
                arr = z[z.files[0]]
        elif suf in (".png", ".tif", ".tiff"):
            from PIL import Image

            arr = np.asarray(Image.open(path)).astype(np.float64)
            if value_range is not None:
                lo, hi = value_range
                arr = lo + (hi - lo) * arr / 65535.0
        elif suf == ".exr":
            import imageio.v3 as iio

            arr = iio.imread(path)
        else:
            raise InputFileError(path, f"unsupported map format {suf}", "use .npy, .npz, 16-bit .png/.tif or .exr")
    except InputFileError:
        raise
    except Exception as exc:
        raise InputFileError(path, f"cannot be read as a map ({type(exc).__name__}: {exc})",
                             "re-export it as .npy") from exc
    arr = np.asarray(arr, dtype=np.float64)
    if arr.ndim not in (2, 3) or arr.shape[0] < 2 or arr.shape[1] < 2:
        raise InputFileError(path, f"a map must be an (H, W) or (H, W, C) image, got {arr.shape}", "check the file")
    return arr


def _uv_to_pixel(uv: np.ndarray, shape: tuple[int, int], u_span: float) -> tuple[np.ndarray, np.ndarray]:
    h, w = shape
    x = uv[:, 0] / u_span * w - 0.5
    y = (1.0 - uv[:, 1]) * h - 0.5
    return x, y


def bilinear(image: np.ndarray, uv: np.ndarray, u_span: float) -> np.ndarray:
    """Bilinear samples (P, C) of ``image`` at texture coordinates (P, 2); NaN off the map."""
    img = image if image.ndim == 3 else image[..., None]
    h, w = img.shape[:2]
    x, y = _uv_to_pixel(uv, (h, w), u_span)
    inside = (x >= -0.5) & (x <= w - 0.5) & (y >= -0.5) & (y <= h - 0.5)
    x = np.clip(x, 0, w - 1)
    y = np.clip(y, 0, h - 1)
    x0 = np.clip(np.floor(x).astype(int), 0, w - 2)
    y0 = np.clip(np.floor(y).astype(int), 0, h - 2)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    acc = np.zeros((len(x), img.shape[2]))
    wsum = np.zeros((len(x), img.shape[2]))
    for dy, dx, w in ((0, 0, (1 - fx) * (1 - fy)), (0, 1, fx * (1 - fy)), (1, 0, (1 - fx) * fy), (1, 1, fx * fy)):
        texel = img[y0 + dy, x0 + dx]
        ok = np.isfinite(texel)
        acc += np.where(ok, texel, 0.0) * w * ok
        wsum += w * ok
    # texels outside the UV charts (NaN) drop out and the others are renormalised, so
    # samples next to a chart border or a seam are not pulled towards empty pixels
    out = np.where(wsum > 1e-9, acc / np.maximum(wsum, 1e-300), np.nan)
    out[~inside] = np.nan
    return out


def sample_to_vertices(image: np.ndarray, uv: np.ndarray, triangle_uvs: np.ndarray, triangles: np.ndarray,
                       n_vertices: int) -> np.ndarray:
    """(N, C) map values per vertex, seam-aware: a vertex on a UV seam has several corners
    with different texture coordinates; their samples are averaged (NaN ones ignored)."""
    u_span = float(np.ceil(max(uv[:, 0].max(), 1.0)))
    corner_uv = uv[triangle_uvs.reshape(-1)]
    vals = bilinear(image, corner_uv, u_span)  # (3M, C)
    verts = triangles.reshape(-1)
    ok = np.isfinite(vals).all(axis=1)
    c = vals.shape[1]
    acc = np.zeros((n_vertices, c))
    cnt = np.zeros(n_vertices)
    np.add.at(acc, verts[ok], vals[ok])
    np.add.at(cnt, verts[ok], 1.0)
    out = np.full((n_vertices, c), np.nan)
    has = cnt > 0
    out[has] = acc[has] / cnt[has, None]
    return out


def bake_to_map(values: np.ndarray, uv: np.ndarray, triangle_uvs: np.ndarray, triangles: np.ndarray,
                shape: tuple[int, int]) -> np.ndarray:
    """Rasterise per-vertex values (N, C) into an (H, W, C) map (NaN outside the UV charts).

    Each pixel centre inside a UV triangle gets the barycentric blend of the triangle's
    corner values (a pixel on an edge shared by two triangles takes the first's).
    """
    vals = values if values.ndim == 2 else values[:, None]
    h, w = shape
    out = np.full((h * w, vals.shape[1]), np.nan)
    pix, tri, bary = rasterise_uv(uv, triangle_uvs, shape)
    tv = np.asarray(triangles)[tri]  # (P, 3) vertices of each pixel's triangle
    out[pix] = np.einsum("pk,pkc->pc", bary, vals[tv])
    return out.reshape(h, w, -1)


#: pixel candidates generated at once while rasterising (bounds the temporary arrays)
RASTER_CHUNK = 4_000_000


def rasterise_uv(uv: np.ndarray, triangle_uvs: np.ndarray, shape: tuple[int, int]
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pixels of an (H, W) map whose centres lie in a UV triangle.

    Returns (flat pixel indices (P,), their triangle (P,), barycentric weights (P, 3)),
    each pixel once (the lowest-numbered triangle where triangles share an edge). Every
    triangle's bounding box of pixel centres is tested at once, in chunks of
    :data:`RASTER_CHUNK` candidates: about 2 x the pixels covered.
    """
    h, w = shape
    u_span = float(np.ceil(max(np.max(uv[:, 0]), 1.0)))
    tri_uv = np.asarray(uv, np.float64)[np.asarray(triangle_uvs)]  # (M, 3, 2)
    px = tri_uv[..., 0] / u_span * w - 0.5  # pixel-centre coordinates: centre (r, c) is at (c, r)
    py = (1.0 - tri_uv[..., 1]) * h - 0.5
    x0 = np.clip(np.ceil(px.min(1) - 1e-9), 0, w).astype(np.int64)
    x1 = np.clip(np.floor(px.max(1) + 1e-9), -1, w - 1).astype(np.int64)
    y0 = np.clip(np.ceil(py.min(1) - 1e-9), 0, h).astype(np.int64)
    y1 = np.clip(np.floor(py.max(1) + 1e-9), -1, h - 1).astype(np.int64)
    nx, ny = np.maximum(x1 - x0 + 1, 0), np.maximum(y1 - y0 + 1, 0)
    counts = nx * ny
    ends = np.cumsum(counts)
    pix_parts, tri_parts, bary_parts = [], [], []
    first = 0
    while first < len(counts):  # triangles [first, last) make one chunk
        base = ends[first] - counts[first]
        last = max(int(np.searchsorted(ends, base + RASTER_CHUNK, side="right")), first + 1)
        t = np.repeat(np.arange(first, last), counts[first:last])
        local = np.arange(len(t)) - np.repeat(ends[first:last] - counts[first:last] - base, counts[first:last])
        cx = x0[t] + local % nx[t]
        cy = y0[t] + local // nx[t]
        ax, ay = px[t, 0], py[t, 0]
        v0x, v0y = px[t, 1] - ax, py[t, 1] - ay
        v1x, v1y = px[t, 2] - ax, py[t, 2] - ay
        v2x, v2y = cx - ax, cy - ay
        den = v0x * v1y - v1x * v0y
        with np.errstate(divide="ignore", invalid="ignore"):
            l1 = (v2x * v1y - v1x * v2y) / den
            l2 = (v0x * v2y - v2x * v0y) / den
        l0 = 1.0 - l1 - l2
        hit = (l0 >= -1e-9) & (l1 >= -1e-9) & (l2 >= -1e-9) & np.isfinite(l1) & np.isfinite(l2)
        pix_parts.append(cy[hit] * w + cx[hit])
        tri_parts.append(t[hit])
        bary_parts.append(np.stack([l0[hit], l1[hit], l2[hit]], 1))
        first = last
    pix = np.concatenate(pix_parts) if pix_parts else np.zeros(0, np.int64)
    tri = np.concatenate(tri_parts) if tri_parts else np.zeros(0, np.int64)
    bary = np.concatenate(bary_parts) if bary_parts else np.zeros((0, 3))
    pix, keep = np.unique(pix, return_index=True)  # candidates come in triangle order: the first wins
    return pix, tri[keep], bary[keep]
