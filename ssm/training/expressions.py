"""An expression model from paired scans: each expression scan minus its subject's
neutral scan, in the identity model's frame, then a PCA of those offsets.

This is the Basel Face Model's layout (a face is ``identity mean + expression mean +
identity basis a + expression basis b``): saved beside the identity model with
``save_model(model, path, expression=...)``, it lets ``ssm fit`` fit a face's
expression apart from its identity (:mod:`ssm.fitting.refine.expression_model`).

Pairing: an expression scan belongs to the neutral scan whose subject id starts its own,
followed by a separator (``s012`` for ``s012_smile`` or ``s012/jaw_open``, not for
``s0120``), or is its own (the longest such id). Each neutral is
placed on the identity model's mean by a similarity, and the same transform takes its
expression scan along; a robust rigid alignment of the expression onto the neutral then
takes out the head's own motion between the two scans (its weights fall where the
expression moved the face, so the still parts decide).
"""

from __future__ import annotations

import numpy as np

from ssm.errors import SSMError
from ssm.geometry.similarity import Similarity, fit_similarity
from ssm.models.shape_model import ShapeModel

ROBUST_ROUNDS = 10  # iteratively reweighted rigid alignment of an expression onto its neutral


def pair_expressions(neutral_ids: list[str], expression_ids: list[str]) -> list[tuple[int, int]]:
    """(expression row, neutral row) for every expression scan whose id is a neutral id
    followed by a separator and more (``s012_smile``; the longest such neutral id) or the
    neutral id itself; raises SSMError naming the scans with none."""
    order = sorted(range(len(neutral_ids)), key=lambda i: -len(neutral_ids[i]))

    def belongs(eid: str, nid: str) -> bool:  # "s012_smile" to "s012", not "s0120" to "s012"
        return eid == nid or (eid.startswith(nid) and not eid[len(nid)].isalnum())

    pairs, orphans = [], []
    for j, eid in enumerate(expression_ids):
        hit = next((i for i in order if belongs(eid, neutral_ids[i])), None)
        if hit is None:
            orphans.append(eid)
        else:
            pairs.append((j, hit))
    if orphans:
        raise SSMError(f"{len(orphans)} expression scan(s) have no neutral scan whose id starts theirs "
                       f"({', '.join(orphans[:4])}{' ...' if len(orphans) > 4 else ''}): name them "
                       "<neutral id>_<expression>")
    return pairs


def expression_offsets(model_mean: np.ndarray, neutral: np.ndarray, expression: np.ndarray) -> np.ndarray:
    """(N, 3) offset of ``expression`` from ``neutral`` (both (N, 3), one subject, scan
    units) in the frame of ``model_mean`` (N, 3): the neutral placed on the mean by a
    similarity, the expression by the same transform and then a robust rigid alignment
    onto the placed neutral."""
    s, r, t = fit_similarity(neutral, model_mean)
    place = Similarity(float(s), r, t)
    n, e = place.apply(neutral), place.apply(expression)
    w = np.ones(len(n))
    for _ in range(ROBUST_ROUNDS):  # the still parts of the face decide
        _, r2, t2 = fit_similarity(e, n, weights=w, scale=False)
        moved = e @ r2.T + t2
        d2 = ((moved - n) ** 2).sum(1)
        w = 1.0 / (1.0 + d2 / max(float(np.median(d2)), 1e-12))  # Cauchy weights at the median residual
    return moved - n


def train_expression_model(model: ShapeModel, neutral: np.ndarray, expressions: np.ndarray,
                           pairs: list[tuple[int, int]], n_components: int | float | None = 0.999
                           ) -> ShapeModel:
    """The expression model of ``model``'s mesh from paired scans.

    neutral : (S, N, 3) neutral scans; expressions : (E, N, 3) expression scans (mm);
    pairs : (expression row, neutral row) from :func:`pair_expressions`.
    n_components : int (at most), a fraction of the variance to keep (0 < f < 1; the
        default keeps 99.9 %, which leaves out the alignment's noise), or None (all). Returns a :class:`ShapeModel` whose ``mean`` is the average offset (N, 3),
        with the offsets' principal components (variances in mm^2) and the model's
        triangles.
    """
    if len(pairs) < 2:
        raise SSMError(f"an expression model needs at least 2 expression scans, got {len(pairs)}")
    from ssm.training.pca import pca_exact

    mean = np.asarray(model.mean, np.float64)
    offsets = np.stack([expression_offsets(mean, neutral[i], expressions[j]) for j, i in pairs])
    basis, variances, _, mu = pca_exact(offsets.reshape(len(offsets), -1))
    keep = variances > variances[0] * 1e-10 if len(variances) else variances > 0
    basis, variances = basis[:, keep], variances[keep]
    if isinstance(n_components, float) and 0 < n_components < 1:
        k = int(np.searchsorted(np.cumsum(variances) / variances.sum(), n_components) + 1)
        basis, variances = basis[:, :k], variances[:k]
    elif n_components is not None:
        basis, variances = basis[:, :int(n_components)], variances[:int(n_components)]
    return ShapeModel(mu.reshape(-1, 3), basis, variances, triangles=model.triangles, units=model.units,
                      provenance={"builder": "ssm.training.expressions", "n_expression_scans": len(pairs),
                                  "n_subjects": len({i for _, i in pairs})})
