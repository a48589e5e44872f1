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

    Each pixel centre is located in its UV triangle (candidate triangles from a KD-tree
    of UV triangle centroids) and gets the barycentric blend of the corner values.
    """
    from scipy.spatial import cKDTree

    vals = values if values.ndim == 2 else values[:, None]
    h, w = shape
    u_span = float(np.ceil(max(uv[:, 0].max(), 1.0)))
    cols, rows = np.meshgrid(np.arange(w), np.arange(h))
    pu = (cols.reshape(-1) + 0.5) / w * u_span
    pv = 1.0 - (rows.reshape(-1) + 0.5) / h
    p = np.stack([pu, pv], 1)
    tri_uv = uv[triangle_uvs]  # (M, 3, 2)
    tree = cKDTree(tri_uv.mean(1))
    _, cand = tree.query(p, k=min(8, len(tri_uv)))
    out = np.full((h * w, vals.shape[1]), np.nan)
    done = np.zeros(h * w, bool)
    for k in range(cand.shape[1]):
        t = cand[:, k]
        a, b, c = tri_uv[t, 0], tri_uv[t, 1], tri_uv[t, 2]
        v0, v1, v2 = b - a, c - a, p - a
        den = v0[:, 0] * v1[:, 1] - v1[:, 0] * v0[:, 1]
        with np.errstate(divide="ignore", invalid="ignore"):
            l1 = (v2[:, 0] * v1[:, 1] - v1[:, 0] * v2[:, 1]) / den
            l2 = (v0[:, 0] * v2[:, 1] - v2[:, 0] * v0[:, 1]) / den
        l0 = 1 - l1 - l2
        hit = ~done & (l0 >= -1e-9) & (l1 >= -1e-9) & (l2 >= -1e-9) & np.isfinite(l1)
        tv = triangles[t[hit]]
        out[hit] = (l0[hit, None] * vals[tv[:, 0]] + l1[hit, None] * vals[tv[:, 1]]
                    + l2[hit, None] * vals[tv[:, 2]])
        done |= hit
    return out.reshape(h, w, -1)
