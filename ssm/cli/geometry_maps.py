"""The geometry maps of ``ssm fit --map ...`` and ``ssm fuse``: command-line specs
(``FILE:VARIANCE[:...]``) -> fusion sources, and the normal-map refinement."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from ssm.errors import SSMError


def map_sources(model, maps: list[str], displacement_maps: list[str], base, depth_maps: list[str] = ()):
    """--map POS:VAR, --displacement-map DISP:VAR and --depth-map D:VAR:K:POSE -> geometry sources."""
    from ssm.fusion.fuse import source_from_depth_map, source_from_displacement_map, source_from_position_map
    from ssm.fusion.uv_maps import read_map

    out = []
    for spec in depth_maps or []:
        parts = spec.split(":")
        if len(parts) != 4:
            raise SSMError(f"--depth-map {spec}: give DEPTH:VARIANCE:INTRINSICS:POSE files "
                           "(depth in mm, 3x3 K and 4x4 camera-to-model matrices as text)")
        d, var, kfile, pfile = parts
        k, pose = np.loadtxt(kfile, ndmin=2), np.loadtxt(pfile, ndmin=2)
        if k.shape != (3, 3) or pose.shape != (4, 4):
            raise SSMError(f"--depth-map {spec}: intrinsics must be 3x3 and the pose 4x4")
        out.append(source_from_depth_map(base, model.triangles, read_map(d), read_map(var), k, pose,
                                         name=Path(d).stem))
    for spec in maps or []:
        if ":" not in spec:
            raise SSMError(f"--map {spec}: give POSITIONS:VARIANCE files, e.g. pos.npy:var.npy")
        pos, var = spec.split(":", 1)
        out.append(source_from_position_map(model, read_map(pos), read_map(var), name=Path(pos).stem))
    for spec in displacement_maps or []:
        if ":" not in spec:
            raise SSMError(f"--displacement-map {spec}: give DISPLACEMENT:VARIANCE files")
        disp, var = spec.split(":", 1)
        out.append(source_from_displacement_map(model, base, read_map(disp), read_map(var), name=Path(disp).stem))
    return out


def apply_normal_map(model, res, spec: str):
    """--normal-map N:VAR: refine a fused result with a normal-consistency term."""
    from ssm.fusion.fuse import refine_with_normals
    from ssm.fusion.uv_maps import read_map, sample_to_vertices

    if ":" not in spec:
        raise SSMError(f"--normal-map {spec}: give NORMALS:VARIANCE files, e.g. n.npy:nvar.npy")
    npath, vpath = spec.split(":", 1)
    nv = sample_to_vertices(read_map(npath), model.uv, model.triangle_uvs, model.triangles, model.n_vertices)
    sv = sample_to_vertices(read_map(vpath)[..., None], model.uv, model.triangle_uvs, model.triangles,
                            model.n_vertices)[:, 0]
    v = refine_with_normals(res.vertices, res.variance, model.triangles, nv, np.where(np.isfinite(sv), sv, 1e6))
    return dataclasses.replace(res, vertices=v)
