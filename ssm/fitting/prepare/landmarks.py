"""Matching a scan's landmark file to the model's named landmarks.

Names are compared after normalisation (case, spaces, dashes); common names of the
iBUG-68 points (eye corners, nose tip, mouth corners, ...) and ``ibugNN`` / plain
indices map to the same iBUG index (for a model without iBUG names a plain index is a
position in the model's landmark list), so a file saying "right eye outer" matches a model
landmark called ``ibug36`` or ``right_eye_outer``. Unnamed rows are taken in the model's
landmark order (NaN rows = missing), or as iBUG-68 order when there are 68 of them and
the model names iBUG points. Rows named by bare numbers are 0-based iBUG indices, unless
68 is among them and 0 is not: then they count from 1, as the iBUG charts do.

Rows named ``vertex 123`` (``vertex_123``, ``vertex:123``) are model vertex 123 with any
model; with a model that has no named landmarks (statismo / scalismo files, the Basel
model) plain integer names are vertex indices too, as scalismo users give point ids.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import numpy as np

from ssm.errors import InputFileError
from ssm.io.landmarks import LandmarkPoints, read_landmark_points

log = logging.getLogger(__name__)

#: common names of iBUG-68 points (0-based indices; "right" = the subject's right)
IBUG_ALIASES = {
    "chin": 8, "menton": 8, "gnathion": 8,
    "right_eye_outer": 36, "right_eye_inner": 39, "left_eye_inner": 42, "left_eye_outer": 45,
    "right_exocanthion": 36, "right_endocanthion": 39, "left_endocanthion": 42, "left_exocanthion": 45,
    "nose_tip": 30, "pronasale": 30, "subnasale": 33, "nasion": 27,
    "right_mouth_corner": 48, "left_mouth_corner": 54, "right_cheilion": 48, "left_cheilion": 54,
    "upper_lip": 51, "labiale_superius": 51, "lower_lip": 57, "labiale_inferius": 57,
    "right_brow_outer": 17, "right_brow_inner": 21, "left_brow_inner": 22, "left_brow_outer": 26,
    "right_alar": 31, "left_alar": 35,
}


def normalise_name(name: str) -> str:
    s = re.sub(r"[^a-z0-9]+", "_", name.strip().lower()).strip("_")
    s = s.replace("corner_of_mouth", "mouth_corner").replace("_corner_mouth", "_mouth_corner")
    s = re.sub(r"^(r|l)_", lambda m: {"r": "right_", "l": "left_"}[m.group(1)], s)
    return s


def ibug_index(name: str) -> int | None:
    """The iBUG-68 index a landmark name refers to, if any."""
    s = normalise_name(name)
    m = re.fullmatch(r"(?:ibug|lm|landmark|pt|point)?_?(\d{1,2})", s)
    if m and int(m.group(1)) < 68:
        return int(m.group(1))
    return IBUG_ALIASES.get(s)


def ibug_points(path) -> dict[int, np.ndarray]:
    """The landmarks of a file (any format :func:`ssm.io.landmarks.read_landmark_points`
    reads) by iBUG-68 index: named ones by their names (``lm30``, ``nose tip``, ...),
    unnamed rows in iBUG order; (3,) points in the file's frame and units."""
    lp = read_landmark_points(path)
    if lp.names is None:
        return {i: p for i, p in enumerate(lp.points)}
    out = {}
    for name, p in zip(lp.names, lp.points):
        i = ibug_index(name)
        if i is not None and np.isfinite(p).all():
            out[i] = p
    return out


def one_based_ibug(names: list[str]) -> bool:
    """Whether rows named by bare numbers count the iBUG-68 points from 1 (as the scheme's
    own charts do): all numbers, 68 among them, no 0. Numbers 0-67 are taken as
    0-based; a subset without 68 cannot tell and is read 0-based too."""
    if not names or not all(n.strip().isdigit() for n in names):
        return False
    numbers = [int(n) for n in names]
    return max(numbers) == 68 and min(numbers) >= 1


@dataclass(frozen=True)
class MatchedLandmarks:
    """Scan landmarks paired with model vertices.

    vertex : (L,) model vertex indices; points : (L, 3) scan frame and units;
    names : model landmark names; covariances : (L, 3, 3) scan units^2 or None.
    """

    vertex: np.ndarray
    points: np.ndarray
    names: tuple[str, ...]
    covariances: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.vertex)


def vertex_name(name: str) -> int | None:
    """The vertex index a landmark name gives explicitly (``vertex 123``), if any."""
    m = re.fullmatch(r"vertex_?(\d+)", normalise_name(name))
    return int(m.group(1)) if m else None


