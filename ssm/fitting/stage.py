"""What every fitting stage reports."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class StageReport:
    """One stage: name, wall time, residuals (mm) and stage-specific extras."""

    name: str
    seconds: float
    residual_mean_mm: float
    residual_median_mm: float
    n_correspondences: int
    converged: bool = True
    extra: dict = field(default_factory=dict)


def residual_stats(d: np.ndarray) -> tuple[float, float]:
    """(mean, median) of residual distances, NaN-safe, 0 for none."""
    d = np.asarray(d, dtype=np.float64)
    d = d[np.isfinite(d)]
    if not d.size:
        return float("nan"), float("nan")
    return float(d.mean()), float(np.median(d))
