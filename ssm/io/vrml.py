"""VRML (``.wrl``, plain or gzip-compressed) scans, as structured-light scanners export them.

Every ``IndexedFaceSet`` is read (VRML 2.0: its ``coord Coordinate { point [...] }``,
or a ``coord USE name`` of an earlier ``DEF``; VRML 1.0: the last ``Coordinate3`` before
it) with its ``coordIndex`` polygons fan-triangulated; without faces, a ``PointSet``'s
points are a point cloud. Several shapes are concatenated. ``Transform`` nodes are not
applied: scanner exports put the geometry in the scan frame.
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np

from ssm.errors import InputFileError

_COORD = re.compile(r"\bcoord\s+(?:DEF\s+(\S+)\s+)?Coordinate\s*\{\s*point\s*\[([^\]]*)\]")
_COORD_USE = re.compile(r"\bcoord\s+USE\s+([^\s}]+)")
_COORD3 = re.compile(r"\bCoordinate3\s*\{\s*point\s*\[([^\]]*)\]")
_INDEX = re.compile(r"\bcoordIndex\s*\[([^\]]*)\]")


def _numbers(text: str, path: Path, dtype=np.float64) -> np.ndarray:
    cells = text.replace(",", " ").split()
    try:
        return np.asarray(cells, dtype=np.float64).astype(dtype)
    except ValueError as exc:
        raise InputFileError(path, f"non-numeric VRML array ({exc})", "re-export the scan") from exc


def _points(text: str, path: Path) -> np.ndarray:
    v = _numbers(text, path)
    if v.size % 3:
        raise InputFileError(path, f"a point array holds {v.size} numbers, not x y z triples", "re-export the scan")
    return v.reshape(-1, 3)


def _body(text: str, start: int) -> tuple[str, int]:
    """The text inside the braces that open at or after ``start``, and its offset."""
    i = text.index("{", start)
    depth = 0
    for j in range(i, len(text)):
        c = text[j]
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1:j], i + 1
    return text[i + 1:], i + 1


def _triangles(index: np.ndarray, n_points: int, path: Path) -> np.ndarray:
    """(F, 3) fan triangles of ``coordIndex`` polygons (separated by -1)."""
    if index.size and index.max() >= n_points:
        raise InputFileError(path, f"a face refers to point {int(index.max())} of {n_points}", "re-export the scan")
    tris = []
    start = 0
    ends = np.flatnonzero(index < 0).tolist() + [len(index)]
    for end in ends:
        poly = index[start:end]
        start = end + 1
        if len(poly) >= 3:
            k = np.arange(1, len(poly) - 1)
            tris.append(np.column_stack([np.full(len(k), poly[0]), poly[k], poly[k + 1]]))
    return np.concatenate(tris) if tris else np.zeros((0, 3), np.int64)


def read_vrml(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """((P, 3) float64 points, (F, 3) int64 triangles) of a VRML 1.0 / 2.0 file."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise InputFileError(path, f"truncated gzip VRML ({exc})", "re-export the scan") from exc
    text = raw.decode("utf-8", errors="replace")
    if not text.lstrip().startswith("#VRML"):
        raise InputFileError(path, "is not a VRML file (no #VRML header)", "export the scan as VRML, PLY or OBJ")
    text = re.sub(r"#[^\n]*", "", text)  # comments (and the header)
    defs: dict[str, np.ndarray] = {}
    parsed: dict[int, np.ndarray] = {}  # DEF'd point arrays by their offset, parsed once
    for m in _COORD.finditer(text):
        if m.group(1):
            defs[m.group(1)] = parsed[m.start(2)] = _points(m.group(2), path)
    coord3 = [(m.start(), m.group(1)) for m in _COORD3.finditer(text)]
    verts, faces, n = [], [], 0
    for m in re.finditer(r"\bIndexedFaceSet\b", text):
        body, offset = _body(text, m.end())
        c, use = _COORD.search(body), _COORD_USE.search(body)
        if c:
            pts = parsed.get(offset + c.start(2))
            if pts is None:
                pts = _points(c.group(2), path)
        elif use and use.group(1) in defs:
            pts = defs[use.group(1)]
        else:
            before = [p for s, p in coord3 if s < m.start()]
            if not before:
                raise InputFileError(path, "an IndexedFaceSet has no coordinates", "re-export the scan")
            pts = _points(before[-1], path)
        idx = _INDEX.search(body)
        tri = _triangles(_numbers(idx.group(1), path, np.int64), len(pts), path) if idx else np.zeros((0, 3), np.int64)
        verts.append(pts)
        faces.append(tri + n)
        n += len(pts)
    if not verts:
        for m in re.finditer(r"\bPointSet\b", text):
            c = _COORD.search(_body(text, m.end())[0])
            if c:
                verts.append(_points(c.group(2), path))
        if not verts and coord3:  # VRML 1.0 points
            verts = [_points(p, path) for _, p in coord3]
        faces = [np.zeros((0, 3), np.int64)]
    if not verts:
        raise InputFileError(path, "holds no IndexedFaceSet or PointSet", "export the scan's geometry")
    return np.concatenate(verts), np.concatenate(faces).astype(np.int64)
