"""Reading and writing triangle meshes and point clouds (trimesh, imported on use)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ssm.errors import InputFileError

MESH_SUFFIXES = {".ply", ".obj", ".off", ".stl", ".glb", ".gltf"}


@dataclass(frozen=True)
class TextureSource:
    """A textured mesh as read: where on it each texture coordinate lies.

    vertices : (V, 3) float64 and faces : (F, 3) int64, the file's (before any welding:
    a vertex on a UV seam is one per side); uv : (V, 2) texture coordinates (u right,
    v up); image : (H, W, 3) uint8, its first row the top (v = 1).
    """

    vertices: np.ndarray
    faces: np.ndarray
    uv: np.ndarray
    image: np.ndarray


@dataclass(frozen=True)
class MeshData:
    """Plain arrays read from a file.

    vertices : (N, 3) float64, file units and frame.
    faces : (M, 3) int64, empty (0, 3) for a point cloud.
    normals : (N, 3) float64 vertex normals when the file has them, else None.
    colors : (N, 3) float32 RGB in [0, 1] when the file has colours (per vertex or point,
        per face, or a texture that could not be kept whole, sampled at each vertex), else
        None.
    texture : the file's texture (its image and each vertex's texture coordinate), for
        sampling at full resolution, or None; with it, ``colors`` is None.
    """

    vertices: np.ndarray
    faces: np.ndarray
    normals: np.ndarray | None = None
    colors: np.ndarray | None = None
    texture: TextureSource | None = None

    @property
    def is_point_cloud(self) -> bool:
        return self.faces.shape[0] == 0


#: ASCII point-cloud files (x y z [nx ny nz | r g b] rows)
ASCII_CLOUD_SUFFIXES = (".xyz", ".pts", ".txt", ".asc", ".xyzn", ".xyzrgb", ".csv")


def read_mesh(path: str | os.PathLike, allow_points: bool = False, allow_nan: bool = False,
              colors: bool = False) -> MeshData:
    """Read a mesh (PLY/OBJ/OFF/STL/GLB) or, with ``allow_points``, a point cloud.

    Vertex order is preserved exactly (no merging or re-ordering), which registered
    meshes depend on. Raises :class:`InputFileError` for missing, empty, corrupt or
    non-finite files (``allow_nan`` keeps NaN vertices, e.g. unregistered parts).
    colors : also read the colours and the texture (a scan's; an OBJ's texture takes a
        second read), else they are None.
    """
    path = Path(path)
    if not path.exists():
        raise InputFileError(path, "no such file", "check the path")
    if path.stat().st_size == 0:
        raise InputFileError(path, "file is empty", "re-export it")
    suffix = path.suffix.lower()
    if suffix in ASCII_CLOUD_SUFFIXES:
        data = _read_xyz(path, colors)
    elif suffix == ".pcd":
        data = _read_pcd(path, colors)
    elif suffix in (".wrl", ".vrml", ".wrz"):
        from ssm.io.vrml import read_vrml

        data = MeshData(*read_vrml(path))
    else:
        data = _read_trimesh(path, colors)
    v = data.vertices
    if v.ndim != 2 or v.shape[0] == 0:
        raise InputFileError(path, "no vertices", "is the file empty or in an unsupported format?")
    if not allow_nan and not np.all(np.isfinite(v)):
        bad = int((~np.isfinite(v).all(axis=1)).sum())
        raise InputFileError(path, f"{bad} vertices have NaN or infinite coordinates",
                             "repair or re-export the mesh")
    if data.is_point_cloud and not allow_points:
        raise InputFileError(path, "has no faces (a point cloud)", "a registered mesh with triangles is needed")
    return data


def _read_trimesh(path: Path, read_colors: bool = False) -> MeshData:
    import trimesh

    try:
        loaded = trimesh.load(str(path), process=False, maintain_order=True)
    except Exception as exc:  # trimesh raises many types for corrupt files
        raise InputFileError(path, f"cannot be read as a mesh ({type(exc).__name__}: {exc})",
                             "is it truncated or corrupt? re-export it") from exc
    if isinstance(loaded, trimesh.Scene):
        geoms = [g for g in loaded.dump() if hasattr(g, "vertices")] if loaded.geometry else []
        if not geoms:
            raise InputFileError(path, "scene holds no geometry", "re-export the mesh")
        if len(geoms) == 1:
            loaded = geoms[0]
        else:
            loaded = trimesh.util.concatenate(geoms)
    vertices = np.asarray(getattr(loaded, "vertices", np.zeros((0, 3))), dtype=np.float64)
    faces = np.asarray(getattr(loaded, "faces", np.zeros((0, 3))), dtype=np.int64).reshape(-1, 3)
    colors = texture = None
    if read_colors:  # a texture is sampled where it is needed, at full resolution; else colours
        texture = _read_texture(path, loaded, vertices, faces)
        colors = _trimesh_colors(loaded, len(vertices)) if texture is None else None
    normals = None
    if not len(faces):  # a PLY point cloud keeps its normals in the raw vertex data
        raw = (getattr(loaded, "metadata", None) or {}).get("_ply_raw", {}).get("vertex", {}).get("data")
        # binary PLY: a structured array; ASCII PLY: a dict of columns
        names = tuple(raw) if isinstance(raw, dict) else (getattr(getattr(raw, "dtype", None), "names", None) or ())
        for axes in (("nx", "ny", "nz"), ("normal_x", "normal_y", "normal_z")):  # Open3D / MeshLab; PCL
            if all(c in names for c in axes):
                cols = [np.asarray(raw[c], dtype=np.float64).ravel() for c in axes]
                if all(len(c) == len(vertices) for c in cols):
                    normals = np.column_stack(cols)
                break
    return MeshData(vertices, faces, normals, colors, texture)


def _read_texture(path: Path, loaded, vertices: np.ndarray, faces: np.ndarray) -> TextureSource | None:
    """The texture of the mesh ``loaded`` from ``path`` (vertices (V, 3), faces (F, 3)).

    Read in order, an OBJ's vertices keep one texture coordinate each, so the triangles
    across a UV seam would sample the wrong chart: an OBJ is read again, split at its
    seams (the texture's own vertices and faces).
    """
    if path.suffix.lower() != ".obj" or getattr(getattr(loaded, "visual", None), "kind", None) != "texture":
        return _trimesh_texture(loaded, vertices, faces)
    import trimesh

    try:
        again = trimesh.load(str(path), process=False)
        return _trimesh_texture(again, np.asarray(again.vertices, dtype=np.float64),
                                np.asarray(again.faces, dtype=np.int64).reshape(-1, 3))
    except Exception:  # the texture is an extra: the mesh as read stands
        return None


def _trimesh_texture(loaded, vertices: np.ndarray, faces: np.ndarray) -> TextureSource | None:
    """The mesh's texture image and per-vertex UVs, or None (no texture, no image, or
    anything unexpected: a texture is an extra, never an error)."""
    try:
        visual = getattr(loaded, "visual", None)
        if getattr(visual, "kind", None) != "texture" or visual.uv is None or not len(faces):
            return None
        image = getattr(visual.material, "image", None)
        if image is None:
            image = getattr(visual.material, "baseColorTexture", None)
        if image is None:
            return None
        img = np.asarray(image.convert("RGB"), dtype=np.uint8)
        uv = np.asarray(visual.uv, dtype=np.float64)
    except Exception:
        return None
    if uv.shape != (len(vertices), 2) or img.ndim != 3 or min(img.shape[:2]) < 2 or not np.isfinite(uv).all():
        return None
    return TextureSource(vertices, faces, uv, img)


def _trimesh_colors(loaded, n: int) -> np.ndarray | None:
    """(n, 3) float32 RGB in [0, 1] of a trimesh mesh or point cloud, or None.

    Vertex and face colours are taken as they are; a texture is sampled at each vertex's
    texture coordinate. Colours are extras: anything unexpected gives None, never an error.
    """
    try:
        if hasattr(loaded, "visual"):  # a mesh
            visual = loaded.visual
            kind = getattr(visual, "kind", None)
            if kind == "texture":
                visual = visual.to_color()
            elif kind not in ("vertex", "face"):
                return None
            rgb = np.asarray(visual.vertex_colors)
        else:  # a point cloud
            rgb = np.asarray(getattr(loaded, "colors", np.zeros((0, 4))))
    except Exception:  # a texture trimesh cannot sample (missing image, odd UVs): no colours
        return None
    if rgb.ndim != 2 or rgb.shape[0] != n or rgb.shape[1] < 3:
        return None
    return _unit_rgb(rgb[:, :3])


def _unit_rgb(rgb: np.ndarray) -> np.ndarray | None:
    """Colours as float32 in [0, 1]: 8-bit values (anything above 1) are divided by 255."""
    integers = np.asarray(rgb).dtype.kind in "ui"
    rgb = np.asarray(rgb, dtype=np.float64)
    if not len(rgb) or not np.isfinite(rgb).all() or rgb.min() < 0 or rgb.max() > 255:
        return None
    return (rgb / 255.0 if integers or rgb.max() > 1.0 else rgb).astype(np.float32)


def _read_xyz(path: Path, read_colors: bool = False) -> MeshData:
    """ASCII point rows: ``x y z``, ``x y z nx ny nz``, ``x y z r g b``, or Leica PTS
    (a first line with the point count, then ``x y z intensity [r g b]``), separated by
    spaces or commas; a header row (``x y z ...``) is skipped. Columns 4-6 are taken as
    normals only where they are unit vectors."""
    rows = _numeric_rows(path)
    if rows.shape[1] < 3:
        raise InputFileError(path, "rows have fewer than 3 columns", "expected x y z [nx ny nz] per line")
    normals = colors = None
    if rows.shape[1] >= 6:
        cand = rows[:, 3:6]
        length = np.linalg.norm(cand, axis=1)
        if np.isfinite(length).all() and np.median(np.abs(length - 1.0)) < 0.05:
            normals = cand
            if rows.shape[1] >= 9 and read_colors:  # x y z nx ny nz r g b
                colors = _unit_rgb(rows[:, 6:9])
        elif read_colors:  # x y z r g b, or Leica's x y z intensity r g b
            colors = _unit_rgb(rows[:, 4:7] if rows.shape[1] == 7 else cand)
    return MeshData(rows[:, :3].astype(np.float64), np.zeros((0, 3), np.int64), normals, colors)


def _numeric_rows(path: Path) -> np.ndarray:
    """(P, C) float rows of an ASCII point file; a leading count or header line is skipped."""
    text = path.read_text(encoding="utf-8", errors="replace").replace(",", " ")
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith(("#", "//"))]
    if not lines:
        raise InputFileError(path, "no point rows", "is the file empty?")
    if len(lines) > 1 and (len(lines[0].split()) == 1 or not _numbers(lines[0])) and _numbers(lines[1]):
        lines = lines[1:]  # Leica PTS's point count, or a header row such as "x y z"
    try:
        return np.loadtxt(lines, dtype=np.float64, ndmin=2)
    except ValueError:
        pass
    try:  # ragged rows (e.g. some with colours): the columns all rows have
        rows = [[float(c) for c in ln.split()] for ln in lines]
    except ValueError as exc:
        raise InputFileError(path, f"cannot parse point rows ({exc})", "expected x y z [nx ny nz] per line") from exc
    width = min(len(r) for r in rows)
    return np.asarray([r[:width] for r in rows], dtype=np.float64)


def _numbers(line: str) -> bool:
    """The line holds at least three numbers (and nothing else)."""
    try:
        return len([float(c) for c in line.split()]) >= 3
    except ValueError:
        return False


def _read_pcd(path: Path, read_colors: bool = False) -> MeshData:
    from ssm.geometry.surface_distance import optional_open3d

    o3d = optional_open3d()
    if o3d is None:
        raise InputFileError(path, "is a PCD cloud, which is read by Open3D, and Open3D does not import here",
                             "install open3d (on Debian also libusb-1.0-0) or convert the cloud to PLY")
    pcd = o3d.io.read_point_cloud(str(path))
    pts = np.asarray(pcd.points, dtype=np.float64)
    if pts.shape[0] == 0:
        raise InputFileError(path, "no points could be read", "is the PCD file valid?")
    normals = np.asarray(pcd.normals, dtype=np.float64) if pcd.has_normals() else None
    colors = _unit_rgb(np.asarray(pcd.colors)) if read_colors and pcd.has_colors() else None
    return MeshData(pts, np.zeros((0, 3), np.int64), normals, colors)


def write_mesh(path: str | os.PathLike, vertices: np.ndarray, faces: np.ndarray | None = None,
               vertex_attributes: dict[str, np.ndarray] | None = None,
               vertex_colors: np.ndarray | None = None) -> Path:
    """Write a PLY/OBJ/... mesh atomically; per-vertex scalar attributes go into PLY.

    vertices : (N, 3) float; faces : (M, 3) int or None; vertex_attributes : name -> (N,);
    vertex_colors : (N, 3) RGB in [0, 1] (PLY: red, green, blue, alpha as uchar).
    """
    import trimesh

    from ssm.io.atomic import atomic_write

    path = Path(path)
    rgba = None
    if vertex_colors is not None:
        rgb = np.round(255.0 * np.clip(np.asarray(vertex_colors, dtype=np.float64), 0.0, 1.0)).astype(np.uint8)
        rgba = np.hstack([rgb, np.full((len(rgb), 1), 255, np.uint8)])
    mesh = trimesh.Trimesh(vertices=np.asarray(vertices, dtype=np.float64),
                           faces=None if faces is None else np.asarray(faces), process=False,
                           vertex_colors=rgba)
    for name, values in (vertex_attributes or {}).items():
        mesh.vertex_attributes[name] = np.asarray(values, dtype=np.float32)
    with atomic_write(path) as tmp:
        data = trimesh.exchange.export.export_mesh(mesh, file_obj=None, file_type=path.suffix.lstrip(".").lower(),
                                                   **({"encoding": "binary"} if path.suffix.lower() == ".ply" else {}))
        with open(tmp, "wb") as fh:
            fh.write(data if isinstance(data, bytes) else data.encode())
    return path
