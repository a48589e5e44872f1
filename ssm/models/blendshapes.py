"""Named expression shapes of a model's mesh (blendshapes, ARKit-style names).

A face is ``mean + identity + sum_k w_k deltas[k]`` with each weight ``w_k`` in
``value_range`` (0 to 1 for ARKit's shapes: ``jawOpen`` 1 is the jaw fully open). The same
shapes serve as the fit's expression basis (:meth:`Blendshapes.expression_model`): each
is a direction whose weight has a Gaussian prior of ``weight_sd``, so a fit's
standardised expression coefficients ``c`` are the weights ``weight_sd * c``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from ssm.models.shape_model import ShapeModel

WEIGHT_SD = 0.3  # the prior deviation of a blendshape's weight in a fit: everyday expressions


@dataclass(frozen=True, eq=False)
class Blendshapes:
    """names : (E,) the shapes' names; deltas : (E, N, 3) float32 offsets from the neutral
    face, model units and frame; value_range : the weights' range, (0, 1) for ARKit's."""

    names: tuple[str, ...]
    deltas: np.ndarray
    value_range: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self) -> None:
        d = np.asarray(self.deltas)
        if d.ndim != 3 or d.shape[2] != 3 or d.shape[0] != len(self.names):
            raise ValueError(f"blendshape deltas must be (E={len(self.names)}, N, 3), got {d.shape}")
        if len(set(self.names)) != len(self.names):
            raise ValueError("blendshape names must be unique")
        if not np.isfinite(d).all():
            raise ValueError("blendshape deltas must be finite")
        lo, hi = self.value_range
        if not lo < hi:
            raise ValueError(f"blendshape value range must be (low, high) with low < high, got {self.value_range}")
        d = np.ascontiguousarray(d)
        d.setflags(write=False)
        object.__setattr__(self, "deltas", d)
        object.__setattr__(self, "names", tuple(str(n) for n in self.names))

    @property
    def n_vertices(self) -> int:
        return self.deltas.shape[1]

    def offsets(self, weights: Mapping[str, float] | np.ndarray) -> np.ndarray:
        """(N, 3) float64 sum of the weighted shapes; ``weights`` by name (others 0; an
        unknown name is a KeyError) or as an (E,) array in :attr:`names` order."""
        if isinstance(weights, Mapping):
            unknown = sorted(set(weights) - set(self.names))
            if unknown:
                raise KeyError(f"no blendshape named {', '.join(unknown)}")
            w = np.array([float(weights.get(n, 0.0)) for n in self.names])
        else:
            w = np.asarray(weights, np.float64).reshape(-1)
            if len(w) != len(self.names):
                raise ValueError(f"{len(w)} weights for {len(self.names)} blendshapes")
        return np.einsum("e,end->nd", w, self.deltas.astype(np.float64))

    def expression_model(self, like: ShapeModel, weight_sd: float = WEIGHT_SD) -> ShapeModel:
        """The shapes as a fit's expression basis on ``like``'s mesh: mean 0 (offsets),
        basis the shapes as unit columns (not orthogonalised: each stays its named
        shape), variances ``(weight_sd * |delta_k|)^2``; ``provenance`` names the shapes
        and ``weight_sd`` (:func:`named_weights` reads them back)."""
        if self.n_vertices != like.n_vertices:
            raise ValueError(f"{self.n_vertices}-vertex blendshapes for a {like.n_vertices}-vertex model")
        flat = self.deltas.reshape(len(self.names), -1).astype(np.float64).T  # (3N, E)
        norms = np.linalg.norm(flat, axis=0)
        keep = norms > 0
        basis = flat[:, keep] / norms[keep]
        return ShapeModel(np.zeros((self.n_vertices, 3)), basis, (weight_sd * norms[keep]) ** 2,
                          triangles=like.triangles, units=like.units,
                          provenance={"blendshapes": [n for n, k in zip(self.names, keep) if k],
                                      "weight_sd": weight_sd, "value_range": list(self.value_range)})


def named_weights(expression: ShapeModel, coeffs: np.ndarray) -> dict[str, float] | None:
    """Blendshape name -> weight (clipped to the shapes' value range) of a fit's
    standardised expression coefficients (E,), for an expression model made by
    :meth:`Blendshapes.expression_model`; None for another expression model."""
    names = expression.provenance.get("blendshapes")
    if not names or len(names) != len(coeffs):
        return None
    lo, hi = expression.provenance.get("value_range", (0.0, 1.0))
    sd = float(expression.provenance.get("weight_sd", WEIGHT_SD))
    return {n: float(np.clip(sd * c, lo, hi)) for n, c in zip(names, coeffs)}