def match_landmarks(model_landmarks: dict[str, int], lp: LandmarkPoints, path: str = "landmarks",
                    n_vertices: int | None = None) -> MatchedLandmarks:
    """Pair the rows of a landmark file with the model's landmarks (see module doc).

    n_vertices : the model's vertex count, which vertex-index rows must stay under (None:
        not checked).
    """
    names = list(model_landmarks)
    pairs: list[tuple[str, int, int]] = []  # (name, row, model vertex)
    if lp.names is not None:
        by_norm = {normalise_name(n): n for n in names}
        by_ibug = {ibug_index(n): n for n in names if ibug_index(n) is not None}
        unknown = []
        rows_named = list(lp.names)
        if by_ibug and one_based_ibug(rows_named):
            log.warning("%s: landmarks numbered 1-68 are taken as the iBUG points' 1-based numbers", path)
            rows_named = [str(int(n) - 1) for n in rows_named]
        for row, raw in enumerate(rows_named):
            v = vertex_name(raw)
            if v is None and not names and raw.strip().isdigit():
                v = int(raw)  # no model landmarks to index: a point id, as scalismo users give them
            if v is not None:
                if n_vertices is not None and v >= n_vertices:
                    raise InputFileError(path, f"landmark {raw!r} names vertex {v}, but the model has "
                                               f"{n_vertices} vertices", f"use vertex indices 0 to {n_vertices - 1}")
                pairs.append((f"vertex{v}", row, v))
                continue
            hit = by_norm.get(normalise_name(raw))
            if hit is None and ibug_index(raw) is not None:
                hit = by_ibug.get(ibug_index(raw))
            if hit is None and not by_ibug and raw.strip().isdigit() and int(raw) < len(names):
                hit = names[int(raw)]  # a plain index into the model's landmark list
            if hit is None:
                unknown.append(raw)
            else:
                pairs.append((hit, row, model_landmarks[hit]))
        if unknown and not pairs:
            if not names:
                raise InputFileError(path, "the model has no named landmarks",
                                     "name the rows by model vertex ('vertex 123', or a plain index), train the "
                                     "model from a corpus imported with --landmarks, or fit without --landmarks")
            raise InputFileError(path, f"none of the landmark names match the model's ({', '.join(unknown[:4])}"
                                       f"{' ...' if len(unknown) > 4 else ''})",
                                 f"use the model's names: {', '.join(names[:8])}{' ...' if len(names) > 8 else ''}")
    elif not names:
        raise InputFileError(path, "the model has no named landmarks, and the rows have no names",
                             "name the rows by model vertex ('vertex 123,x,y,z' or '123 x y z'), or fit without "
                             "--landmarks")
    elif len(lp) == len(names):
        pairs = [(n, i, model_landmarks[n]) for i, n in enumerate(names)]
    elif len(lp) == 68 and sum(ibug_index(n) is not None for n in names) >= 3:
        by_ibug = {ibug_index(n): n for n in names if ibug_index(n) is not None}
        pairs = [(by_ibug[i], i, model_landmarks[by_ibug[i]]) for i in range(68) if i in by_ibug]
    else:
        raise InputFileError(path, f"{len(lp)} unnamed landmarks but the model has {len(names)}",
                             "give all of them in the model's order (NaN rows for missing) or name the rows")
    pairs = [p for p in pairs if np.all(np.isfinite(lp.points[p[1]]))]
    if not pairs:
        raise InputFileError(path, "no usable landmark (all missing)", "fit without --landmarks")
    rows = np.array([r for _, r, _ in pairs])
    cov = None if lp.covariances is None else lp.covariances[rows]
    return MatchedLandmarks(np.array([v for _, _, v in pairs]), lp.points[rows].copy(),
                            tuple(n for n, _, _ in pairs), cov)


# median landmark-to-scan distance, as a share of the scan's extent, beyond which the
# landmarks are not on the scan (wrong units or frame); and the unit factors tried to say so
LANDMARKS_OFF_SCAN = 0.1
LANDMARKS_OFF_SPREAD = 0.25  # ... or (3+ landmarks) of their own spread
LANDMARKS_MIN_SPREAD = 0.01  # ... or 3+ landmarks spread over less than this share of it
UNIT_FACTORS = (1000.0, 100.0, 10.0, 25.4, 0.1, 0.01, 0.001, 1.0 / 25.4)


def check_landmarks_on_scan(points: np.ndarray, scan_tree, scan_extent: float, path: str = "landmarks") -> None:
    """Raise :class:`InputFileError` when landmarks are not on the scan.

    points : (L, 3) landmarks (scan frame and units); scan_tree : KD-tree of the scan
    points; scan_extent : the scan's bounding-box diagonal (scan units). Landmarks lie on
    or near the scanned surface and spread over a face: a median distance over
    :data:`LANDMARKS_OFF_SCAN` of the scan's extent or (three or more) over
    :data:`LANDMARKS_OFF_SPREAD` of their own spread, or three or more landmarks within
    :data:`LANDMARKS_MIN_SPREAD` of it, say they were written in other units or another
    frame, and the message names the unit factor that puts them on the scan, when one does.
    """
    pts = np.asarray(points, np.float64)
    pts = pts[np.isfinite(pts).all(1)]
    if not len(pts) or not scan_extent > 0:
        return

    def placement(p):  # (median distance to the scan, spread), both as shares of its extent
        return (float(np.median(scan_tree.query(p)[0])) / scan_extent,
                float(np.linalg.norm(np.ptp(p, axis=0))) / scan_extent)

    def on_scan(near, spread):  # relative to the scan's extent and (3+) to their own spread
        if len(pts) < 3:
            return near <= LANDMARKS_OFF_SCAN
        return near <= min(LANDMARKS_OFF_SCAN, LANDMARKS_OFF_SPREAD * spread) and spread >= LANDMARKS_MIN_SPREAD

    near, spread = placement(pts)
    if on_scan(near, spread):
        return
    fix = "give them in the scan's units and frame"
    for f in UNIT_FACTORS:
        near_f, spread_f = placement(pts * f)
        if on_scan(near_f, spread_f) and near_f <= 0.02:
            fix += f"; scaled by {f:g} they lie on it"
            break
    raise InputFileError(path, f"the landmarks are not on the scan (median {near * scan_extent:.3g} scan units from "
                               f"it, spread over {spread * scan_extent:.3g}; the scan is {scan_extent:.3g} across)",
                         fix)
