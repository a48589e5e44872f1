"""Deformation basis: for a point model its fields reproduce the Euclidean Gaussian kernel
in the region and fade outside (the heat kernel of a mesh: tests/test_mesh_spectrum.py),
the augmented model keeps the identity's components and coefficients (its prior
loosened when asked), and the relevance
step keeps the field's freedom where it was used."""

import numpy as np
from conftest import grid_triangles

from ssm.fitting.model_fit.basis import basis_instance, scaled_basis
from ssm.fitting.problem import fit_problem
from ssm.fitting.refine.deformation_basis import (
    FIELD_CACHE_SIZE,
    RELEVANCE_FLOOR,
    _neighbour_average,
    _whole_model_fields,
    augmented_model,
    relevance,
    smooth_deformation_basis,
)
from ssm.models.shape_model import ShapeModel


def _sheet(n_side: int = 45, size_mm: float = 180.0) -> np.ndarray:
    """(n_side**2, 3) a gently curved sheet, mm (4 mm spacing)."""
    u, v = np.meshgrid(np.linspace(0, size_mm, n_side), np.linspace(0, size_mm, n_side))
    return np.stack([u.ravel(), v.ravel(), 0.002 * (u.ravel() - 90) ** 2], 1)


def _points(x: np.ndarray) -> ShapeModel:
    """A point model (no triangles) on x: its fields use the Euclidean kernel."""
    return ShapeModel(x, np.zeros((3 * len(x), 1)), np.ones(1))


def test_fields_reproduce_the_kernel_inside_and_fade_outside():
    x = _sheet()
    region = x[:, 0] < 60.0
    length, taper = 20.0, 15.0
    f = smooth_deformation_basis(_points(x), x, region, length, taper, np.random.default_rng(0))
    assert 10 < f.shape[1] < 200
    cov = f @ f.T  # the covariance of sum_j b_j f_j, b ~ N(0, I)
    inside = np.flatnonzero(region & (x[:, 1] > 40) & (x[:, 1] < 140))[::7]
    d2 = ((x[inside, None] - x[None, inside]) ** 2).sum(-1)
    want = np.exp(-0.5 * d2 / length ** 2)
    assert np.abs(cov[np.ix_(inside, inside)] - want).max() < 0.02
    # 5 tapers beyond the region the field is gone; one taper out it is at exp(-1/2)
    far = x[:, 0] > 60.0 + 5 * taper
    assert np.abs(f[far]).max() < 1e-4
    one = np.flatnonzero(np.isclose(x[:, 0], x[np.abs(x[:, 0] - 75.0).argmin(), 0]) & (x[:, 1] > 60)
                         & (x[:, 1] < 120))
    dist = x[one, 0] - x[region, 0].max()
    assert np.allclose(np.sqrt(cov[one, one]), np.exp(-0.5 * (dist / taper) ** 2), atol=0.03)


def test_empty_region_gives_no_fields():
    x = _sheet(10)
    assert smooth_deformation_basis(_points(x), x, np.zeros(len(x), bool), 20.0, 15.0, np.random.default_rng(0)).shape == (100, 0)


def test_augmented_model_keeps_the_identity():
    rng = np.random.default_rng(1)
    x = _sheet(12)
    n, k = len(x), 5
    basis, _ = np.linalg.qr(rng.normal(size=(3 * n, k)))
    model = ShapeModel(x, basis, np.array([25.0, 16.0, 9.0, 4.0, 1.0]))
    fields = smooth_deformation_basis(model, x, x[:, 0] < 50, 30.0, 20.0, rng)
    m = fields.shape[1]
    aug = augmented_model(model, fields, amplitude_mm=2.0)
    assert aug.n_components == k + 3 * m
    c = rng.normal(size=k)
    b = rng.normal(size=3 * m)
    def instance(coeffs):
        return basis_instance(aug, scaled_basis(aug), coeffs, aug.n_components)

    got = instance(np.concatenate([c, b]))
    want = model.instance(c) + 2.0 * np.stack([fields @ b[a * m:(a + 1) * m] for a in range(3)], 1)
    assert np.allclose(got, want, atol=1e-3)
    assert np.allclose(instance(np.concatenate([c, np.zeros(3 * m)])), model.instance(c), atol=1e-3)
    # a looser identity prior: the same shapes, the identity's coefficients identity_sd times smaller
    loose = augmented_model(model, fields, amplitude_mm=2.0, identity_sd=2.0)
    got = basis_instance(loose, scaled_basis(loose), np.concatenate([c / 2.0, b]), loose.n_components)
    assert np.allclose(got, want, atol=1e-3)


