"""Torch geometry ops against reference implementations (Open3D, libigl) to 1e-5."""

import numpy as np
import pytest
import torch
import trimesh

from ssm.geometry.torch_ops import cotangent_laplacian, taubin_smooth, uniform_laplacian


@pytest.fixture(scope="module")
def noisy_sphere():
    m = trimesh.creation.icosphere(4)
    rng = np.random.default_rng(0)
    return m.vertices + rng.normal(0, 0.02, m.vertices.shape), np.asarray(m.faces, dtype=np.int64)


def test_cotangent_matches_libigl(noisy_sphere):
    igl = pytest.importorskip("igl", reason="libigl is the reference (pip install libigl)")
    v, f = noisy_sphere
    ours = cotangent_laplacian(torch.tensor(v), f).to_dense().numpy()
    np.testing.assert_allclose(ours, igl.cotmatrix(v, f).toarray(), atol=1e-5)


def test_taubin_matches_open3d(noisy_sphere):
    import open3d as o3d

    v, f = noisy_sphere
    mesh = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(v), o3d.utility.Vector3iVector(f))
    ref = np.asarray(mesh.filter_smooth_taubin(number_of_iterations=10).vertices)
    ours = taubin_smooth(v, f, 10, laplacian="inverse_distance").numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_uniform_laplacian_properties(noisy_sphere):
    v, f = noisy_sphere
    L = uniform_laplacian(f, len(v)).to_dense()
    assert torch.allclose(L, L.T)
    assert torch.allclose(L.sum(1), torch.zeros(len(v), dtype=L.dtype))


def test_taubin_smooths_without_shrinking_and_respects_pins(noisy_sphere):
    v, f = noisy_sphere
    clean = trimesh.creation.icosphere(4).vertices
    out = taubin_smooth(v, f, 20).numpy()
    r = np.linalg.norm(out, axis=1)
    assert np.abs(np.linalg.norm(out - clean, axis=1)).mean() < np.abs(np.linalg.norm(v - clean, axis=1)).mean()
    assert abs(r.mean() - 1.0) < 0.01  # no shrinkage (plain Laplacian would shrink)
    pins = np.arange(0, len(v), 7)
    out2 = taubin_smooth(v, f, 20, pinned=pins).numpy()
    np.testing.assert_array_equal(out2[pins], v[pins])
    # zero strength moves nothing; batches smooth each mesh independently
    np.testing.assert_array_equal(taubin_smooth(v, f, 5, strength=np.zeros(len(v))).numpy(), v)
    batch = taubin_smooth(np.stack([v, v * 2]), f, 5).numpy()
    np.testing.assert_allclose(batch[1], 2 * taubin_smooth(v, f, 5).numpy(), atol=1e-10)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_cuda_matches_cpu(noisy_sphere):
    v, f = noisy_sphere
    cpu = taubin_smooth(v, f, 10)
    gpu = taubin_smooth(torch.tensor(v).cuda(), f, 10).cpu()
    assert torch.allclose(cpu, gpu, atol=1e-8)
