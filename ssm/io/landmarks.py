"""Landmark files.

Two kinds of landmark files are read:

* **template landmarks** (name -> vertex index of the model / corpus template):
  CSV rows ``name,vertex``, or any point file below whose points are snapped to the
  nearest template vertex.
* **point landmarks** on a scan (``LandmarkPoints``):
  CSV / TSV rows ``x,y,z`` (in the model's landmark order; empty or NaN rows are
  missing) or ``name,x,y,z`` (also semicolon-separated, with decimal commas); a header
  row that names the columns (``x, y, z`` or Slicer's ``l, p, s`` / ``r, a, s``, with
  ``label`` / ``name`` / ``id``, a column whose name holds "name" or "label", or else
  the one text column) picks them out of any others; a header of the form
  ``x,y,z (mm); name one, name two, ...`` names the rows;
  menpo LJSON (v1, v2, v3; its iBUG-68 groups put in iBUG order whatever order the
  file lists them in); menpo / iBUG PTS; scalismo landmark JSON (``id``,
  ``coordinates``, optional ``uncertainty`` with ``stddevs`` and ``pcvectors``); MeshLab
  ``.pp`` and 3D Slicer ``.mrk.json`` / ``.fcsv`` (:mod:`ssm.io.landmark_tools`); a NumPy
  ``.npy`` array (L, 3).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ssm.errors import InputFileError
from ssm.io.landmark_tools import (RAS_TO_LPS, is_counting, looks_like_slicer_json, read_meshlab_pp, read_slicer_fcsv,
                                   read_slicer_json)


@dataclass(frozen=True)
class LandmarkPoints:
    """Landmark positions read from a file.

    points : (L, 3) float64, file units and frame; NaN rows are missing landmarks.
    names : L names, or None when the file gives only an order.
    covariances : (L, 3, 3) float64 per-landmark covariance (file units^2) or None.
    """

    points: np.ndarray
    names: tuple[str, ...] | None = None
    covariances: np.ndarray | None = None

    def __len__(self) -> int:
        return self.points.shape[0]


def read_landmark_points(path: str | os.PathLike) -> LandmarkPoints:
    """Read point landmarks from CSV / TXT, menpo LJSON, menpo / ibug PTS or scalismo JSON."""
    path = Path(path)
    if not path.exists():
        raise InputFileError(path, "no such landmark file", "check the path")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise InputFileError(path, f"unreadable NumPy file ({exc})", "save an (L, 3) float array") from exc
        return LandmarkPoints(_as_points(np.atleast_2d(arr), path), None)
    text = path.read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        raise InputFileError(path, "landmark file is empty", "write one landmark per row")
    head = text.lstrip()[:200]
    if suffix == ".pp" or "PickedPoints" in head:  # MeshLab
        return LandmarkPoints(*_as_named_points(read_meshlab_pp(text, path), path))
    if suffix == ".fcsv" or head.startswith("# Markups fiducial"):  # Slicer, legacy
        return LandmarkPoints(*_as_named_points(read_slicer_fcsv(text, path), path))
    if suffix in (".json", ".ljson") or head[:1] in "[{":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputFileError(path, f"invalid JSON ({exc.msg} at line {exc.lineno})",
                                 "fix or re-export the landmark file") from exc
        if looks_like_slicer_json(data):
            return LandmarkPoints(*_as_named_points(read_slicer_json(data, path), path))
        return _from_json(data, path)
    if "n_points" in head and "{" in text:  # menpo / ibug PTS
        return _from_pts(text, path)
    return _from_csv(text, path)


def _as_named_points(points_names, path: Path) -> tuple[np.ndarray, tuple[str, ...] | None]:
    pts, names = points_names
    return _as_points(pts, path), names


def _from_pts(text: str, path: Path) -> LandmarkPoints:
    """menpo / ibug PTS: ``version``, ``n_points: L``, then ``{`` L rows of x y z ``}``."""
    body = text[text.index("{") + 1:]
    body = body[:body.index("}")] if "}" in body else body
    rows = [ln.split() for ln in body.splitlines() if ln.strip()]
    try:
        pts = [[float(c) for c in r] for r in rows]
    except ValueError as exc:
        raise InputFileError(path, f"PTS rows are not numeric ({exc})", "fix or re-export the landmarks") from exc
    header = text[:text.index("{")]
    declared = [ln.split(":", 1)[1] for ln in header.splitlines() if ln.strip().startswith("n_points")]
    if declared and declared[0].strip().isdigit() and int(declared[0]) != len(pts):
        raise InputFileError(path, f"declares {int(declared[0])} points but holds {len(pts)}",
                             "the file is truncated: re-export it")
    return LandmarkPoints(_as_points(pts, path), None)


def _from_json(data, path: Path) -> LandmarkPoints:
    if isinstance(data, list):  # scalismo
        names, pts, covs, any_cov = [], [], [], False
        for i, item in enumerate(data):
            if not isinstance(item, dict) or "coordinates" not in item:
                raise InputFileError(path, f"entry {i} has no 'coordinates'", "expected scalismo landmark JSON")
            names.append(str(item.get("id", i)))
            pts.append([float(c) for c in item["coordinates"]][:3])
            unc = item.get("uncertainty")
            if unc:
                any_cov = True
                sd = np.asarray(unc["stddevs"], dtype=np.float64)
                vecs = np.asarray(unc["pcvectors"], dtype=np.float64)
                # pcvectors are the principal directions (rows); cov = V^T diag(sd^2) V
                covs.append(vecs.T @ np.diag(sd ** 2) @ vecs)
            else:
                covs.append(np.full((3, 3), np.nan))
        return LandmarkPoints(_as_points(pts, path), tuple(names), np.asarray(covs) if any_cov else None)
    if not isinstance(data, dict):
        raise InputFileError(path, "unrecognised landmark JSON", "expected menpo LJSON or scalismo JSON")
    if "groups" in data and isinstance(data["groups"], dict):  # LJSON v3: first group
        group = next(iter(data["groups"].values()))
        return _ljson_points(group, path)
    if "landmarks" in data and isinstance(data["landmarks"], dict):  # LJSON v2
        return _ljson_points(data, path)
    if "groups" in data and isinstance(data["groups"], list):  # LJSON v1
        pts, parts = [], []
        for g in data["groups"]:
            lms = g.get("landmarks", [])
            parts.append((g.get("label", ""), list(range(len(pts), len(pts) + len(lms)))))
            pts.extend(lm.get("point") or [math.nan] * 3 for lm in lms)
        return LandmarkPoints(_in_ibug68_order(_as_points(pts, path), parts), None)
    raise InputFileError(path, "unrecognised landmark JSON", "expected menpo LJSON or scalismo JSON")


def _ljson_points(group: dict, path: Path) -> LandmarkPoints:
    pts = group.get("landmarks", {}).get("points")
    if pts is None:
        raise InputFileError(path, "LJSON has no landmarks.points", "re-export the landmarks")
    pts = [[math.nan] * 3 if p is None else p for p in pts]
    labels = group.get("labels")
    parts = [(g.get("label", ""), g.get("mask", [])) for g in labels if isinstance(g, dict)] \
        if isinstance(labels, list) else []
    return LandmarkPoints(_in_ibug68_order(_as_points(pts, path), parts), None)


# menpo's groups of the iBUG-68 points (its labeller's names and menpo3d's short ones):
# label -> (first iBUG index, count). menpo's "left" is the image's left, the subject's
# right (iBUG 17-21 and 36-41).
LJSON_IBUG68_PARTS = {
    "jaw": (0, 17), "chin": (0, 17),
    "left_eyebrow": (17, 5), "leyebrow": (17, 5), "right_eyebrow": (22, 5), "reyebrow": (22, 5),
    "nose": (27, 9),
    "left_eye": (36, 6), "leye": (36, 6), "right_eye": (42, 6), "reye": (42, 6),
    "mouth": (48, 20),
}


def _in_ibug68_order(points: np.ndarray, parts: list[tuple[str, list]]) -> np.ndarray:
    """``points`` (68, 3) put in iBUG-68 order when the LJSON groups ``parts`` (label,
    row mask) are menpo's iBUG-68 parts in another order (menpo3d writes chin, leye, reye,
    leyebrow, nose, reyebrow, mouth); any other file keeps its own row order."""
    if len(points) != 68 or not parts:
        return points
    rows = np.full(68, -1)
    for label, mask in parts:
        part = LJSON_IBUG68_PARTS.get(re.sub(r"[^a-z]+", "_", str(label).lower()).strip("_"))
        if part is None or not isinstance(mask, list) or len(mask) != part[1]:
            return points
        if not all(isinstance(m, int) and 0 <= m < 68 for m in mask):
            return points
        rows[part[0]:part[0] + part[1]] = mask
    if (rows < 0).any() or len(set(rows.tolist())) != 68:
        return points
    return points[rows]


def _as_points(pts, path: Path) -> np.ndarray:
    try:
        arr = np.asarray([[math.nan if c is None else float(c) for c in p] for p in pts], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputFileError(path, f"non-numeric coordinates ({exc})", "fix the landmark file") from exc
    if arr.ndim != 2 or arr.shape[1] not in (2, 3) or arr.shape[0] == 0:
        raise InputFileError(path, f"landmarks must be 3D points, got shape {arr.shape}",
                             "write x,y,z for each landmark")
    if arr.shape[1] == 2:
        raise InputFileError(path, "landmarks are 2D", "3D landmarks (x,y,z) are needed")
    return arr


def _header_names(header: str, n_rows: int) -> tuple[str, ...] | None:
    if ";" not in header:
        return None
    names = tuple(n.strip() for n in header.split(";", 1)[1].split(",") if n.strip())
    return names if len(names) == n_rows else None


NAME_COLUMNS = ("label", "name", "landmark", "id")


def _header_columns(cells: list[str]):
    """Columns a header row names: ((3,) x/y/z indices, name index or None, defined index
    or None, sign turning the coordinates to the file frame) or None."""
    low = [re.sub(r"\s*[(\[].*$", "", c.strip().lower()) for c in cells]  # "x (mm)" -> "x"
    for axes, sign in (("xyz", 1.0), ("lps", 1.0), ("ras", RAS_TO_LPS)):
        if all(a in low for a in axes):
            name = next((low.index(c) for c in NAME_COLUMNS if c in low), None)
            if name is None:  # "point name", "landmark_label", ...
                name = next((i for i, c in enumerate(low) if "name" in c or "label" in c), None)
            defined = low.index("defined") if "defined" in low else None
            return [low.index(a) for a in axes], name, defined, sign
    return None


def _cells(row: list[str]) -> list[str]:
    cells = [c.strip() for c in row]
    if len(cells) == 1:  # space- or tab-separated
        cells = cells[0].split()
    return cells


def _delimiter(text: str) -> str:
    """The CSV delimiter: ";" for semicolon-separated files (spreadsheets write those in
    decimal-comma locales; two or more ";" on the first row), else ","."""
    first = next((ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")), "")
    return ";" if first.count(";") >= 2 else ","


def _from_csv(text: str, path: Path) -> LandmarkPoints:
    delimiter = _delimiter(text)
    rows = [r for r in csv.reader(io.StringIO(text), delimiter=delimiter)
            if r and not r[0].lstrip().startswith("#")]
    rows = [_cells(r) for r in rows]  # a blank (whitespace) row stays: a missing landmark
    if delimiter == ";":  # decimal commas: "1,5" is 1.5
        rows = [[c.replace(",", ".") if _is_number(c.replace(",", ".")) else c for c in r] for r in rows]
    header = None
    columns = None
    if rows and rows[0] and not _is_number(rows[0][-1]):
        header_cells = rows[0]
        header = ",".join(header_cells)
        columns = _header_columns(header_cells)
        rows = rows[1:]
        if columns is not None and columns[1] is None:  # one text column named otherwise ("Punkt")
            others = [j for j in range(len(header_cells)) if j not in columns[0] and j != columns[2]]
            text_cols = [j for j in others if rows and all(j < len(r) and r[j] and not _is_number(r[j])
                                                           for r in rows if any(r))]
            if len(text_cols) == 1:
                columns = (columns[0], text_cols[0], columns[2], columns[3])
    # headerless "index x y z" rows: distinct integers before three more numbers
    ids = [r[0] for r in rows]
    numbered = (columns is None and bool(rows) and all(len(r) >= 4 for r in rows)
                and all(re.fullmatch(r"\d+", c) for c in ids) and len(set(ids)) == len(ids))
    pts, names = [], []
    for i, cells in enumerate(rows):
        if numbered:
            names.append(cells[0])
            cells = cells[1:4]
        elif columns is not None:
            ix, iname, idef, sign = columns
            if max(ix) >= len(cells):
                raise InputFileError(path, f"row {i + 1} has {len(cells)} values, fewer than the header's columns",
                                     "give every row all the header's columns")
            if iname is not None and iname < len(cells):
                names.append(cells[iname])
            off = idef is not None and idef < len(cells) and cells[idef].lower() in ("false", "0", "no")
            cells = [("nan" if off else cells[j]) for j in ix]
        elif len(cells) >= 4 and not _is_number(cells[0]):
            names.append(cells[0])
            cells = cells[1:4]
        if all(c == "" for c in cells):
            pts.append([math.nan] * 3)
            continue
        if len(cells) < 3:
            raise InputFileError(path, f"row {i + 1} has {len(cells)} values", "write x,y,z (or name,x,y,z) rows")
        try:
            pts.append([float(c) if c not in ("", "nan", "NaN") else math.nan for c in cells[:3]])
        except ValueError:
            raise InputFileError(path, f"row {i + 1} is not numeric: {','.join(cells)}",
                                 "write x,y,z (or name,x,y,z) rows") from None
    if not pts:
        raise InputFileError(path, "no landmark rows", "write one landmark per row")
    if names and len(names) != len(pts):
        raise InputFileError(path, "some rows are named and some are not", "name every row or none")
    out_names = tuple(names) if names else (_header_names(header, len(pts)) if header else None)
    if out_names is not None and is_counting(out_names):
        out_names = None
    arr = _as_points(pts, path)
    if columns is not None:
        arr = arr * columns[3]
    return LandmarkPoints(arr, out_names)


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return s.strip().lower() in ("nan", "")


def read_template_landmarks(path: str | os.PathLike, template_vertices: np.ndarray) -> dict[str, int]:
    """Named template landmarks (name -> vertex index) for a template mesh.

    path : CSV of ``name,vertex`` rows, or any point-landmark file (its points are
        snapped to the nearest template vertex; unnamed points are named ``lm00``...).
    template_vertices : (N, 3) template coordinates in the file's units.
    """
    return _template_landmarks(path, template_vertices)[0]


#: point landmarks whose median distance to the nearest vertex is over this share of the
#: shape's bounding-box diagonal are not on the shape (another frame or unit)
OFF_SHAPE_SHARE = 0.05


def read_model_landmarks(path: str | os.PathLike, vertices: np.ndarray) -> dict[str, int]:
    """Named landmarks (name -> vertex index) for a model without them (a statismo /
    scalismo file), from ``name,vertex`` CSV rows or points on its mean ``vertices`` (N, 3)
    (model frame and units; a scalismo reference landmark file), each snapped to the
    nearest vertex. Raises InputFileError when the points are not on the mean (their
    median distance to it over :data:`OFF_SHAPE_SHARE` of its size: another frame or unit).
    """
    out, dist = _template_landmarks(path, vertices)
    size = float(np.linalg.norm(np.ptp(vertices, axis=0)))
    if dist is not None and len(dist) and np.median(dist) > OFF_SHAPE_SHARE * size:
        raise InputFileError(path, f"the landmarks are not on the model's mean shape (a median {np.median(dist):.3g} "
                                   f"from its nearest vertex; the shape is {size:.3g} across)",
                             "give them in the model's frame and units, on its mean")
    return out


def _template_landmarks(path: str | os.PathLike, template_vertices: np.ndarray
                        ) -> tuple[dict[str, int], np.ndarray | None]:
    """:func:`read_template_landmarks`, and the snapped points' distances to their vertices
    (None for ``name,vertex`` rows)."""
    path = Path(path)
    n = template_vertices.shape[0]
    if path.suffix.lower() in (".csv", ".txt") and path.exists():
        rows = [r for r in csv.reader(io.StringIO(path.read_text())) if r and not r[0].startswith("#")]
        if rows and len(rows[0]) == 2 or (len(rows) > 1 and len(rows[1]) == 2):
            out: dict[str, int] = {}
            for i, row in enumerate(rows):
                if len(row) != 2:
                    raise InputFileError(path, f"row {i + 1} is not 'name,vertex'", "use name,vertex rows")
                name, idx = row[0].strip(), row[1].strip()
                if i == 0 and not idx.lstrip("-").isdigit():
                    continue  # header
                if not idx.lstrip("-").isdigit() or not 0 <= int(idx) < n:
                    raise InputFileError(path, f"landmark {name!r}: vertex {idx!r} is not in 0..{n - 1}",
                                         "indices must refer to the template's vertices")
                out[name] = int(idx)
            if not out:
                raise InputFileError(path, "no landmark rows", "use name,vertex rows")
            return out, None
    lp = read_landmark_points(path)
    names = lp.names or tuple(f"lm{i:02d}" for i in range(len(lp)))
    out, dist = {}, []
    for name, p in zip(names, lp.points):
        if np.all(np.isfinite(p)):
            d2 = ((template_vertices - p) ** 2).sum(axis=1)
            out[name] = int(np.argmin(d2))
            dist.append(float(np.sqrt(d2[out[name]])))
    return out, np.array(dist)
