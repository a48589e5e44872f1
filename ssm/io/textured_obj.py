"""Writing a mesh with texture coordinates: Wavefront OBJ (+ MTL + PNG with a texture),
what animation tools import.

The OBJ keeps the vertex order of the mesh (one ``v`` line per vertex, in order), so a
fitted head stays in the model's topology; texture coordinates (``vt``) and the faces'
corner indices into them (``f v/vt``) carry UV seams without splitting vertices.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from ssm.io.atomic import atomic_write


def write_textured_obj(path: str | os.PathLike, vertices: np.ndarray, faces: np.ndarray, uv: np.ndarray,
                       triangle_uvs: np.ndarray, texture: np.ndarray | None = None,
                       material: str | os.PathLike | None = None) -> dict[str, Path]:
    """Write ``path`` (.obj) with texture coordinates and, given a ``texture``, its
    ``.mtl`` and ``<stem>_texture.png`` beside it; each file atomically.

    vertices : (N, 3); faces : (M, 3) int; uv : (T, 2) texture coordinates (u right, v up);
    triangle_uvs : (M, 3) per-corner indices into ``uv``; texture : (H, W, 3) uint8, its
    first row the top of the image (v = 1), or None; material : instead of a texture, an
    ``.mtl`` already written beside ``path`` to use (another mesh's, the same texture).
    Returns the paths written.
    """
    path = Path(path)
    files = {"obj": path}
    buf = io.StringIO()
    mtl = None if material is None else Path(material)
    if texture is not None:
        from PIL import Image

        mtl = path.with_suffix(".mtl")
        png = path.with_name(f"{path.stem}_texture.png")
        with atomic_write(png) as tmp:
            Image.fromarray(np.asarray(texture, dtype=np.uint8)).save(tmp, format="PNG")
        with atomic_write(mtl) as tmp:
            tmp.write_text(f"newmtl skin\nKa 1 1 1\nKd 1 1 1\nKs 0 0 0\nillum 1\nmap_Kd {png.name}\n")
        files.update(mtl=mtl, texture=png)
    if mtl is not None:
        buf.write(f"mtllib {mtl.name}\n")
    np.savetxt(buf, np.asarray(vertices, dtype=np.float64), fmt="v %.9g %.9g %.9g")
    np.savetxt(buf, np.asarray(uv, dtype=np.float64), fmt="vt %.9g %.9g")
    if mtl is not None:
        buf.write("usemtl skin\n")
    corners = np.stack([np.asarray(faces, np.int64), np.asarray(triangle_uvs, np.int64)], axis=2) + 1  # (M, 3, 2)
    np.savetxt(buf, corners.reshape(len(corners), 6), fmt="f %d/%d %d/%d %d/%d")
    with atomic_write(path) as tmp:
        tmp.write_text(buf.getvalue())
    return files
