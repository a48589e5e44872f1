"""Writing a fit: meshes, JSON report and a picture, all atomically."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ssm.fitting.outputs.colors import COLOR_DISTANCE_MM, bake_texture
from ssm.fitting.outputs.report import write_report
from ssm.fitting.outputs.result import FitResult
from ssm.errors import InputFileError
from ssm.io.atomic import atomic_write
from ssm.io.landmark_writer import write_landmark_points
from ssm.io.meshes import write_mesh
from ssm.io.textured_obj import write_textured_obj


# every file write_fit and the geometry maps' fusion may write into a fit's folder
OUTPUT_NAMES = ("fit.ply", "fit_model_frame.ply", "fit.json", "report.png", "landmarks.csv", "landmarks.json",
                "fit.obj", "fit.mtl", "fit_texture.png", "fit_model_frame.obj", "fit_neutral_model_frame.ply",
                "fused.ply", "fused.json")


def check_outputs_spare_inputs(out: str | Path, inputs: list) -> None:
    """Raise InputFileError when a fit written to ``out`` would replace one of ``inputs``
    (paths of the scan, landmarks, pose, model, maps; None ignored): a scan named
    ``fit.ply`` or hand-placed ``landmarks.csv`` in the output folder is the user's."""
    out = Path(out)
    for given in inputs:
        if given is None:
            continue
        path = Path(given)
        for name in OUTPUT_NAMES:
            target = out / name
            if target.exists() and path.exists() and target.samefile(path):
                raise InputFileError(path, f"is an input, and the fit's {name} in {out} would replace it",
                                     "write the fit to another folder with --out")


def write_fit(result: FitResult, out: str | Path, scan=None, info: dict | None = None,
              uv_layout: tuple[np.ndarray, np.ndarray] | None = None, texture_size: int = 1024
              ) -> dict[str, Path]:
    """Write ``fit.ply`` (scan frame and units, per-vertex ``distance_mm``, ``stddev_mm``),
    ``fit_model_frame.ply`` (model frame, mm), ``fit.json`` and ``report.png``; with a
    fitted expression (an expression model), ``fit_neutral_model_frame.ply`` too; for a
    model with landmarks, the fitted ones on the scan (scan frame and units, with their
    RMS 3D standard deviation): ``landmarks.csv`` and ``landmarks.json`` (scalismo). A
    scan with colours gives the meshes vertex colours. With the model's ``uv_layout``
    (uv (T, 2), triangle_uvs (M, 3)): ``fit.obj`` (scan frame and units) and
    ``fit_model_frame.obj`` (model frame, mm) with the model's UVs and, from a scan with
    colours, a texture of ``texture_size`` rows (0: none) baked from it that both use:
    ``fit.mtl``, ``fit_texture.png``.

    scan : the :class:`~ssm.fitting.prepare.scan.Scan` (for the picture and the texture), optional;
        a scan read from a file in ``out`` under one of :data:`OUTPUT_NAMES` is refused.
    info : extra JSON fields (input paths, ...).
    """
    out = Path(out)
    check_outputs_spare_inputs(out, [None if scan is None else scan.path])
    out.mkdir(parents=True, exist_ok=True)
    attrs = result.vertex_attributes
    rgb = result.vertex_colors
    files = {
        "fit": write_mesh(out / "fit.ply", result.vertices, result.triangles, attrs, rgb),
        "fit_model_frame": write_mesh(out / "fit_model_frame.ply", result.vertices_model, result.triangles, attrs,
                                      rgb),
    }
    if uv_layout is not None and result.triangles is not None:  # the model's UVs on the fit (+ a texture)
        uv, triangle_uvs = uv_layout
        texture = None
        if rgb is not None and texture_size > 0 and scan is not None and (scan.colors is not None
                                                                           or scan.texture is not None):
            texture = bake_texture(result.vertices, result.triangles, uv, triangle_uvs, scan, rgb, texture_size,
                                   COLOR_DISTANCE_MM * result.pose.scale)
        files.update(write_textured_obj(out / "fit.obj", result.vertices, result.triangles, uv, triangle_uvs,
                                        texture))
        files["obj_model_frame"] = write_textured_obj(out / "fit_model_frame.obj", result.vertices_model,
                                                      result.triangles, uv, triangle_uvs,
                                                      material=files.get("mtl"))["obj"]
    if result.neutral_model is not None:  # an expression model's expression was fitted: the face without it
        files["fit_neutral"] = write_mesh(out / "fit_neutral_model_frame.ply", result.neutral_model, result.triangles)
    if result.landmark_vertices:  # automatic landmarking: the model's landmarks on the scan
        names, points, stddev = result.landmarks
        for suffix in (".csv", ".json"):
            files[f"landmarks{suffix}"] = write_landmark_points(out / f"landmarks{suffix}", names, points, stddev)
    summary = result.summary()
    summary.update(info or {})
    with atomic_write(out / "fit.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2, default=float))
    files["json"] = out / "fit.json"
    files["report"] = write_report(result, out / "report.png", scan)
    return files
