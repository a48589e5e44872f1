"""Mirror symmetry: the plane is found from the shape alone in any pose, an asymmetric
shape has none, the symmetric share of a displacement is 1 / 0 / -1 for a mirrored /
one-sided / opposite one, and the mirror-correlated field has the covariance it says."""

import numpy as np
from conftest import grid_triangles
from scipy.spatial.transform import Rotation

from ssm.fitting.model_fit.basis import scaled_basis
from ssm.fitting.refine.deformation_basis import (
    augmented_model,
    smooth_deformation_basis,
)
from ssm.geometry.mirror import find_mirror, symmetric_share
from ssm.models.shape_model import ShapeModel


def _symmetric_cloud(rng, n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """(2n, 3) points symmetric about x = 0 (mm) and each point's mirror partner (2n,)."""
    half = rng.uniform([5.0, -80.0, -30.0], [50.0, 80.0, 30.0], (n, 3))
    pts = np.concatenate([half, half * [-1.0, 1.0, 1.0]])
    return pts, np.concatenate([np.arange(n, 2 * n), np.arange(n)])


def test_find_mirror_recovers_the_plane_of_a_turned_and_moved_shape():
    rng = np.random.default_rng(0)
    pts, partner = _symmetric_cloud(rng)
    rot = Rotation.from_rotvec([0.4, -0.9, 0.3]).as_matrix()
    shift = np.array([120.0, -40.0, 700.0])
    mirror = find_mirror(pts @ rot.T + shift)
    assert mirror is not None and mirror.mismatch < 1e-6
    assert abs(abs(mirror.normal @ (rot @ [1.0, 0.0, 0.0])) - 1.0) < 1e-9
    np.testing.assert_array_equal(mirror.index, partner)
    # the plane goes through the moved centre of symmetry
    assert abs(shift @ mirror.normal - mirror.offset) < 1e-6
    frame = mirror.frame()
    np.testing.assert_allclose(frame @ frame.T, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(frame[0], mirror.normal)


def test_an_asymmetric_shape_has_no_mirror():
    rng = np.random.default_rng(1)
    assert find_mirror(rng.uniform(0.0, 100.0, (600, 3)) * [1.0, 1.5, 0.6]) is None
    assert find_mirror(np.full((50, 3), np.nan)) is None


def test_symmetric_share_of_mirrored_one_sided_and_opposite_fields():
    rng = np.random.default_rng(2)
    pts, _ = _symmetric_cloud(rng)
    mirror = find_mirror(pts)
    d = np.zeros_like(pts)
    d[:400] = rng.normal(size=(400, 3))
    mirrored = d + mirror.reflect_vectors(d[mirror.index])
    assert np.isclose(symmetric_share(mirrored, mirror), 1.0)
    assert np.isclose(symmetric_share(d, mirror), 0.0)
    assert np.isclose(symmetric_share(d - mirror.reflect_vectors(d[mirror.index]), mirror), -1.0)
    assert symmetric_share(np.zeros_like(pts), mirror) == 0.0


def test_mirror_correlated_field_covariance():
    """On a sheet symmetric about x = 0 (a mesh: the heat kernel's fields), the field's
    displacements at a vertex and its mirror image, far from the plane, correlate by
    about +rho in the plane and -rho across it; rho = 0 is the plain field to the bit."""
    nu, nv = 31, 19
    u, v = np.meshgrid(np.linspace(-90.0, 90.0, nu), np.linspace(0.0, 108.0, nv))
    x = np.stack([u.ravel(), v.ravel(), 0.002 * u.ravel() ** 2 + 0.001 * v.ravel() ** 2], 1)
    model = ShapeModel(x, np.zeros((3 * len(x), 1)), np.ones(1), triangles=grid_triangles(nu, nv))
    fields = smooth_deformation_basis(model, x, np.ones(len(x), bool), 30.0, 50.0, np.random.default_rng(0))
    mirror = find_mirror(x)
    assert mirror is not None and abs(abs(mirror.normal[0]) - 1.0) < 1e-6

    plain = scaled_basis(augmented_model(model, fields, 2.0))
    assert np.array_equal(scaled_basis(augmented_model(model, fields, 2.0, mirror, 0.0)), plain)

    rho = 0.8
    phi = scaled_basis(augmented_model(model, fields, 2.0, mirror, rho))[:, :, 1:].astype(np.float64)
    far = np.flatnonzero((x[:, 0] > 60.0) & (x[:, 1] > 30.0) & (x[:, 1] < 80.0))
    for axis, sign in ((0, -1.0), (1, 1.0), (2, 1.0)):
        a, b = phi[far, axis], phi[mirror.index[far], axis]
        corr = (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))
        assert np.all(np.abs(corr - sign * rho) < 0.1), (axis, corr.min(), corr.max())
    # the variance at a vertex stays the plain field's there, within the kernel's reach
    # of its mirror image (far from the plane: about the same)
    var = (phi[far] ** 2).sum(2)
    np.testing.assert_allclose(var, (plain[far, :, 1:].astype(np.float64) ** 2).sum(2), rtol=0.1)
