"""Writing a fit: meshes, JSON report and a picture, all atomically."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ssm.fitting.outputs.colors import COLOR_DISTANCE_MM, bake_texture
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


def write_report(result: FitResult, path: Path, scan=None) -> Path:
    """A PNG: scan (grey) and fit coloured by distance to the scan, front and side views;
    occluded vertices (hair, a cap: left out of the fit) in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = result.vertices_model
    inv = result.pose.inverse()
    pts = None
    if scan is not None:
        rng = np.random.default_rng(0)
        idx = rng.choice(len(scan.points), min(len(scan.points), 30000), replace=False)
        pts = inv.apply(scan.points[idx])
    d = np.nan_to_num(result.distance_mm, nan=np.inf)
    vmax = float(np.clip(np.quantile(d[np.isfinite(d)], 0.9), 1.0, 5.0)) if np.isfinite(d).any() else 1.0
    fig, axes = plt.subplots(1, 3, figsize=(15, 5.6))
    for ax, (i, j, title) in zip(axes[:2], ((0, 1, "front (model x-y)"), (2, 1, "side (model z-y)"))):
        if pts is not None:
            ax.scatter(pts[:, i], pts[:, j], s=0.2, c="0.75", lw=0)
        sc = ax.scatter(x[:, i], x[:, j], s=0.6, c=np.minimum(d, vmax), cmap="viridis", vmin=0, vmax=vmax, lw=0)
        if result.occluded is not None and result.occluded.any():  # not skin (hair): not fitted
            occ = result.occluded
            ax.scatter(x[occ, i], x[occ, j], s=0.6, c="tab:red", lw=0, label="occluded (hair, cap)")
            ax.legend(loc="lower right", markerscale=8, fontsize=8)
        ax.set_aspect("equal")
        ax.set_title(title)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(sc, ax=axes[:2], fraction=0.025, label="fit to scan distance (mm)")
    s = result.summary()
    lines = [f"converged: {s['converged']}", f"units: {s['units']}" + (" (estimated)" if s["units_estimated"] else ""),
             f"scale (scan units per model mm): {s['scale']:.4g}",
             f"distance to scan: median {s['distance_to_scan_mm']['median']:.3f} mm, "
             f"p95 {s['distance_to_scan_mm']['p95']:.3f} mm",
             f"Mahalanobis norm: {s['mahalanobis']:.2f}",
             f"occluded (not skin): {100 * s['occluded_fraction']:.0f} % of the vertices", ""]
    for st in result.stages:
        lines.append(f"{st.name:14s} {st.seconds:6.2f} s  median {st.residual_median_mm:6.3f} mm")
    if result.landmark_errors_mm:
        e = np.array(list(result.landmark_errors_mm.values()))
        lines += ["", f"landmarks: {len(e)}, mean error {e.mean():.2f} mm"]
    if result.rejected_landmarks:
        lines.append("rejected: " + ", ".join(result.rejected_landmarks[:6]))
    axes[2].axis("off")
    axes[2].text(0, 1, "\n".join(lines), va="top", family="monospace", fontsize=9)
    with atomic_write(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path
