"""A model's length unit, from what it declares and how large its mean head is.

Fitting works in millimetres (every distance in :class:`ssm.fitting.config.FitConfig`
is one), and statismo-layout files carry no units. Models made by other tools are often
in other units: FLAME's in metres, the Basel Face Model 2009's in micrometres, so a
model is checked against the size of a head before a fit and scaled to mm when its
declared unit does not fit and another clearly does.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from ssm.units import HEAD_DIAGONAL_MM, MM_PER_UNIT, guess_units
from ssm.models.shape_model import ShapeModel

log = logging.getLogger(__name__)

#: units a model is taken to be in when its declared one makes its head implausible
MODEL_UNITS = ("mm", "cm", "m", "um")


def model_mm_per_unit(model: ShapeModel) -> float:
    """Millimetres per model unit.

    The declared ``model.units`` (mm when unknown) when the mean's bounding-box diagonal
    is head-sized in it (:data:`~ssm.units.HEAD_DIAGONAL_MM`); otherwise the one of
    :data:`MODEL_UNITS` it is head-sized in (a FLAME model in metres: 0.3 across; a
    Basel 2009 model in micrometres: 250,000); otherwise the declared unit (a model of
    something other than a head, left as it is).
    """
    declared = _declared_mm_per_unit(model)
    diagonal = mean_diagonal(model)
    lo, hi = HEAD_DIAGONAL_MM
    if lo <= diagonal * declared <= hi:
        return declared
    guess = guess_units(diagonal, MODEL_UNITS)
    return declared if guess is None else MM_PER_UNIT[guess]


def in_millimetres(model: ShapeModel) -> tuple[ShapeModel, float]:
    """``model`` in mm and the factor (mm per model unit, :func:`model_mm_per_unit`) it
    was scaled by: the model itself when it already is (factor 1), else
    :func:`scaled_model`, cached on ``model`` (a cache, not state: a batch fits one model
    to many scans). A unit other than the declared one is logged as a warning."""
    factor = model_mm_per_unit(model)
    if factor == 1.0:
        return model, 1.0
    cache = model.__dict__.get("_in_millimetres")
    if cache is None:
        declared = _declared_mm_per_unit(model)
        if factor != declared:
            log.warning("the model is %.3g %s across, too %s for a head: fitted as %g mm per unit (results in mm)",
                        mean_diagonal(model), model.units, "small" if factor > declared else "large", factor)
        cache = scaled_model(model, factor)
        object.__setattr__(model, "_in_millimetres", cache)
    return cache, factor


def _declared_mm_per_unit(model: ShapeModel) -> float:
    return MM_PER_UNIT.get(str(model.units).lower(), 1.0)


def mean_diagonal(model: ShapeModel) -> float:
    """The bounding-box diagonal of the model's mean, model units."""
    mean = np.asarray(model.mean, np.float64)
    return float(np.linalg.norm(mean.max(0) - mean.min(0)))


def scaled_model(model: ShapeModel, factor: float) -> ShapeModel:
    """A copy of ``model`` in mm, its coordinates ``factor`` mm per unit: the mean and the
    standard deviations times ``factor`` (the orthonormal basis unchanged), dtype kept."""
    mean = np.asarray(model.mean)
    variances = np.asarray(model.variances)
    return dataclasses.replace(
        model, mean=(mean * factor).astype(mean.dtype), variances=(variances * factor ** 2).astype(variances.dtype),
        noise_variance=float(model.noise_variance) * factor ** 2, units="mm",
        provenance={**model.provenance, "scaled_to_mm": {"from_units": str(model.units), "mm_per_unit": factor}})
