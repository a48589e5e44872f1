"""Length units and a plausibility check for head-sized data."""

from __future__ import annotations

import numpy as np

from ssm.errors import InputFileError

#: millimetres per unit
MM_PER_UNIT = {"mm": 1.0, "cm": 10.0, "m": 1000.0, "um": 1e-3, "in": 25.4}

#: plausible bounding-box diagonal of a face or head scan, mm
HEAD_DIAGONAL_MM = (60.0, 1500.0)


def mm_per_unit(units: str) -> float:
    """Millimetres per ``units``; raises ValueError for unknown names."""
    try:
        return MM_PER_UNIT[units.lower()]
    except KeyError:
        raise ValueError(f"unknown units {units!r}; use one of {', '.join(MM_PER_UNIT)}") from None


def guess_units(diagonal: float, units: tuple[str, ...] = ("mm", "cm", "m", "in")) -> str | None:
    """The first of ``units`` that makes a bounding-box diagonal look like a head, or None."""
    lo, hi = HEAD_DIAGONAL_MM
    for name in units:
        if lo <= diagonal * MM_PER_UNIT[name] <= hi:
            return name
    return None


def check_head_units(vertices: np.ndarray, units: str, path, trim: float = 0.0) -> None:
    """Raise a clear error when ``vertices`` in ``units`` are not head-sized.

    vertices : (N, 3) coordinates in ``units``; path names the file in the message;
    trim : share of the points left out at each end of each axis (stray points of a raw
    scan), 0 for the whole box; the quantiles come from at most 200k points (evenly
    strided: a dense scan's order is its scan lines, so a stride still covers it).
    """
    v = np.asarray(vertices)
    if trim > 0 and len(v) > 200_000:
        v = v[:: len(v) // 200_000]
    v = v.astype(np.float64, copy=False)
    lo_q, hi_q = np.quantile(v, [trim, 1.0 - trim], axis=0) if trim > 0 else (v.min(0), v.max(0))
    diag = float(np.linalg.norm(hi_q - lo_q))
    lo, hi = HEAD_DIAGONAL_MM
    size_mm = diag * mm_per_unit(units)
    if lo <= size_mm <= hi:
        return
    guess = guess_units(diag)
    fix = f"it looks like {guess}; pass --units {guess}" if guess else "check the file's scale and --units"
    raise InputFileError(path, f"a head {size_mm:.3g} mm across is implausible for units={units}", fix)
