"""The model's basis as the model fit uses it: float32, scaled by the deviations, laid
out per vertex, cached on the model and, for a GPU, on the device."""

from __future__ import annotations

import numpy as np

from ssm.geometry import nearest
from ssm.geometry.mesh_ops import vertex_normals
from ssm.models.shape_model import ShapeModel


def instance_normals(model: ShapeModel, x: np.ndarray) -> np.ndarray:
    """(N, 3) vertex normals of an instance (zeros for a point model)."""
    if model.triangles is None:
        return np.zeros_like(x)
    return vertex_normals(x, model.triangles)


def scaled_basis(model: ShapeModel) -> np.ndarray:
    """(N, 3, K) float32 ``U diag(sd)`` laid out per vertex (computed once per model)."""
    phi = model.__dict__.get("_scaled_basis_f32")
    if phi is None:
        phi = (model.basis.reshape(model.n_vertices, 3, -1) * model.stddevs).astype(np.float32)
        phi.setflags(write=False)
        object.__setattr__(model, "_scaled_basis_f32", phi)  # a cache, not state: the model stays immutable
    return phi


def model_of_scaled_basis(mean: np.ndarray, phi: np.ndarray, like: ShapeModel,
                          noise_variance: float = 0.0) -> ShapeModel:
    """A model to fit with, from its float32 scaled basis ``phi`` (N, 3, K; variances 1)
    and ``mean`` (N, 3), with ``like``'s mesh, landmarks and units. ``phi`` is kept as the
    cache :func:`scaled_basis` reads (no float64 copy of a large basis); the basis is not
    orthonormal, so it is for fitting (the augmented models of the deformation field and
    of an expression model), not for the model's own statistics."""
    phi.setflags(write=False)
    n = phi.shape[0]
    out = ShapeModel(mean, phi.reshape(3 * n, -1), np.ones(phi.shape[2]), noise_variance=noise_variance,
                     triangles=like.triangles, landmarks=like.landmarks, units=like.units)
    object.__setattr__(out, "_scaled_basis_f32", phi)
    return out


def device_basis(model: ShapeModel, device):
    """:func:`scaled_basis` as a float32 torch tensor (N, 3, K) on ``device``, uploaded
    once per model and device (a cache, like the basis itself); None on the CPU, where
    numpy does the products."""
    if nearest.is_cpu(device):
        return None
    cache = model.__dict__.get("_device_basis")
    if cache is None or cache[0] != str(device):
        import torch

        cache = (str(device), torch.tensor(scaled_basis(model), device=device))
        object.__setattr__(model, "_device_basis", cache)
    return cache[1]


def basis_instance(model: ShapeModel, phi_all: np.ndarray | None, c: np.ndarray, k: int,
                   phi_dev=None) -> np.ndarray:
    """(N, 3) float64 instance for the first ``k`` coefficients, by the float32 basis
    ``phi_all`` (:func:`scaled_basis`): half the memory traffic of ``model.instance``,
    which matters once per iteration, and no float64 copy of a large basis. With
    ``phi_dev`` (:func:`device_basis`) the product runs on its device."""
    if phi_all is None or k == 0:
        return model.instance(c)
    if phi_dev is not None:
        import torch

        cf = torch.as_tensor(c[:k], dtype=torch.float32, device=phi_dev.device)
        return model.mean + (phi_dev.reshape(-1, phi_dev.shape[2])[:, :k] @ cf).cpu().numpy().reshape(-1, 3)
    flat = phi_all.reshape(-1, phi_all.shape[2])[:, :k]
    return model.mean + (flat @ c[:k].astype(np.float32)).reshape(-1, 3)
