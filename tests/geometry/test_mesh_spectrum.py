"""Manifold harmonics: the sphere's known spectrum, and a heat kernel that follows the surface."""

import numpy as np
import trimesh
from conftest import grid_triangles

from ssm.fitting.refine.deformation_basis import (
    heat_kernel_fields,
    smooth_deformation_basis,
)
from ssm.geometry.mesh_spectrum import low_harmonics
from ssm.models.shape_model import ShapeModel


def test_sphere_spectrum_is_l_l_plus_1_over_r2():
    r = 50.0
    s = trimesh.creation.icosphere(subdivisions=4, radius=r)
    h = low_harmonics(s.vertices, s.faces, 7.0 / r ** 2)  # l = 0, 1, 2: 1 + 3 + 5 functions
    assert len(h.eigenvalues) == 9
    want = np.array([0] + [2] * 3 + [6] * 5) / r ** 2
    assert np.allclose(h.eigenvalues, want, rtol=0.01, atol=1e-9)
    mass = s.area_faces.repeat(3) / 3.0
    m = np.bincount(s.faces.ravel(), mass, len(s.vertices))
    assert np.allclose(h.functions.T @ (m[:, None] * h.functions), np.eye(9), atol=1e-6)  # M-orthonormal


def _folded_strip(step: float = 2.0):
    """A 200 x 60 mm strip folded in half: two sheets 2 mm apart, joined only at x = 100."""
    u, v = np.meshgrid(np.arange(0, 200 + step / 2, step), np.arange(0, 60 + step / 2, step))
    u, v = u.ravel(), v.ravel()
    x = np.stack([np.where(u <= 100, u, 200 - u + step / 2), v, np.where(u <= 100, 0.0, 2.0)], 1)
    x[u == 100, 2] = 1.0
    tri = grid_triangles(int(round(200 / step)) + 1, int(round(60 / step)) + 1)
    return x, tri, u


def test_heat_kernel_follows_the_surface_not_space():
    x, tri, u = _folded_strip()
    model = ShapeModel(x, np.zeros((3 * len(x), 1)), np.ones(1), triangles=tri)
    length = 20.0
    region = np.ones(len(x), bool)
    f = smooth_deformation_basis(model, x, region, length, 50.0, np.random.default_rng(0))
    cov = f @ f.T
    assert np.allclose(np.diag(cov), 1.0)
    # two points 2 mm apart in space, 100 mm apart along the strip: uncorrelated
    a = np.flatnonzero((u == 50) & (x[:, 1] == 30))[0]
    b = np.flatnonzero((np.abs(x[:, 0] - 50) < 1.1) & (x[:, 1] == 30) & (x[:, 2] == 2.0))[0]
    assert np.linalg.norm(x[a] - x[b]) < 2.5
    assert abs(cov[a, b]) < 0.01
    # along one sheet, away from its edges, the correlation is the Gaussian of the distance
    row = np.flatnonzero((x[:, 1] == 30) & (x[:, 2] == 0) & (u >= 30) & (u <= 70))
    d = np.abs(u[row] - 50)
    assert np.abs(cov[a, row] - np.exp(-0.5 * (d / length) ** 2)).max() < 0.08
    # a point model (no triangles) gets the Euclidean Gaussian: the two sheets move together
    points = ShapeModel(x, np.zeros((3 * len(x), 1)), np.ones(1))
    g = smooth_deformation_basis(points, x, region, length, 50.0, np.random.default_rng(0))
    assert (g[a] @ g[b]) > 0.95


def test_fields_fade_outside_the_region():
    x, tri, u = _folded_strip()
    model = ShapeModel(x, np.zeros((3 * len(x), 1)), np.ones(1), triangles=tri)
    region = (u <= 40)
    taper = 10.0
    f = smooth_deformation_basis(model, x, region, 20.0, taper, np.random.default_rng(0))
    sd = np.sqrt((f ** 2).sum(1))
    assert np.allclose(sd[region], 1.0)
    one = (x[:, 2] == 0) & (u == 50)  # 10 mm (one taper) from the region
    assert np.allclose(sd[one], np.exp(-0.5), atol=0.01)
    assert sd[(x[:, 2] == 0) & (u >= 92)].max() == 0.0  # past 5 tapers: exactly off
    assert not heat_kernel_fields(model.__dict__["_harmonics"][20.0], 20.0, np.zeros(len(x))).any()


def test_model_harmonics_are_cached_on_disk_and_the_same(tmp_path, monkeypatch):
    import ssm.fitting.refine.deformation_basis as D

    monkeypatch.setenv("SSM_CACHE_DIR", str(tmp_path))
    s = trimesh.creation.icosphere(subdivisions=3, radius=60.0)

    def model():
        return ShapeModel(np.asarray(s.vertices), np.zeros((3 * len(s.vertices), 1)), np.ones(1), triangles=s.faces)

    first = D.model_harmonics(model(), 40.0)
    (entry,) = tmp_path.glob("harmonics-*.npz")
    calls = []
    monkeypatch.setattr(D, "low_harmonics", lambda *a: calls.append(a))
    again = D.model_harmonics(model(), 40.0)  # a new process: the entry, not a solve
    assert not calls
    assert np.array_equal(again.functions, first.functions) and np.array_equal(again.eigenvalues, first.eigenvalues)
    entry.write_bytes(b"not a zip")  # a broken entry is computed again, not an error
    monkeypatch.setattr(D, "low_harmonics", lambda *a: (calls.append(a), first)[1])
    assert D.model_harmonics(model(), 40.0) is first and len(calls) == 1
    monkeypatch.setenv("SSM_CACHE_DIR", "off")
    entry.unlink()
    D.model_harmonics(model(), 40.0)
    assert not list(tmp_path.glob("*.npz"))  # off: nothing written


def test_matern_fields_tend_to_the_heat_kernel_and_are_rougher_for_small_nu():
    r = 60.0
    s = trimesh.creation.icosphere(subdivisions=3, radius=r)
    length = 30.0
    h = low_harmonics(s.vertices, s.faces, np.log(1e3) / (0.5 * length ** 2))
    taper = np.ones(len(s.vertices))
    heat = heat_kernel_fields(h, length, taper)
    near_heat = heat_kernel_fields(h, length, taper, smoothness=1e6)
    rough = heat_kernel_fields(h, length, taper, smoothness=2.0)
    for f in (heat, near_heat, rough):
        assert np.allclose((f ** 2).sum(1), 1.0)  # unit variance at every vertex
    assert np.allclose(near_heat @ near_heat.T, heat @ heat.T, atol=1e-4)
    # correlation with the neighbours one edge away: lower for the rougher kernel
    e = s.edges_unique
    corr = lambda f: float(np.mean((f[e[:, 0]] * f[e[:, 1]]).sum(1)))  # noqa: E731
    assert corr(rough) < corr(heat) < 1.0


def test_a_smoothness_that_is_not_positive_is_a_clear_error():
    import pytest

    s = trimesh.creation.icosphere(subdivisions=2, radius=60.0)
    model = ShapeModel(np.asarray(s.vertices), np.zeros((3 * len(s.vertices), 1)), np.ones(1), triangles=s.faces)
    with pytest.raises(ValueError, match=r"smoothness 0\.0: give a number > 0 \(FitConfig.refine.warp_basis_smoothness\)"):
        smooth_deformation_basis(model, np.asarray(s.vertices), np.ones(len(s.vertices), bool), 30.0, 50.0,
                                 np.random.default_rng(0), smoothness=0.0)
