"""Writing point landmarks: CSV and scalismo landmark JSON (atomically).

Both read back with :func:`ssm.io.landmarks.read_landmark_points` (so a fit's landmarks
can be handed to the next fit with ``--landmarks``), and the JSON with scalismo's
``LandmarkIO.readLandmarksJson``.

* ``.csv``: a header ``name,x,y,z`` (``,stddev`` with uncertainties), one row per
  landmark; names are quoted where they need it.
* ``.json``: scalismo's list of ``{"id", "coordinates", "uncertainty": {"stddevs",
  "pcvectors"}}``, the uncertainty isotropic (per-axis ``stddev / sqrt(3)`` along the
  axes, so that the RMS 3D deviation is ``stddev``).
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ssm.errors import SSMError
from ssm.io.atomic import atomic_write

LANDMARK_SUFFIXES = (".csv", ".json")


def write_landmark_points(path: str | os.PathLike, names: Sequence[str], points: np.ndarray,
                          stddev: np.ndarray | None = None) -> Path:
    """Write named landmarks to ``path`` (``.csv`` or scalismo ``.json``).

    names : L names; points : (L, 3) float, any frame and units (the file's);
    stddev : (L,) RMS 3D standard deviation of each landmark in the same units, or None.
    Non-finite stddevs are left out (CSV: an empty cell; JSON: no ``uncertainty``).
    """
    path = Path(path)
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    names = [str(n) for n in names]
    if len(names) != len(pts):
        raise ValueError(f"{len(names)} names for {len(pts)} points")
    sd = None if stddev is None else np.asarray(stddev, dtype=np.float64).reshape(-1)
    if sd is not None and len(sd) != len(pts):
        raise ValueError(f"{len(sd)} stddevs for {len(pts)} points")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        text = _csv_text(names, pts, sd)
    elif suffix == ".json":
        text = json.dumps(_scalismo_entries(names, pts, sd), indent=2)
    else:
        raise SSMError(f"{path}: cannot write landmarks as {suffix or 'a file without a suffix'} "
                       f"(use {' or '.join(LANDMARK_SUFFIXES)})")
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def _csv_text(names: list[str], pts: np.ndarray, sd: np.ndarray | None) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["name", "x", "y", "z"] + ([] if sd is None else ["stddev"]))
    for i, (name, p) in enumerate(zip(names, pts)):
        row = [name] + [repr(float(c)) for c in p]
        if sd is not None:
            row.append(repr(float(sd[i])) if np.isfinite(sd[i]) else "")
        w.writerow(row)
    return buf.getvalue()


def _scalismo_entries(names: list[str], pts: np.ndarray, sd: np.ndarray | None) -> list[dict]:
    out = []
    for i, (name, p) in enumerate(zip(names, pts)):
        entry = {"id": name, "coordinates": [float(c) for c in p]}
        if sd is not None and np.isfinite(sd[i]):
            axis = float(sd[i]) / np.sqrt(3.0)
            entry["uncertainty"] = {"stddevs": [axis] * 3,
                                    "pcvectors": [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]}
        out.append(entry)
    return out
