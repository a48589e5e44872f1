"""Shape model files: statismo / scalismo HDF5 layout plus an ``/ssm`` group.

Written layout (see docs/formats.md)::

    /model/mean            (3N,)    float32   mean shape, vertex-interleaved
    /model/pcaBasis        (3N, K)  float32   orthonormal columns
    /model/pcaVariance     (K,)     float32   eigenvalues
    /model/noiseVariance   (1,)     float32   PPCA noise variance
    /representer           attrs name, datasetType="POLYGON_MESH", version/...
    /representer/points    (3, N)   float32   reference = mean shape
    /representer/cells     (3, M)   int32     triangles
    /modelinfo/...                           build time, builder, parameters
    /version/{majorVersion=0, minorVersion=9}
    /ssm                   attrs format_version, units
    /ssm/landmarks/{names, indices}
    /ssm/regions/<name>    (k,) int64
    /ssm/provenance        JSON text
    /ssm/uv/{coordinates (T,2), triangle_indices (M,3)}      texture coordinates, optional
    /ssm/exact/{mean (N,3), basis (3N,K), variances (K,)}  float64 copies when the model
                                                           is float64 (bit-exact round trip)

Only numpy and h5py are imported here: loading a model for downstream code stays light.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import re
from pathlib import Path

import h5py
import numpy as np

from ssm.errors import InputFileError
from ssm.io.atomic import atomic_write
from ssm.models.blendshapes import Blendshapes
from ssm.models.shape_model import ShapeModel

FORMAT_VERSION = 1
DEFAULT_MODEL_ENV = "SSM_MODEL"  # a model file to use where none is named
# the default model ships in the repository's models/ folder (models/build_ict_head.py)
DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "models" / "ict_head.h5"
_STR = h5py.string_dtype("utf-8")


# ---------------------------------------------------------------------- writing
def _fixed_str_array(s: str) -> np.ndarray:
    b = s.encode("utf-8")
    return np.array([b], dtype=f"S{max(len(b), 1) + 1}")


# large arrays are stored deflated (HDF5's built-in filter, which scalismo and statismo read)
_PACKED = {"compression": "gzip", "compression_opts": 4, "shuffle": True}


def save_model(model: ShapeModel, path: str | os.PathLike, expression: ShapeModel | None = None,
               blendshapes: Blendshapes | None = None) -> Path:
    """Write ``model`` to ``path`` (HDF5, statismo layout + ``/ssm``), atomically.

    The statismo datasets are float32 so scalismo and statismo read them; a float64
    model also gets exact float64 copies under ``/ssm/exact`` that :func:`load_model`
    prefers, so save -> load is bit-exact.

    expression : an expression model of the same mesh (its ``mean`` the offsets from
        ``model``'s), written as a Basel-style ``/expression`` group that
        :func:`load_expression_model` reads and ``ssm fit`` uses (float32).
    blendshapes : named expression shapes of the same mesh, written under
        ``/ssm/blendshapes`` (:func:`load_blendshapes`); ``ssm fit`` uses them as the
        expression basis and reports their weights by name.
    The model's ``precomputed`` arrays go under ``/ssm/precomputed``.
    """
    if expression is not None and expression.n_vertices != model.n_vertices:
        raise ValueError(f"the expression model has {expression.n_vertices} vertices, the model {model.n_vertices}")
    if blendshapes is not None and blendshapes.n_vertices != model.n_vertices:
        raise ValueError(f"the blendshapes have {blendshapes.n_vertices} vertices, the model {model.n_vertices}")
    path = Path(path)
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    with atomic_write(path) as tmp:
        with h5py.File(tmp, "w") as f:
            g = f.create_group("model")
            g["mean"] = model.mean.reshape(-1).astype(np.float32)
            g.create_dataset("pcaBasis", data=model.basis.astype(np.float32), **_PACKED)
            g["pcaVariance"] = model.variances.astype(np.float32)
            g["noiseVariance"] = np.array([model.noise_variance], dtype=np.float32)

            r = f.create_group("representer")
            r.attrs["name"] = _fixed_str_array("itkStandardMeshRepresenter")
            r.attrs["version/majorVersion"] = _fixed_str_array("0")
            r.attrs["version/minorVersion"] = _fixed_str_array("9")
            if model.triangles is not None:
                r.attrs["datasetType"] = _fixed_str_array("POLYGON_MESH")
                r["cells"] = model.triangles.T.astype(np.int32)
            else:
                r.attrs["datasetType"] = _fixed_str_array("POINT_SET")
            r["points"] = model.mean.T.astype(np.float32)

            info = f.create_group("modelinfo")
            info["build-time"] = _fixed_str_array(now)
            b = info.create_group("modelBuilder-0")
            b["buildTime"] = _fixed_str_array(now)
            b["builderName"] = _fixed_str_array(str(model.provenance.get("builder", "ssm")))
            params = b.create_group("parameters")
            for key in ("align", "n_components", "n_subjects", "pca_method", "pruned_fraction"):
                if key in model.provenance:
                    params.attrs[key] = str(model.provenance[key])
            b.create_group("dataInfo")

            v = f.create_group("version")
            v["majorVersion"] = np.int32(0)
            v["minorVersion"] = np.int32(9)

            s = f.create_group("ssm")
            s.attrs["format_version"] = FORMAT_VERSION
            s.attrs["units"] = model.units
            lm = s.create_group("landmarks")
            lm.create_dataset("names", data=list(model.landmarks.keys()), dtype=_STR)
            lm["indices"] = model.landmark_indices.astype(np.int64)
            rg = s.create_group("regions")
            for name, idx in model.regions.items():
                rg[name] = np.asarray(idx, dtype=np.int64)
            s.create_dataset("provenance", data=json.dumps(dict(model.provenance), default=str),
                             dtype=_STR)
            if model.uv is not None:
                s["uv/coordinates"] = model.uv
                s["uv/triangle_indices"] = model.triangle_uvs
            for name, value in model.precomputed.items():
                value = np.asarray(value)
                s.create_dataset(f"precomputed/{name}", data=value, **(_PACKED if value.ndim else {}))
            if blendshapes is not None:
                bs = s.create_group("blendshapes")
                bs.create_dataset("names", data=list(blendshapes.names), dtype=_STR)
                bs.create_dataset("deltas", data=np.asarray(blendshapes.deltas, np.float32), **_PACKED)
                bs.attrs["value_range"] = np.asarray(blendshapes.value_range, np.float64)
            if model.basis.dtype == np.float64 or model.mean.dtype == np.float64:
                e = s.create_group("exact")
                e["mean"] = model.mean.astype(np.float64)
                e["basis"] = model.basis.astype(np.float64)
                e["variances"] = model.variances.astype(np.float64)
                e.attrs["noise_variance"] = float(model.noise_variance)
            if expression is not None:  # Basel-style, beside the shape model
                x = f.create_group("expression")
                x["model/mean"] = np.asarray(expression.mean).reshape(-1).astype(np.float32)
                x["model/pcaBasis"] = np.asarray(expression.basis).astype(np.float32)
                x["model/pcaVariance"] = np.asarray(expression.variances).astype(np.float32)
                x["model/noiseVariance"] = np.array([expression.noise_variance], dtype=np.float32)
                x["representer/points"] = model.mean.T.astype(np.float32)
                if model.triangles is not None:
                    x["representer/cells"] = model.triangles.T.astype(np.int32)
    return path


# ---------------------------------------------------------------------- reading
def _read_str(obj) -> str:
    v = obj[()] if isinstance(obj, h5py.Dataset) else obj
    if isinstance(v, np.ndarray):
        v = v.reshape(-1)[0] if v.size else b""
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace").rstrip("\x00")
    return str(v)


def _open_model_file(path: Path) -> h5py.File:
    """``path`` opened for reading, or InputFileError when it is missing or not HDF5."""
    if not path.exists():
        raise InputFileError(path, "no such model file", "check the path")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise InputFileError(path, "not a readable HDF5 model file",
                             "is it truncated or another format? re-save or re-train it") from exc


def _find_model_root(f: h5py.File, group: str | None) -> str:
    if group is not None:
        root = "/" + group.strip("/")
        if root + "/model" not in f and not (root == "/" and "model" in f):
            raise KeyError(group)
        return root
    if "model" in f and "mean" in f["model"]:
        return "/"
    for candidate in ("shape", "Shape"):
        if candidate in f and "model" in f[candidate]:
            return "/" + candidate
    raise KeyError("model")


def load_model(path: str | os.PathLike, group: str | None = None) -> ShapeModel:
    """Read a shape model from an HDF5 file.

    Reads files written by :func:`save_model` (bit-exact) and statismo-layout files
    written by other tools: scalismo / statismo models (``/model``, ``/representer``),
    and Basel-style files holding the shape model in a ``/shape`` group (pass ``group``
    to pick another). Old statismo 0.8 bases (``U sqrt(lambda)``) and non-orthonormal
    bases (e.g. discretised Gaussian processes) are converted to the same distribution
    with an orthonormal basis.

    Returns a :class:`ShapeModel` (coordinates in the file's units; statismo files carry
    none, so ``mm`` is assumed and recorded in ``provenance``).
    """
    path = Path(path)
    with _open_model_file(path) as f:
        try:
            root = _find_model_root(f, group)
        except KeyError:
            raise InputFileError(path, "no statismo model group (/model or /shape/model) found",
                                 "pass the model's HDF5 group with --group") from None
        base = "" if root == "/" else root
        try:
            return _read(f, base, path)
        except KeyError as exc:
            raise InputFileError(path, f"model file is missing {_missing(exc)}",
                                 "the file is incomplete; re-save the model") from None


def _read(f: h5py.File, base: str, path: Path) -> ShapeModel:
    m = f[f"{base}/model"]
    mean = np.asarray(m["mean"][()]).reshape(-1)
    basis = np.asarray(m["pcaBasis"][()])
    variances = np.asarray(m["pcaVariance"][()]).reshape(-1)
    noise = float(np.asarray(m["noiseVariance"][()]).reshape(-1)[0]) if "noiseVariance" in m else 0.0
    if basis.ndim == 1:
        basis = basis.reshape(-1, 1)
    if mean.size % 3 or basis.shape[0] != mean.size or variances.size != basis.shape[1]:
        raise InputFileError(path, f"inconsistent model sizes (mean {mean.shape}, basis {basis.shape}, "
                                   f"variance {variances.shape})", "the file is not a 3D shape model")
    rep = f.get(f"{base}/representer")
    triangles = _triangles(rep)
    provenance: dict = {"source_file": str(path)}
    units = "mm"
    landmarks: dict[str, int] = {}
    regions: dict[str, np.ndarray] = {}
    uv_kw: dict = {}

    ours = base == "" and "ssm" in f
    if ours:
        s = f["ssm"]
        units = _read_str(s.attrs.get("units", "mm"))
        if "provenance" in s:
            provenance = json.loads(_read_str(s["provenance"]))
        if "landmarks" in s:
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in s["landmarks/names"][()]]
            idx = s["landmarks/indices"][()]
            landmarks = dict(zip(names, (int(i) for i in idx)))
        if "regions" in s:
            regions = {k: np.asarray(v[()]) for k, v in s["regions"].items()}
        if "uv" in s:
            uv_kw = {"uv": s["uv/coordinates"][()], "triangle_uvs": s["uv/triangle_indices"][()]}
        if "precomputed" in s:
            uv_kw["precomputed"] = {k: np.asarray(v[()]) for k, v in s["precomputed"].items()}
        if "exact" in s:
            e = s["exact"]
            return ShapeModel(mean=e["mean"][()], basis=e["basis"][()], variances=e["variances"][()],
                              noise_variance=float(e.attrs["noise_variance"]), triangles=triangles,
                              landmarks=landmarks, regions=regions, units=units, provenance=provenance,
                              **uv_kw)
    else:
        provenance["units_assumed"] = "mm (statismo files carry no units)"
        provenance["builder"] = "external statismo-layout file"
        landmarks = _basel_landmarks(f, mean.reshape(-1, 3))

    version = _statismo_version(f, rep)
    basis = basis.astype(np.float64)
    variances = variances.astype(np.float64)
    if version == (0, 8):
        scale = np.sqrt(np.clip(variances, 0, None))
        basis = basis / np.where(scale > 1e-8, scale, np.inf)
    gram = basis.T @ basis
    if basis.shape[1] and np.abs(gram - np.eye(basis.shape[1])).max() > 1e-3:
        basis, variances = _orthonormalise(basis, variances)
        provenance["basis_orthonormalised"] = True
    keep = mean.dtype if ours else np.float64
    return ShapeModel(mean=mean.reshape(-1, 3).astype(keep), basis=basis.astype(keep),
                      variances=variances.astype(keep), noise_variance=noise, triangles=triangles,
                      landmarks=landmarks, regions=regions, units=units, provenance=provenance, **uv_kw)


def load_blendshapes(path: str | os.PathLike) -> Blendshapes | None:
    """The named expression shapes of a model file (``/ssm/blendshapes``), or None."""
    path = Path(path)
    with _open_model_file(path) as f:
        if "ssm/blendshapes" not in f:
            return None
        g = f["ssm/blendshapes"]
        try:
            names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in g["names"][()])
            lo, hi = (float(v) for v in np.asarray(g.attrs.get("value_range", (0.0, 1.0))).reshape(2))
            return Blendshapes(names, np.asarray(g["deltas"][()], np.float32), (lo, hi))
        except KeyError as exc:
            raise InputFileError(path, f"the blendshapes are missing {_missing(exc)}",
                                 "re-save the model, or fit with --expression-model off") from None
        except ValueError as exc:
            raise InputFileError(path, f"unusable blendshapes ({exc})",
                                 "re-save the model, or fit with --expression-model off") from None


def load_expression_model(path: str | os.PathLike, model: ShapeModel | None = None) -> ShapeModel | None:
    """The expression model of a Basel-style file (``/expression`` beside ``/shape``, as
    the Basel Face Model 2017 / 2019 lay them out: a face is ``shape mean + expression
    mean + shape basis a + expression basis b``; or beside our ``/model``, as
    :func:`save_model` writes it), or None when the file has none.

    Returns a :class:`ShapeModel` whose ``mean`` is the expression's offset (N, 3) from
    the shape model's mean (a file storing a whole face there, as large as the shape's
    mean, gives its difference from the shape mean), with the expression basis and
    variances (orthonormalised like any statismo basis) and the shape's triangles.
    Raises InputFileError when its vertex count differs from the shape model's.
    A file with named blendshapes (:func:`load_blendshapes`) gives them as the basis
    instead (:meth:`ssm.models.blendshapes.Blendshapes.expression_model`), each shape
    its own named direction; ``model``: the file's shape model when already read.
    """
    path = Path(path)
    shapes = load_blendshapes(path)
    if shapes is not None:
        model = load_model(path) if model is None else model
        if shapes.n_vertices != model.n_vertices:
            raise InputFileError(path, f"the blendshapes have {shapes.n_vertices} vertices but the model "
                                       f"{model.n_vertices}", "fit with the shape model alone (--expression-model off)")
        return shapes.expression_model(model)
    with _open_model_file(path) as f:
        try:
            root = _find_model_root(f, None)
        except KeyError:
            return None
        base = "" if root == "/" else root
        if "expression/model" not in f or base == "/expression":
            return None
        try:
            shape_mean = np.asarray(f[f"{base}/model/mean"][()], np.float64).reshape(-1, 3)
            expr = _read(f, "/expression", path)
            triangles = _triangles(f.get(f"{base}/representer"))
            if triangles is None:
                triangles = expr.triangles
        except KeyError as exc:
            raise InputFileError(path, f"the expression model is missing {_missing(exc)}",
                                 "fit with the shape model alone (--expression-model off)") from None
    if expr.n_vertices != len(shape_mean):
        raise InputFileError(path, f"the expression model has {expr.n_vertices} vertices but the shape model "
                                   f"{len(shape_mean)}", "fit with the shape model alone (--expression-model off)")
    offset = np.asarray(expr.mean, np.float64)
    centred = shape_mean - shape_mean.mean(0)
    if np.sqrt((offset ** 2).mean()) > 0.5 * np.sqrt((centred ** 2).mean()):  # a whole face, not offsets
        offset = offset - shape_mean
    return dataclasses.replace(expr, mean=offset, triangles=triangles, landmarks={},
                               provenance={**expr.provenance, "expression_of": str(path)})


def _missing(exc: KeyError) -> str:
    """The name of what a KeyError from h5py says is missing (its message is long)."""
    text = str(exc.args[0]) if exc.args else ""
    m = re.search(r"object '([^']+)'", text)
    return repr(m.group(1)) if m else text


def _triangles(rep) -> np.ndarray | None:
    """(M, 3) int32 triangles of a statismo representer group's ``cells`` ((3, M) or
    (M, 3)), or None."""
    if rep is None or "cells" not in rep:
        return None
    cells = np.asarray(rep["cells"][()])
    if cells.ndim == 2 and cells.shape[0] == 3:
        return cells.T.astype(np.int32)
    if cells.ndim == 2 and cells.shape[1] == 3:
        return cells.astype(np.int32)
    return None


def _statismo_version(f: h5py.File, rep) -> tuple[int, int]:
    if "version/majorVersion" in f and "version/minorVersion" in f:
        return int(f["version/majorVersion"][()]), int(f["version/minorVersion"][()])
    name = _read_str(rep.attrs.get("name", "")) if rep is not None else ""
    return (0, 8) if name in ("vtkPolyDataRepresenter", "itkMeshRepresenter") else (0, 9)


def _orthonormalise(basis: np.ndarray, variances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Same covariance ``B diag(v) B^T`` with orthonormal columns, descending variance."""
    w = basis * np.sqrt(np.clip(variances, 0, None))
    u, s, _ = np.linalg.svd(w, full_matrices=False)
    keep = s > s.max() * 1e-10 if s.size else s > 0
    return u[:, keep], (s[keep] ** 2)


def _basel_landmarks(f: h5py.File, mean: np.ndarray) -> dict[str, int]:
    """Landmarks stored as JSON under /metadata/landmarks/json (Basel 2017), snapped to vertices."""
    node = f.get("metadata/landmarks/json")
    if node is None:
        return {}
    try:
        items = json.loads(_read_str(node))
        out = {}
        for it in items:
            p = np.asarray(it["coordinates"], dtype=np.float64)
            out[str(it["id"])] = int(np.argmin(((mean - p) ** 2).sum(1)))
        return out
    except (ValueError, KeyError, TypeError):
        return {}


def default_model_path() -> Path:
    """The model used where none is named: ``$SSM_MODEL``, else the ICT head model that
    ships in the repository (``models/ict_head.h5``). Raises InputFileError when it is
    not there (an installation without the repository's models folder)."""
    env = os.environ.get(DEFAULT_MODEL_ENV)
    path = Path(env).expanduser() if env else DEFAULT_MODEL
    if not path.is_file():
        raise InputFileError(path, "the default model is not there",
                             "name a model file (ssm fit MODEL.h5 SCAN ...), set SSM_MODEL, or build it with "
                             "python models/build_ict_head.py")
    return path