def test_relevance_follows_the_used_field():
    """A field of 3 mm over a patch (none elsewhere) keeps nearly 3x the amplitude inside
    (the averaging blurs it over a few rings), a ramp at the border, and the floor far
    away; each averaging row sums to one."""
    x = _sheet(30)
    model = _points(x)
    average = _neighbour_average(model, x)
    assert np.allclose(np.asarray(average.sum(axis=1)).ravel(), 1.0)
    patch = np.linalg.norm(x[:, :2] - 90.0, axis=1) < 40.0
    field = np.where(patch[:, None], [0.0, 3.0, 0.0], 0.0)
    w = relevance(average, field, amplitude_mm=1.0)
    centre = np.linalg.norm(x[:, :2] - 90.0, axis=1) < 15.0
    far = np.linalg.norm(x[:, :2] - 90.0, axis=1) > 80.0
    assert (w[centre] > 2.5).all() and (w[centre] <= 3.0 + 1e-9).all()
    assert np.allclose(w[far], RELEVANCE_FLOOR)
    edge = np.abs(np.linalg.norm(x[:, :2] - 90.0, axis=1) - 40.0) < 3.0
    assert (w[edge] > 0.5).all() and (w[edge] < 2.6).all()


def test_whole_model_fields_are_cached_per_length():
    """The probe's 50 mm fields and the refit's shorter ones are kept apart (a shorter
    length needs more fields), each computed once, and the cache stays bounded."""
    n_side = 30
    x = _sheet(n_side, 120.0)  # u fastest, as grid_triangles numbers its vertices
    tri = grid_triangles(n_side, n_side)
    model = ShapeModel(x, np.linalg.qr(np.random.default_rng(0).normal(size=(3 * len(x), 3)))[0],
                       np.array([9.0, 4.0, 1.0]), triangles=tri)
    problem, c = fit_problem(model, (x, tri), device="cpu"), np.zeros(3)
    long_f, long_aug = _whole_model_fields(problem, 1.0, c, 50.0)
    short_f, short_aug = _whole_model_fields(problem, 1.0, c, 25.0)
    assert short_f.shape[1] > long_f.shape[1] > 0
    assert short_aug.n_components == 3 + 3 * short_f.shape[1]
    again_f, again_aug = _whole_model_fields(problem, 1.0, c, 50.0)
    assert again_f is long_f and again_aug is long_aug
    _whole_model_fields(problem, 2.0, c, 50.0)
    assert len(model.__dict__["_whole_model_fields"]) == FIELD_CACHE_SIZE
    # a rougher kernel on the same harmonics is an entry of its own, not the heat kernel's
    rough_f, _ = _whole_model_fields(problem, 1.0, c, 50.0, smoothness=2.0)
    assert rough_f.shape == long_f.shape and not np.allclose(rough_f, long_f)
    assert _whole_model_fields(problem, 1.0, c, 50.0, smoothness=2.0)[0] is rough_f
    # the entry used on every scan (the probe's) outlives refit entries of changing amplitudes
    for amplitude in (1.5, 2.5, 3.5):
        _whole_model_fields(problem, amplitude, c, 25.0)
        assert _whole_model_fields(problem, 1.0, c, 50.0, smoothness=2.0)[0] is rough_f


def test_non_positive_identity_sd_is_a_clear_error():
    """A looser identity prior needs a positive factor; 0 or less names the setting."""
    import pytest

    from ssm.fitting.refine.deformation_basis import fit_with_field

    x = _sheet(6)
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match=r"give a number > 0 \(FitConfig.refine.field_identity_sd\)"):
            fit_with_field(None, None, np.ones(len(x), bool), 1.0, identity_sd=bad)
