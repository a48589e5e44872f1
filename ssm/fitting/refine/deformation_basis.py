"""A smooth deformation basis over part of the model, to fit it jointly with the identity.

Where a subject leaves the model's span over a region (an expression in front of an
identity model), the identity either bends to explain it, or, fitted without the region,
loses the data there. Augmenting the model with a smooth random field over the region,
in the spirit of Gaussian-process morphable models (Luethi et al. 2018, the augmented
kernels of scalismo), lets one fit explain the region with both: the identity from the
whole scan and the landmarks, the departure from it by the field::

    x = mean + U diag(sd) c + taper(v) * sum_j b_j psi_j(v),   c, b ~ N(0, I)

one independent field per axis, with ``taper`` (1 in the region, a Gaussian of
``taper_mm`` outside) keeping it off the rest of the head. On a mesh, ``psi`` spans the
heat kernel of the model's surface (:func:`heat_kernel_fields`): the correlation falls
with the distance *along the skin*, so the two lips of a closed mouth, a millimetre apart
but joined only at the mouth corners, move independently (an open jaw), where a Gaussian
of the Euclidean distance ties them together. A model without triangles gets a Gaussian
of the Euclidean distance (:func:`gaussian_fields`).

Most expressions are nearly symmetric, and a field fitted without knowing it follows
landmark noise and the surface's one-sided evidence on each side apart. When the first
refit's field is mostly symmetric about the model's mirror plane
(:mod:`ssm.geometry.mirror`; not for a one-sided smile), :func:`fit_with_field` fits it
again with its two sides correlated by that much (:func:`mirror_correlation`,
:func:`augmented_model`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.spatial import cKDTree

from ssm.fitting.model_fit.basis import basis_instance, model_of_scaled_basis, scaled_basis
from ssm.fitting.model_fit.iterate import fit_model
from ssm.fitting.model_fit.schedule import Schedule, augmented_schedule
from ssm.fitting.problem import FitProblem
from ssm.fitting.state import FitState
from ssm.geometry.mesh_ops import vertex_adjacency
from ssm.geometry.mesh_spectrum import Harmonics, low_harmonics
from ssm.geometry.mirror import Mirror, find_mirror, mirror_parity, symmetric_share
from ssm.io.array_cache import array_key, load_arrays, save_arrays
from ssm.models.shape_model import ShapeModel

log = logging.getLogger(__name__)

# the refit with a deformation field starts from the model fit: a short anneal of the prior
REFIT_PRIOR = (16.0, 4.0, 1.0)
REFIT_ITERATIONS = 3

NYSTROEM_POINTS = 600  # kernel points of the Euclidean low-rank expansion (a 600 x 600 eigenproblem)
EIGEN_TOL = 1e-3  # eigenfunctions below this share of the largest eigenvalue are dropped
# relevance rounds (fit_with_field): the field's length is averaged over this many rings
# of neighbours (about a feature's size, 10 mm, on a head mesh) and never shrinks below this share
RELEVANCE_SMOOTHING = 10
RELEVANCE_FLOOR = 0.1
PROBE_ITERATIONS = 2  # field_rms: joint iterations at the full prior
# field_rms: the probe's correlation length (mm), which its gate
# (FitConfig.refine.expression_field_gate_mm) was set with; the refit's is the config's
PROBE_LENGTH_MM = 50.0
FIELD_CACHE_SIZE = 2  # whole-model augmented bases kept on a model (the probe's, the refit's)
# mirror correlation of the field (fit_with_field): the symmetric share of the first
# refit's field (ssm.geometry.mirror.symmetric_share), capped here, becomes the field's
# correlation between the two sides; under the floor the field stays as it is
MIRROR_RHO_MAX = 0.85
MIRROR_RHO_MIN = 0.1
HARMONICS_CACHE_VERSION = 1  # bump when low_harmonics changes what it returns


def _gaussian(a: np.ndarray, b: np.ndarray, length: float) -> np.ndarray:
    """(len(a), len(b)) Gaussian kernel between point sets, via squared norms (no (A, B, 3))."""
    d2 = (a ** 2).sum(1)[:, None] + (b ** 2).sum(1)[None] - 2.0 * a @ b.T
    return np.exp(-0.5 * np.clip(d2, 0.0, None) / length ** 2)


def region_taper(vertices: np.ndarray, region: np.ndarray, taper_mm: float) -> np.ndarray:
    """(N,) 1 in ``region``, ``exp(-d^2 / (2 taper_mm^2))`` at distance ``d`` (mm) from it."""
    d, _ = cKDTree(vertices[region]).query(vertices)
    return np.exp(-0.5 * (d / taper_mm) ** 2)


def model_harmonics(model: ShapeModel, length_mm: float) -> Harmonics:
    """The manifold harmonics of the model's mean surface that a heat kernel of
    ``length_mm`` needs (weights above :data:`EIGEN_TOL`), computed once per model and
    length and cached on it (a cache, not state), and on disk
    (:mod:`ssm.io.array_cache`, keyed by the mean, the triangles and the eigenvalue
    bound): on the 11k-vertex ICT head the eigenproblem takes about 1.2 s at 50 mm and
    4.7 s at 30 mm, which each new process (each ``ssm fit`` run) would pay again. A
    cached entry holds the same arrays the solve gives, so a fit is the same with or
    without it."""
    cache = model.__dict__.get("_harmonics")
    if cache is None:
        cache = {}
        object.__setattr__(model, "_harmonics", cache)
    if length_mm not in cache:
        mean = np.asarray(model.mean, np.float64).reshape(-1, 3)
        bound = harmonics_bound(length_mm)
        triangles = np.asarray(model.triangles, np.int64)
        shipped = _shipped_harmonics(model, mean, triangles, bound)
        name = f"harmonics-{array_key(HARMONICS_CACHE_VERSION, mean, triangles, bound)}"
        stored = shipped or _stored_harmonics(load_arrays(name), len(mean))
        if stored is not None:
            cache[length_mm] = stored
        else:
            cache[length_mm] = low_harmonics(mean, triangles, bound)
            save_arrays(name, eigenvalues=cache[length_mm].eigenvalues, functions=cache[length_mm].functions)
    return cache[length_mm]


def harmonics_bound(length_mm: float) -> float:
    """The largest eigenvalue (1/mm^2) a heat kernel of ``length_mm`` weighs above
    :data:`EIGEN_TOL`: its time is ``t = length^2 / 2`` (a Gaussian of ``length`` on a plane)."""
    return float(np.log(1.0 / EIGEN_TOL) / (0.5 * length_mm ** 2))


def precompute_harmonics(model: ShapeModel, shortest_length_mm: float) -> dict[str, np.ndarray]:
    """The manifold harmonics of the model's mean surface that fields of
    ``shortest_length_mm`` or longer need, as ``ShapeModel.precomputed`` arrays to ship
    in its file (float32 functions; keyed by the mean and triangles they belong to)."""
    mean = np.asarray(model.mean, np.float64).reshape(-1, 3)
    triangles = np.asarray(model.triangles, np.int64)
    bound = harmonics_bound(shortest_length_mm)
    h = low_harmonics(mean, triangles, bound)
    return {"harmonics_eigenvalues": h.eigenvalues, "harmonics_functions": h.functions.astype(np.float32),
            "harmonics_bound": np.float64(bound),
            "harmonics_key": np.bytes_(array_key(HARMONICS_CACHE_VERSION, mean, triangles))}


def _shipped_harmonics(model: ShapeModel, mean: np.ndarray, triangles: np.ndarray, bound: float) -> Harmonics | None:
    """The harmonics up to ``bound`` from the model's precomputed arrays, when they were
    computed from this mean and mesh up to at least that bound; else None."""
    pre = model.precomputed
    if not {"harmonics_eigenvalues", "harmonics_functions", "harmonics_bound", "harmonics_key"} <= set(pre):
        return None
    key = np.asarray(pre["harmonics_key"]).reshape(-1)[0]
    key = key.decode() if isinstance(key, bytes) else str(key)
    if key != array_key(HARMONICS_CACHE_VERSION, mean, triangles) or float(pre["harmonics_bound"]) < bound:
        return None
    lam = np.asarray(pre["harmonics_eigenvalues"], np.float64)
    keep = lam <= bound
    return _stored_harmonics({"eigenvalues": lam[keep],
                              "functions": np.asarray(pre["harmonics_functions"])[:, keep].astype(np.float64)},
                             len(mean))


def _stored_harmonics(stored: dict | None, n_vertices: int) -> Harmonics | None:
    """A disk cache entry as :class:`Harmonics`, when it holds finite (k,) eigenvalues and
    (n_vertices, k) functions; else None (computed again)."""
    if stored is None or set(stored) != {"eigenvalues", "functions"}:
        return None
    lam, phi = stored["eigenvalues"], stored["functions"]
    if lam.ndim != 1 or phi.shape != (n_vertices, len(lam)) or not (np.isfinite(lam).all() and np.isfinite(phi).all()):
        return None
    return Harmonics(lam, phi)


def heat_kernel_fields(harmonics: Harmonics, length_mm: float, taper: np.ndarray,
                       smoothness: float | None = None) -> np.ndarray:
    """(N, k) fields ``taper * psi_j`` whose sum with ``b ~ N(0, I)`` is a Gaussian process
    with the surface's heat kernel of time ``t = length_mm^2 / 2`` (on a plane, a Gaussian
    of ``length_mm``), normalised to variance 1 at each vertex, times the taper (N,).

    smoothness : None for the heat kernel (spectral weights ``exp(-t lam)``); a number
    ``nu`` for the Matern-like kernel of weights ``(1 + t lam / nu)^-nu``, which tends to
    the heat kernel as ``nu`` grows and is rougher for a small ``nu``: more of its
    variance at short wavelengths, for sharper changes where dense data asks for them.
    Both use the same harmonics (``harmonics``, cut where the heat kernel's weight falls
    under :data:`EIGEN_TOL`; at ``nu`` = 8 the Matern weight there is 0.007).
    """
    lam, phi = harmonics.eigenvalues, harmonics.functions
    t = 0.5 * length_mm ** 2
    if smoothness is None:
        f = phi * np.exp(-0.5 * t * lam)  # the square roots of the spectral weights
    else:
        f = phi * (1.0 + t * lam / smoothness) ** (-0.5 * smoothness)
    sd = np.sqrt((f ** 2).sum(1))
    scale = np.where(sd > 0, taper / np.maximum(sd, 1e-300), 0.0)
    scale[taper < 1e-3] = 0.0
    return f * scale[:, None]


def gaussian_fields(vertices: np.ndarray, length_mm: float, taper: np.ndarray, rng: np.random.Generator,
                    points: int = NYSTROEM_POINTS) -> np.ndarray:
    """(N, M) fields ``taper * psi_j`` spanning a Gaussian kernel of the Euclidean distance
    (variance 1) by a Nystroem expansion over up to ``points`` anchors where the taper is
    above 1e-3. ``M`` is about (extent / length)^2."""
    v = np.asarray(vertices, np.float64)
    support = np.flatnonzero(taper > 1e-3)
    anchors = support if len(support) <= points else rng.choice(support, points, replace=False)
    lam, q = np.linalg.eigh(_gaussian(v[anchors], v[anchors], length_mm))
    keep = lam > EIGEN_TOL * lam[-1]
    lam, q = lam[keep], q[:, keep]
    fields = np.zeros((len(v), len(lam)))
    # Nystroem: k(v, anchors) K^-1 k(anchors, w) = sum_j psi_j(v) psi_j(w), psi = k Q / sqrt(lam)
    fields[support] = (_gaussian(v[support], v[anchors], length_mm) @ q) / np.sqrt(lam) * taper[support, None]
    return fields


def smooth_deformation_basis(model: ShapeModel, vertices: np.ndarray, region: np.ndarray, length_mm: float,
                             taper_mm: float, rng: np.random.Generator, smoothness: float | None = None
                             ) -> np.ndarray:
    """(N, M) unit-variance scalar fields over the model's vertices, free in ``region``.

    vertices : (N, 3) the fitted shape, model frame, mm (the taper's distances); region :
    (N,) bool. A sum ``sum_j b_j field_j`` with ``b ~ N(0, I)`` is a Gaussian process of
    variance 1 and correlation length ``length_mm`` inside the region, along the model's
    surface (:func:`heat_kernel_fields`) or, for a model without triangles, in space
    (:func:`gaussian_fields`; also where the mesh's eigenproblem fails), fading as
    ``exp(-d^2 / (2 taper_mm^2))`` with the distance ``d`` from the region. On a mesh,
    ``smoothness`` picks a rougher Matern-like kernel instead of the heat kernel
    (:func:`heat_kernel_fields`).
    """
    if smoothness is not None and not smoothness > 0:
        raise ValueError(f"smoothness {smoothness!r}: give a number > 0 (FitConfig.refine.warp_basis_smoothness), "
                         "or None for the heat kernel")
    if not region.any():
        return np.zeros((len(vertices), 0))
    taper = region_taper(np.asarray(vertices, np.float64), region, taper_mm)
    if model.triangles is not None and len(model.triangles):
        try:
            fields = heat_kernel_fields(model_harmonics(model, length_mm), length_mm, taper, smoothness)
            if np.isfinite(fields).all():
                return fields
        except (RuntimeError, ValueError, ArithmeticError) as exc:  # ARPACK / factorisation on a broken mesh
            log.warning("no heat kernel on the model's mesh (%s): a Euclidean kernel instead", exc)
    return gaussian_fields(vertices, length_mm, taper, rng)


def augmented_model(model: ShapeModel, fields: np.ndarray, amplitude_mm: float, mirror: Mirror | None = None,
                    mirror_rho: float = 0.0, identity_sd: float = 1.0) -> ShapeModel:
    """The model with ``3 M`` more components: ``amplitude_mm * fields`` (N, M) along x, y, z.

    The first K components are the model's, with standard deviations ``identity_sd``
    times the model's (a weaker prior on the identity for ``identity_sd`` > 1), so
    ``identity_sd * coeffs[:K]`` of a fit of the augmented model are the identity's
    (:func:`refit_augmented` converts them). The basis is kept
    in float32, already scaled (variances 1), and shared with :func:`scaled_basis`;
    instances come from :func:`ssm.fitting.model_fit.basis.basis_instance`.

    With a ``mirror`` (:func:`model_mirror`) and ``mirror_rho`` in (0, 1], the field's
    two sides are correlated by ``mirror_rho``: the fields go along the mirror plane's
    normal and two directions in it, and each is scaled by ``sqrt(1 + rho * sign *
    parity)``, with ``parity`` how even the scalar field is under the mirror
    (:func:`ssm.geometry.mirror.mirror_parity`) and ``sign`` -1 along the normal (a
    symmetric displacement flips it there), +1 in the plane. The covariance becomes about
    ``k(v, w) + rho R k(v, mirror(w))`` (``R`` the reflection): a symmetric deformation
    is more likely than a one-sided one, which stays possible. ``mirror_rho`` = 0 is the
    field as it was, unchanged to the bit.
    """
    phi = scaled_basis(model)  # (N, 3, K) float32
    n, _, k = phi.shape
    m = fields.shape[1]
    aug = np.zeros((n, 3, k + 3 * m), np.float32)
    aug[:, :, :k] = phi if identity_sd == 1.0 else phi * np.float32(identity_sd)
    if mirror is None or mirror_rho <= 0.0:
        for axis in range(3):
            aug[:, axis, k + axis * m:k + (axis + 1) * m] = amplitude_mm * fields
    else:
        parity = mirror_parity(fields, mirror.index)
        for axis, (sign, direction) in enumerate(zip((-1.0, 1.0, 1.0), mirror.frame())):
            scale = amplitude_mm * np.sqrt(np.clip(1.0 + mirror_rho * sign * parity, 0.0, None))
            aug[:, :, k + axis * m:k + (axis + 1) * m] = (fields * scale)[:, None, :] * direction[None, :, None]
    return model_of_scaled_basis(model.mean, aug, model)


def model_mirror(model: ShapeModel) -> Mirror | None:
    """The mirror symmetry of the model's mean (:func:`ssm.geometry.mirror.find_mirror`),
    or None for a shape that is not symmetric; found once per model and cached on it."""
    if "_mirror" not in model.__dict__:
        object.__setattr__(model, "_mirror", find_mirror(np.asarray(model.mean, np.float64).reshape(-1, 3)))
    return model.__dict__["_mirror"]


def _neighbour_average(model: ShapeModel, vertices: np.ndarray) -> sp.csr_matrix:
    """(N, N) row-stochastic averaging over each vertex's mesh neighbours (its 8 nearest
    vertices for a model without triangles), the vertex itself included."""
    n = len(vertices)
    if model.triangles is not None and len(model.triangles):
        a = vertex_adjacency(model.triangles, n) + sp.identity(n, format="csr")
    else:
        _, nb = cKDTree(vertices).query(vertices, k=min(9, n))
        a = sp.csr_matrix((np.ones(nb.size), (np.repeat(np.arange(n), nb.shape[1]), nb.ravel())), shape=(n, n))
    deg = np.asarray(a.sum(axis=1)).ravel()
    return (sp.diags(1.0 / np.maximum(deg, 1.0)) @ a).tocsr()


def relevance(average: sp.csr_matrix, field: np.ndarray, amplitude_mm: float) -> np.ndarray:
    """(N,) the field's next per-vertex amplitude, relative to ``amplitude_mm``: its
    length (N, 3 -> N, mm) averaged :data:`RELEVANCE_SMOOTHING` times by ``average``
    (:func:`_neighbour_average`), over ``amplitude_mm``, at least :data:`RELEVANCE_FLOOR`.

    An automatic-relevance step: where the last fit needed the field it keeps its
    freedom, where it hardly used it the field shrinks, and the identity has to explain
    the data there by itself.
    """
    m = np.linalg.norm(field, axis=1)
    for _ in range(RELEVANCE_SMOOTHING):
        m = average @ m
    return np.maximum(m / amplitude_mm, RELEVANCE_FLOOR)


def _whole_model_fields(problem: FitProblem, amplitude_mm: float, coeffs: np.ndarray, length_mm: float,
                        smoothness: float | None = None, identity_sd: float = 1.0) -> tuple[np.ndarray, ShapeModel]:
    """The fields of correlation ``length_mm`` over the whole model
    (:func:`smooth_deformation_basis` with every vertex in the region, around the instance
    of ``coeffs`` (K,), with the kernel ``smoothness`` picks) and the model augmented with
    them at ``amplitude_mm`` (the identity's deviations ``identity_sd`` times the model's,
    :func:`augmented_model`). On a mesh they depend on the model alone, and are cached on
    it per length, amplitude, smoothness and identity deviation (a cache, not state: the
    expression field's probe runs on every scan; at most :data:`FIELD_CACHE_SIZE`
    entries, the least recently used dropped first, so the probe's entry outlives refit
    entries whose amplitude varies). Each holds float32 (N, 3, K + 3 M), two to three
    times the model's own scaled basis."""
    model = problem.model
    mesh = model.triangles is not None and len(model.triangles) > 0
    key = (length_mm, amplitude_mm, smoothness, identity_sd)
    cache = model.__dict__.get("_whole_model_fields") if mesh else None
    if cache is None:
        cache = {}
        if mesh:
            object.__setattr__(model, "_whole_model_fields", cache)
    if key in cache:
        cache[key] = cache.pop(key)  # most recently used last
    else:
        fields = smooth_deformation_basis(model, model.instance(coeffs), np.ones(model.n_vertices, bool),
                                          length_mm, problem.config.refine.warp_basis_taper_mm,
                                          problem.streams.rng("field_basis"), smoothness)
        while len(cache) >= FIELD_CACHE_SIZE:
            cache.pop(next(iter(cache)))
        cache[key] = (fields, augmented_model(model, fields, amplitude_mm, identity_sd=identity_sd))
    return cache[key]


def vertex_rms(displacement: np.ndarray) -> float:
    """RMS over the vertices of the length of a displacement (N, 3), mm."""
    return float(np.sqrt((np.asarray(displacement) ** 2).sum(1).mean()))


@dataclass(frozen=True, eq=False)
class AugmentedFit:
    """A fit of an augmented model (model frame, mm).

    state : its pose, the identity's coefficients (K,) in the model's own units, and
        its correspondences; coeffs : (K + M,) all the augmented model's coefficients;
    start : (N, 3) the instance with the added components (the start of NICP);
    identity : (N, 3) the identity's instance.
    """

    state: FitState
    coeffs: np.ndarray
    start: np.ndarray
    identity: np.ndarray


def refit_augmented(problem: FitProblem, state: FitState, aug: ShapeModel, schedule: Schedule,
                    landmark_variance_scale: float = 1.0, identity_sd: float = 1.0,
                    exact_last: bool = True) -> AugmentedFit:
    """One fit of ``aug`` (the problem's model with more components,
    :func:`augmented_model`, built with ``identity_sd``) from the identity and pose of
    ``state`` along ``schedule``, without the vertices ``state.occluded``, the landmarks'
    variances scaled by ``landmark_variance_scale``
    (:func:`ssm.fitting.model_fit.iterate.fit_model`, as is ``exact_last``)."""
    k = problem.model.n_components
    coeffs = np.concatenate([state.coeffs / identity_sd, np.zeros(aug.n_components - k)])
    fitted = fit_model(problem, state, schedule, model=aug, coeffs=coeffs,
                       candidates=None if state.occluded is None else ~state.occluded,
                       landmark_variance_scale=landmark_variance_scale, exact_last=exact_last).state
    start = basis_instance(aug, scaled_basis(aug), fitted.coeffs, aug.n_components)
    identity = fitted.coeffs[:k] * identity_sd
    return AugmentedFit(fitted.replace(coeffs=identity), np.concatenate([identity, fitted.coeffs[k:]]), start,
                        basis_instance(problem.model, scaled_basis(problem.model), identity, k))


def field_rms(problem: FitProblem, state: FitState, amplitude_mm: float) -> float:
    """RMS over the model's vertices (mm) of a field of ``amplitude_mm`` over the whole
    model, after :data:`PROBE_ITERATIONS` quick joint iterations at the full prior from
    the model fit ``state``: how much of the scan the identity explains only by bending.
    Its iterations all match random subsets (no exact last one): the gate was measured
    so, and the probe runs on every scan."""
    _, aug = _whole_model_fields(problem, amplitude_mm, state.coeffs, PROBE_LENGTH_MM)
    probe = augmented_schedule(problem.config.model_fit, aug.n_components, (1.0,), PROBE_ITERATIONS)
    fitted = refit_augmented(problem, state, aug, probe, exact_last=False)
    return vertex_rms(fitted.start - fitted.identity)


def mirror_correlation(model: ShapeModel, displacement: np.ndarray, enabled: bool = True) -> float:
    """The correlation between the field's two sides for the next fit, from a field fitted
    without it (N, 3, mm): its symmetric share (:func:`ssm.geometry.mirror.symmetric_share`)
    capped at :data:`MIRROR_RHO_MAX`, or 0 under :data:`MIRROR_RHO_MIN`, for a model
    without a mirror symmetry (:func:`model_mirror`) or when not ``enabled``
    (``FitConfig.refine.mirror_field``). Symmetric expressions (a smile, an open jaw)
    share most of their field between the sides; a one-sided smile none, and it keeps
    the field it had."""
    mirror = model_mirror(model) if enabled else None
    if mirror is None:
        return 0.0
    rho = min(symmetric_share(displacement, mirror), MIRROR_RHO_MAX)
    return rho if rho >= MIRROR_RHO_MIN else 0.0


@dataclass(frozen=True, eq=False)
class FieldFit:
    """:func:`fit_with_field`'s result: the state (identity coefficients (K,), pose,
    correspondences), the instance with the field (N, 3, model frame, mm), the number
    of field components (3 per field) and the correlation between the sides the last
    fit used (0: none)."""

    state: FitState
    start: np.ndarray
    n_fields: int
    mirror_rho: float


def fit_with_field(problem: FitProblem, state: FitState, region: np.ndarray, amplitude_mm: float,
                   relevance_rounds: int = 0, smoothness: float | None = None,
                   landmark_variance_scale: float = 1.0, identity_sd: float = 1.0) -> FieldFit:
    """Refit the model with a smooth deformation field over ``region`` (N,) bool, jointly
    with the identity, from the model fit ``state``: the field has ``amplitude_mm`` and
    the config's ``warp_basis_length_mm`` / ``warp_basis_taper_mm``
    (:func:`smooth_deformation_basis`, with the kernel ``smoothness`` picks), the prior
    anneals over :data:`REFIT_PRIOR` (:data:`REFIT_ITERATIONS` per level, one more when
    landmarks do not pin the fit), on the whole scan and the kept landmarks, their
    variances scaled by ``landmark_variance_scale``; ``state.occluded`` vertices stay
    out. ``identity_sd`` loosens the identity's prior by that factor in its deviations
    (:func:`augmented_model`).

    ``relevance_rounds`` more fits each give the field, per vertex, the amplitude the
    last one used (:func:`relevance`), always from ``state``'s identity: the field
    gathers where the subject leaves the model, and the identity is fitted by the rest.
    When the first fit's field is mostly symmetric (:func:`mirror_correlation`), the
    later fits correlate its two sides by that much; with no relevance rounds, one more
    fit does: landmark noise and one-sided evidence average over both sides.
    """
    if not identity_sd > 0:
        raise ValueError(f"identity_sd {identity_sd!r}: give a number > 0 (FitConfig.refine.field_identity_sd)")
    model, cfg = problem.model, problem.config.refine
    if region.all():
        fields, aug = _whole_model_fields(problem, amplitude_mm, state.coeffs, cfg.warp_basis_length_mm,
                                          smoothness, identity_sd)
    else:
        fields = smooth_deformation_basis(model, model.instance(state.coeffs), region, cfg.warp_basis_length_mm,
                                          cfg.warp_basis_taper_mm, problem.streams.rng("field_basis"), smoothness)
        aug = augmented_model(model, fields, amplitude_mm, identity_sd=identity_sd)
    iterations = REFIT_ITERATIONS + (0 if problem.n_kept_landmarks(state.landmark_mask) >= 3 else 1)
    schedule = augmented_schedule(problem.config.model_fit, aug.n_components, REFIT_PRIOR, iterations)

    def refit(aug_model: ShapeModel) -> AugmentedFit:
        return refit_augmented(problem, state, aug_model, schedule, landmark_variance_scale, identity_sd)

    fitted = refit(aug)
    rho = mirror_correlation(model, fitted.start - fitted.identity, cfg.mirror_field)
    mirror = model_mirror(model) if rho > 0 else None
    if relevance_rounds:
        average = _neighbour_average(model, np.asarray(model.mean, np.float64).reshape(-1, 3))
    for _ in range(relevance_rounds):
        weight = relevance(average, fitted.start - fitted.identity, amplitude_mm)
        fitted = refit(augmented_model(model, fields * weight[:, None], amplitude_mm, mirror, rho, identity_sd))
    if not relevance_rounds and rho > 0:
        fitted = refit(augmented_model(model, fields, amplitude_mm, mirror, rho, identity_sd))
    return FieldFit(fitted.state, fitted.start, 3 * fields.shape[1], rho)
