"""Precision-weighted, robust fusion of geometry sources in the model's topology.

Each source gives per-vertex positions (model frame, mm) with variances (E|error|^2,
mm^2; infinite where it says nothing). The fused position is the precision-weighted
mean; each source-vertex pair gets a Cauchy weight from its normalised residual to the
fused shape (a wrong vertex stops pulling), and each source gets a variance inflation
factor (median normalised residual over what its variances promise), so a source whose
variances are too optimistic - a degraded map - is down-weighted automatically.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ssm.geometry.similarity import fit_similarity

_CHI2_3_MEDIAN_OVER_3 = 2.3660 / 3.0  # median of |e|^2 / E|e|^2 for a 3D Gaussian error
_CHI2_1_MEDIAN = 0.4549  # median of z^2 for a standard normal z


@dataclass(frozen=True)
class GeometrySource:
    """name; vertices (N, 3) model frame mm (NaN where absent); variance (N,) mm^2 (inf where absent)."""

    name: str
    vertices: np.ndarray
    variance: np.ndarray


@dataclass(frozen=True)
class FusedResult:
    """vertices (N, 3); variance (N,) mm^2; weights (S, N) final per-vertex weights;
    inflation (S,) variance inflation found for each source; names (S,); aligned (S,)
    whether a similarity moved the source onto the first."""

    vertices: np.ndarray
    variance: np.ndarray
    weights: np.ndarray
    inflation: np.ndarray
    names: tuple[str, ...]
    aligned: tuple[bool, ...] = ()

    @property
    def stddev_mm(self) -> np.ndarray:
        return np.sqrt(self.variance)

    def summary(self) -> dict:
        share = self.weights / np.maximum(self.weights.sum(0, keepdims=True), 1e-300)
        aligned = self.aligned or (False,) * len(self.names)
        return {"sources": [{"name": n, "variance_inflation": float(t), "mean_weight_share": float(np.nanmean(s)),
                             "aligned": bool(a)}
                            for n, t, s, a in zip(self.names, self.inflation, share, aligned)],
                "stddev_mm_median": float(np.nanmedian(self.stddev_mm))}


def fuse(sources: list[GeometrySource], k: float = 3.0, iterations: int = 20, align: bool = True,
         triangles: np.ndarray | None = None) -> FusedResult:
    """Fuse sources (see module doc).

    align : bring each source onto the first by a robust precision-weighted similarity
        (found from the vertices' correspondence, so a map in another frame or unit
        works), when that moves the source by more than ``k`` times the two sources'
        typical standard deviation (RMS over their shared vertices against the root of
        the median summed variance). Within that, the difference is the sources' own
        errors, not their frames: aligning an exact map to a fit would hand it the fit's
        error (a bar of one standard deviation is crossed by calibrated sources' own
        errors).
    triangles : (M, 3) mesh of the topology. With it, each source's own roughness (its
        deviation from the mean of its neighbours) measures its noise, which tells a
        degraded source even when there are only two; with three or more sources the
        disagreement with the others (leave-one-out) tells it too.
    """
    if not sources:
        raise ValueError("nothing to fuse")
    x = np.stack([np.asarray(s.vertices, dtype=np.float64) for s in sources])  # (S, N, 3)
    var = np.stack([np.asarray(s.variance, dtype=np.float64) for s in sources])  # (S, N)
    if x.ndim != 3 or x.shape[2] != 3 or var.shape != x.shape[:2]:
        raise ValueError("every source needs (N, 3) vertices and (N,) variances of one topology")
    valid = np.isfinite(x).all(2) & np.isfinite(var) & (var > 0)
    x = np.where(valid[..., None], x, 0.0)
    var = np.where(valid, var, np.inf)
    aligned = [False] * len(sources)
    if align:
        for s in range(1, len(sources)):
            both = valid[0] & valid[s]
            if both.sum() >= 3:
                w0 = 1.0 / (var[0, both] + var[s, both])
                w = w0
                for _ in range(4):  # robust: wrong vertices (seams, bad patches) lose their pull
                    sc, r, t = fit_similarity(x[s, both], x[0, both], weights=w)
                    res2 = ((sc * x[s, both] @ r.T + t - x[0, both]) ** 2).sum(1) * w0
                    w = w0 / (1.0 + res2 / (k ** 2 * max(float(np.median(res2)), 1e-12)))
                moved = sc * x[s] @ r.T + t
                shift = float(np.sqrt(((moved[both] - x[s, both]) ** 2).sum(1).mean()))
                if shift ** 2 > k ** 2 * float(np.median(var[0, both] + var[s, both])):
                    x[s] = moved
                    aligned[s] = True
    tau = np.ones(len(sources))
    rough = _roughness_inflation(x, var, valid, triangles) if triangles is not None else np.ones(len(sources))
    c = valid.astype(np.float64)
    fused = None
    for _ in range(iterations):
        prec = np.where(valid, c / (tau[:, None] * var), 0.0)  # (S, N)
        total = prec.sum(0)
        fused = (prec[..., None] * x).sum(0) / np.maximum(total, 1e-300)[:, None]
        var_f = 1.0 / np.maximum(total, 1e-300)
        d2 = ((x - fused[None]) ** 2).sum(2)
        r2 = np.where(valid, d2 / (tau[:, None] * var + var_f[None]), np.nan)
        for s in range(len(sources)):  # a source promising more than it delivers is inflated
            tau[s] = rough[s]
            others = [o for o in range(len(sources)) if o != s]
            if len(others) >= 2 and valid[s].sum() >= 10:
                p_o = np.where(valid[others], c[others] / (tau[others, None] * var[others]), 0.0)
                t_o = p_o.sum(0)
                f_o = (p_o[..., None] * x[others]).sum(0) / np.maximum(t_o, 1e-300)[:, None]
                ok = valid[s] & (t_o > 0)
                if ok.sum() >= 10:
                    loo = ((x[s, ok] - f_o[ok]) ** 2).sum(1) / (var[s, ok] + 1.0 / t_o[ok])
                    tau[s] = max(tau[s], float(np.median(loo)) / _CHI2_3_MEDIAN_OVER_3)
        c = np.where(valid, 1.0 / (1.0 + np.nan_to_num(r2, nan=0.0) / k ** 2), 0.0)
    prec = np.where(valid, c / (tau[:, None] * var), 0.0)
    total = prec.sum(0)
    var_f = np.where(total > 0, 1.0 / np.maximum(total, 1e-300), np.inf)
    fused = np.where((total > 0)[:, None], fused, np.nan)
    return FusedResult(fused, var_f, prec, tau, tuple(s.name for s in sources), tuple(aligned))


def _roughness_inflation(x: np.ndarray, var: np.ndarray, valid: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """(S,) variance inflation of each source from its own high-frequency content.

    ``h_i = x_i - mean(neighbours)`` holds the source's noise plus the surface's own
    curvature; the curvature part is the same for a Taubin-smoothed copy of the source
    (Taubin smoothing removes noise, not shape), so the normal component of
    ``h(x) - h(smooth(x))`` is mostly noise, with E[.^2] ~ var_i / 3 (1 + 1/deg_i) for
    independent noise (the tangential part is left out: smoothing also evens out the
    vertex spacing). A source whose roughness exceeds what its variances claim is
    inflated by the ratio of medians (chi-square, 1 degree of freedom).
    """
    import torch

    from ssm.geometry.mesh_ops import edges, vertex_normals
    from ssm.geometry.torch_ops import taubin_smooth

    e = edges(triangles)
    n = x.shape[1]
    out = np.ones(x.shape[0])
    cover = valid.sum(0)
    fill = (x * valid[..., None]).sum(0) / np.maximum(cover, 1)[:, None]  # where a source is silent

    def umbrella(y, ee):
        acc = np.zeros((n, 3))
        cnt = np.zeros(n)
        np.add.at(acc, ee[:, 0], y[ee[:, 1]])
        np.add.at(acc, ee[:, 1], y[ee[:, 0]])
        np.add.at(cnt, ee[:, 0], 1.0)
        np.add.at(cnt, ee[:, 1], 1.0)
        return y - acc / np.maximum(cnt, 1)[:, None], cnt

    for s in range(x.shape[0]):
        ok_e = valid[s, e[:, 0]] & valid[s, e[:, 1]]
        ee = e[ok_e]
        h, cnt = umbrella(x[s], ee)
        filled = np.where(valid[s][:, None], x[s], fill)
        smooth = taubin_smooth(torch.as_tensor(filled), triangles, 10).numpy()
        h_s, _ = umbrella(smooth, ee)
        ok = valid[s] & (cnt >= 3)
        if ok.sum() < 10:
            continue
        nrm = vertex_normals(smooth, triangles)
        h2 = (((h - h_s) * nrm).sum(1)[ok]) ** 2
        ratio = h2 / (var[s, ok] / 3.0 * (1.0 + 1.0 / cnt[ok]))
        out[s] = max(1.0, float(np.median(ratio)) / _CHI2_1_MEDIAN)
    return out


def source_from_fit(folder: str | Path) -> GeometrySource:
    """A fit written by ``ssm fit`` (fit_model_frame.ply with its stddev_mm attribute)."""
    from ssm.errors import InputFileError

    folder = Path(folder)
    ply = folder / "fit_model_frame.ply"
    if not ply.exists():
        raise InputFileError(folder, "holds no fit_model_frame.ply", "give a folder written by 'ssm fit'")
    import trimesh

    mesh = trimesh.load(ply, process=False)
    data = mesh.metadata.get("_ply_raw", {}).get("vertex", {}).get("data")
    if data is None or "stddev_mm" not in data.dtype.names:
        raise InputFileError(ply, "has no per-vertex stddev_mm", "re-run 'ssm fit' with this version")
    sd = np.asarray(data["stddev_mm"], dtype=np.float64)
    return GeometrySource(folder.name, np.asarray(mesh.vertices, dtype=np.float64), sd ** 2)


def source_from_position_map(model, positions: np.ndarray, variance: np.ndarray, name: str = "map") -> GeometrySource:
    """A UV position map (H, W, 3) mm with its variance map (H, W) mm^2 -> per-vertex source."""
    from ssm.fusion.uv_maps import sample_to_vertices

    _need_uv(model)
    pos = sample_to_vertices(positions, model.uv, model.triangle_uvs, model.triangles, model.n_vertices)
    v = sample_to_vertices(variance if variance.ndim == 3 else variance[..., None], model.uv, model.triangle_uvs,
                           model.triangles, model.n_vertices)
    return GeometrySource(name, pos, np.where(np.isfinite(v[:, 0]), v[:, 0], np.inf))


def source_from_displacement_map(model, base: np.ndarray, displacement: np.ndarray, variance: np.ndarray,
                                 name: str = "displacement") -> GeometrySource:
    """A displacement map (H, W) mm along the normals of ``base`` (N, 3) -> source."""
    from ssm.fusion.uv_maps import sample_to_vertices
    from ssm.geometry.mesh_ops import vertex_normals

    _need_uv(model)
    d = sample_to_vertices(displacement[..., None] if displacement.ndim == 2 else displacement, model.uv,
                           model.triangle_uvs, model.triangles, model.n_vertices)[:, 0]
    v = sample_to_vertices(variance[..., None] if variance.ndim == 2 else variance, model.uv, model.triangle_uvs,
                           model.triangles, model.n_vertices)[:, 0]
    n = vertex_normals(base, model.triangles)
    return GeometrySource(name, base + d[:, None] * n, np.where(np.isfinite(v), v, np.inf))


def _need_uv(model) -> None:
    from ssm.errors import SSMError

    if model.uv is None:
        raise SSMError("the model has no UV coordinates; geometry maps need a model trained from a corpus "
                       "whose template has UVs")


def write_fused(result: FusedResult, out: str | Path, triangles: np.ndarray | None) -> dict:
    """fused.ply (model frame, per-vertex stddev_mm) and fused.json."""
    from ssm.io.atomic import atomic_write
    from ssm.io.meshes import write_mesh

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    v = np.nan_to_num(result.vertices)
    write_mesh(out / "fused.ply", v, triangles, {"stddev_mm": np.nan_to_num(result.stddev_mm, posinf=1e6)})
    with atomic_write(out / "fused.json") as tmp:
        tmp.write_text(json.dumps(result.summary(), indent=2))
    return {"mesh": out / "fused.ply", "json": out / "fused.json"}


def refine_with_normals(vertices: np.ndarray, variance: np.ndarray, triangles: np.ndarray,
                        normals: np.ndarray, normal_variance: np.ndarray | float = 0.01,
                        edge_weight: float = 1.0, max_angle_deg: float = 30.0) -> np.ndarray:
    """Fuse a normal map as a normal-consistency term (positions from the other sources).

    Minimises ``sum_i |x_i - v_i|^2 / var_i + sum_f sum_(i,j in f) (n_f . (x_j - x_i))^2
    / (l_ij^2 s_f)`` over the positions x (Nehab et al. 2005): each triangle's edges
    should be perpendicular to its target normal ``n_f`` (the normalised mean of its
    corners' map normals), ``s_f`` the normals' variance in rad^2 and ``l_ij`` the edge
    length (the term is the squared sine of the edge's tilt). One sparse least-squares
    solve (3N unknowns, SuperLU).

    vertices : (N, 3) fused positions (mm); variance : (N,) mm^2; normals : (N, 3) unit
    target normals in the same frame, NaN rows where the map says nothing.
    max_angle_deg : faces whose target normal is farther than this from their current
        normal are left out (robustness to wrong normals).
    """
    import scipy.sparse as sp
    from scipy.sparse.linalg import splu

    v = np.asarray(vertices, dtype=np.float64)
    n = len(v)
    var = np.where(np.isfinite(variance) & (variance > 0), variance, 1e6)
    nrm = np.asarray(normals, dtype=np.float64)
    has = np.isfinite(nrm).all(1) & (np.linalg.norm(np.nan_to_num(nrm), axis=1) > 0)
    s_n = np.broadcast_to(np.asarray(normal_variance, dtype=np.float64), (n,))
    tri = np.asarray(triangles, dtype=np.int64)
    tri = tri[has[tri].all(1)]
    nf = np.nan_to_num(nrm)[tri].sum(1)
    nf /= np.maximum(np.linalg.norm(nf, axis=1, keepdims=True), 1e-12)
    # gate: a map normal far from the current surface (a seam, a bad patch) is ignored
    cur = np.cross(v[tri[:, 1]] - v[tri[:, 0]], v[tri[:, 2]] - v[tri[:, 0]])
    cur /= np.maximum(np.linalg.norm(cur, axis=1, keepdims=True), 1e-12)
    ok = (cur * nf).sum(1) > np.cos(np.deg2rad(max_angle_deg))
    tri, nf = tri[ok], nf[ok]
    sf = s_n[tri].mean(1)
    i = np.concatenate([tri[:, 0], tri[:, 1], tri[:, 2]])
    j = np.concatenate([tri[:, 1], tri[:, 2], tri[:, 0]])
    ni = np.concatenate([nf, nf, nf])
    length2 = np.maximum(((v[j] - v[i]) ** 2).sum(1), 1e-12)
    w = np.sqrt(edge_weight / (length2 * np.maximum(np.concatenate([sf, sf, sf]), 1e-12)))
    rows = np.repeat(np.arange(len(i)), 6)
    cols = np.stack([3 * j, 3 * j + 1, 3 * j + 2, 3 * i, 3 * i + 1, 3 * i + 2], 1).reshape(-1)
    vals = (np.concatenate([ni, -ni], 1) * w[:, None]).reshape(-1)
    a_n = sp.csr_matrix((vals, (rows, cols)), shape=(len(i), 3 * n))
    p = np.repeat(1.0 / var, 3)
    lhs = (sp.diags(p) + a_n.T @ a_n).tocsc()
    rhs = p * v.reshape(-1)
    return splu(lhs).solve(rhs).reshape(n, 3)


def source_from_depth_map(base: np.ndarray, triangles: np.ndarray | None, depth: np.ndarray, variance: np.ndarray,
                          intrinsics: np.ndarray, camera_to_model: np.ndarray, name: str = "depth",
                          max_gap_mm: float = 10.0, max_view_angle_deg: float = 75.0) -> GeometrySource:
    """A depth map from a calibrated camera -> per-vertex source.

    base : (N, 3) current estimate (model frame, mm), used to find where each vertex
    projects; depth : (H, W) z-depth in mm (NaN / 0 = no measurement); variance : (H, W)
    mm^2 along the ray; intrinsics : (3, 3) pinhole K (pixels); camera_to_model : (4, 4)
    (camera looks along +z, x right, y down, OpenCV convention). Each vertex facing the
    camera gets the measured point on its own viewing ray; vertices facing away, outside
    the image, seen at a grazing angle (over ``max_view_angle_deg``, where depth edges
    blur) or hidden (the measured surface more than ``max_gap_mm`` in front) get none.
    """
    from ssm.fusion.uv_maps import bilinear  # NaN-aware bilinear sampling of an image

    t = np.asarray(camera_to_model, dtype=np.float64)
    r, c = t[:3, :3], t[:3, 3]
    p = (np.asarray(base, dtype=np.float64) - c) @ r  # model -> camera
    z = p[:, 2]
    k = np.asarray(intrinsics, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        px = k[0, 0] * p[:, 0] / z + k[0, 2]
        py = k[1, 1] * p[:, 1] / z + k[1, 2]
    h, w = depth.shape
    d_img = np.where(np.asarray(depth, dtype=np.float64) > 0, depth, np.nan)
    # bilinear() takes texture coordinates: u = (col + 0.5) / W, v = 1 - (row + 0.5) / H
    uv = np.stack([(px + 0.5) / w, 1.0 - (py + 0.5) / h], 1)
    d = bilinear(d_img, uv, 1.0)[:, 0]
    var = bilinear(np.asarray(variance, dtype=np.float64), uv, 1.0)[:, 0]
    ok = (z > 0) & np.isfinite(d) & np.isfinite(var)
    if triangles is not None:
        from ssm.geometry.mesh_ops import vertex_normals

        n = vertex_normals(base, triangles) @ r  # in the camera frame
        view = p / np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-12)
        ok &= -(n * view).sum(1) > np.cos(np.deg2rad(max_view_angle_deg))  # facing the camera, not grazing
    ok &= np.abs(d - z) < max_gap_mm  # not hidden behind something nearer
    meas = np.where(ok[:, None], p * (d / np.where(z > 0, z, 1.0))[:, None], np.nan)
    return GeometrySource(name, meas @ r.T + c, np.where(ok, var, np.inf))
