"""Writing a fit: meshes, JSON report and a picture, all atomically."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ssm.fitting.outputs.colors import COLOR_DISTANCE_MM, bake_texture
from ssm.fitting.outputs.report import write_report
from ssm.fitting.outputs.result import FitResult
from ssm.io.atomic import atomic_write
from ssm.io.landmark_writer import write_landmark_points
from ssm.io.meshes import write_mesh
from ssm.io.textured_obj import write_textured_obj


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

    scan : the :class:`~ssm.fitting.prepare.scan.Scan` (for the picture and the texture), optional.
    info : extra JSON fields (input paths, ...).
    """
    out = Path(out)
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
