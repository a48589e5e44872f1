"""Landmark files written by annotation tools: MeshLab picked points and 3D Slicer markups.

* MeshLab ``.pp`` (PickPoints): XML ``<point x= y= z= name= active=/>`` elements; an
  inactive point (``active="0"``, placed but switched off) is a missing landmark.
* 3D Slicer ``.mrk.json``: ``markups[*].controlPoints[*]`` with ``label`` and
  ``position``; a point whose ``positionStatus`` is not ``defined`` is missing.
* 3D Slicer ``.fcsv`` (legacy markups CSV): ``# columns = id,x,y,z,...,label,...``
  comment header, then one row per point; ``label`` names it.

Slicer stores control points in RAS or LPS (``coordinateSystem`` / ``# CoordinateSystem``)
while it writes and reads mesh files in LPS (since Slicer 4.11), so a scan's file
coordinates are LPS: RAS points are turned to LPS (x and y negated).

Default names that only count points from 0 or 1 (MeshLab's ``0, 1, 2, ...``; Slicer's
``F-1, F-2, ...``) say nothing about which landmark a point is: such files are returned
unnamed, so their rows are taken in the model's landmark order (the CSV reader does the
same, so a 1-based ``1 ... 68`` numbering is not read as iBUG indices off by one).
"""

from __future__ import annotations

import csv
import math
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from ssm.errors import InputFileError

RAS_TO_LPS = np.array([-1.0, -1.0, 1.0])


def is_counting(names) -> bool:
    """True when names only count the rows from 0 or 1 (``0, 1, ...``, ``F-1, F-2, ...``):
    a tool's default names, or a 1-based numbering that must not be read as indices."""
    m = [re.fullmatch(r"(.*?)[-_ ]?(\d+)", n.strip()) for n in names]
    if len(m) < 2 or not all(m):
        return False
    nums = [int(x.group(2)) for x in m]
    return len({x.group(1) for x in m}) == 1 and nums[0] in (0, 1) and nums == list(range(nums[0], nums[0] + len(nums)))


def _named(names: list[str]) -> tuple[str, ...] | None:
    return None if is_counting(names) or not any(n.strip() for n in names) else tuple(names)


def read_meshlab_pp(text: str, path: Path) -> tuple[np.ndarray, tuple[str, ...] | None]:
    """MeshLab PickedPoints XML -> ((L, 3) points, NaN rows inactive; names or None)."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise InputFileError(path, f"invalid MeshLab picked-points XML ({exc})", "re-export the points from MeshLab") from exc
    pts, names = [], []
    for i, el in enumerate(root.iter("point")):
        try:
            p = [float(el.attrib[c]) for c in "xyz"]
        except (KeyError, ValueError) as exc:
            raise InputFileError(path, f"point {i + 1} has no numeric x, y, z", "re-export the points") from exc
        if el.attrib.get("active", "1").strip() == "0":
            p = [math.nan] * 3
        pts.append(p)
        names.append(el.attrib.get("name", str(i)))
    if not pts:
        raise InputFileError(path, "no <point> elements", "pick points in MeshLab and save them again")
    return np.asarray(pts, np.float64), _named(names)


def read_slicer_json(data: dict, path: Path) -> tuple[np.ndarray, tuple[str, ...] | None]:
    """Slicer ``.mrk.json`` -> ((L, 3) points in LPS, NaN rows undefined; names or None)."""
    pts, names = [], []
    for mk in data.get("markups", []):
        flip = RAS_TO_LPS if str(mk.get("coordinateSystem", "LPS")).upper() == "RAS" else 1.0
        for i, cp in enumerate(mk.get("controlPoints", [])):
            pos = cp.get("position")
            status = str(cp.get("positionStatus", "defined"))
            if pos is None or len(pos) != 3 or status != "defined":
                pts.append([math.nan] * 3)
            else:
                try:
                    pts.append(list(np.asarray(pos, np.float64) * flip))
                except (TypeError, ValueError) as exc:
                    raise InputFileError(path, f"control point {i + 1} is not numeric", "re-export the markups") from exc
            names.append(str(cp.get("label", "")))
    if not pts:
        raise InputFileError(path, "the markups file has no control points", "place points in Slicer and save again")
    return np.asarray(pts, np.float64), _named(names)


def read_slicer_fcsv(text: str, path: Path) -> tuple[np.ndarray, tuple[str, ...] | None]:
    """Slicer legacy ``.fcsv`` -> ((L, 3) points in LPS; names or None)."""
    columns = ["id", "x", "y", "z", "ow", "ox", "oy", "oz", "vis", "sel", "lock", "label", "desc", "associatedNodeID"]
    flip: np.ndarray | float = RAS_TO_LPS  # Slicer's old default (CoordinateSystem = 0)
    rows = []
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("#"):
            key, _, val = s.lstrip("#").partition("=")
            if key.strip().lower() == "columns":
                columns = [c.strip() for c in val.split(",")]
            elif key.strip().lower() == "coordinatesystem":
                flip = 1.0 if val.strip().upper() in ("1", "LPS") else RAS_TO_LPS
        elif s:
            rows.append(next(csv.reader([s])))
    lower = [c.lower() for c in columns]
    if not {"x", "y", "z"} <= set(lower):
        raise InputFileError(path, "the fcsv header names no x, y, z columns", "re-export the markups from Slicer")
    ix = [lower.index(c) for c in "xyz"]
    il = lower.index("label") if "label" in lower else None
    pts, names = [], []
    for i, r in enumerate(rows):
        try:
            pts.append([float(r[j]) for j in ix])
        except (IndexError, ValueError) as exc:
            raise InputFileError(path, f"row {i + 1} has no numeric x, y, z", "re-export the markups") from exc
        names.append(r[il] if il is not None and il < len(r) else "")
    if not pts:
        raise InputFileError(path, "no control point rows", "place points in Slicer and save again")
    return np.asarray(pts, np.float64) * flip, _named(names)


def looks_like_slicer_json(data) -> bool:
    """True for a Slicer markups JSON document (a dict with a ``markups`` list)."""
    return isinstance(data, dict) and isinstance(data.get("markups"), list)
