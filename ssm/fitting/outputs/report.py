"""``report.png``: a fit a person can judge at a glance.

Three views (front, three-quarter, profile, in the model's frame: x right, y up, z
towards the viewer) of the scan (shaded grey points, the landmarks given in red, the
fitted ones in blue) above the fit (a shaded surface, coloured by its distance to the
scan where the scan saw it, grey where it did not), and the headline numbers: converged
or not and why, the face's median distance to the scan, the share of the scan the fit
explains, the landmark error, the time per stage. A fit that slid or landed elsewhere
shows its face grey or bright, away from the scan's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ssm.fitting.outputs.result import FitResult
from ssm.geometry.mesh_ops import vertex_normals
from ssm.io.atomic import atomic_write

VIEWS = (("front", 0.0), ("three-quarter", 45.0), ("profile", 90.0))  # turns about the model's y axis, degrees
SEEN_MM = 5.0  # a fitted vertex further than this from the scan was not seen by it (grey)
COLOUR_MAX_MM = 3.0  # the distance colour scale's top
SCAN_POINTS = 60_000  # scan points drawn at most (a random subset of a denser scan)
LIGHT = np.array([0.3, 0.4, 1.0]) / np.linalg.norm([0.3, 0.4, 1.0])  # from the viewer's upper left


def write_report(result: FitResult, path: Path, scan=None) -> Path:
    """Write the report of ``result`` (its scan, when given, drawn above it) to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.asarray(result.vertices_model, np.float64)
    tri = result.triangles
    inv = result.pose.inverse()
    scan_pts = scan_nrm = None
    if scan is not None and len(scan.points):
        idx = np.random.default_rng(0).choice(len(scan.points), min(len(scan.points), SCAN_POINTS), replace=False)
        scan_pts = inv.apply(scan.points[idx])
        scan_nrm = scan.normals[idx] @ result.pose.rotation
    d = np.nan_to_num(np.asarray(result.distance_mm, np.float64), nan=np.inf)
    cmap = plt.get_cmap("viridis")
    colours = np.where((d < SEEN_MM)[:, None], cmap(np.clip(d / COLOUR_MAX_MM, 0.0, 1.0))[:, :3], 0.72)
    names, lm_fit, _ = result.landmarks
    lm_fit = inv.apply(lm_fit) if len(names) else np.zeros((0, 3))
    given = inv.apply(np.array(list(result.given_landmarks.values()))) if result.given_landmarks else np.zeros((0, 3))
    centre = x.mean(0)
    reach = float(np.max(np.linalg.norm(x - centre, axis=1)))

    fig = plt.figure(figsize=(15, 10))
    grid = fig.add_gridspec(2, 4, width_ratios=[1, 1, 1, 1.1], left=0.01, right=0.99, top=0.96, bottom=0.08,
                            wspace=0.02, hspace=0.08)
    for col, (label, degrees) in enumerate(VIEWS):
        rot = _turn(degrees)
        top, bottom = fig.add_subplot(grid[0, col]), fig.add_subplot(grid[1, col])
        if scan_pts is not None:
            _draw_points(top, (scan_pts - centre) @ rot.T, scan_nrm @ rot.T)
        for pts, colour in ((given, "tab:red"), (lm_fit, "tab:blue")):
            if len(pts):
                p = (pts - centre) @ rot.T
                top.scatter(p[:, 0], p[:, 1], s=14, c=colour, lw=0.5, edgecolors="white", zorder=3)
        if tri is not None:
            _draw_mesh(bottom, (x - centre) @ rot.T, tri, colours)
        else:
            p = (x - centre) @ rot.T
            bottom.scatter(p[:, 0], p[:, 1], s=1, c=colours)
        for ax, what in ((top, "scan"), (bottom, "fit")):
            ax.set_xlim(-reach, reach)
            ax.set_ylim(-reach, reach)
            ax.set_aspect("equal")
            ax.axis("off")
            ax.set_title(f"{what}, {label}", fontsize=10)
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, COLOUR_MAX_MM))
    bar = fig.add_axes([0.08, 0.04, 0.55, 0.015])
    fig.colorbar(sm, cax=bar, orientation="horizontal",
                 label=f"fit to scan distance (mm); grey: not seen by the scan (> {SEEN_MM:g} mm)")
    text = fig.add_subplot(grid[:, 3])
    text.axis("off")
    ok = result.converged
    text.text(0, 1, "CONVERGED" if ok else "NOT CONVERGED", va="top", fontsize=18, weight="bold",
              color="tab:green" if ok else "tab:red")
    text.text(0, 0.955, "\n".join(_headline(result)), va="top", family="monospace", fontsize=8.5, wrap=True)
    with atomic_write(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return path


def _turn(degrees: float) -> np.ndarray:
    """(3, 3) rotation about the y axis that shows the model's side at ``degrees``."""
    a = np.deg2rad(degrees)
    return np.array([[np.cos(a), 0.0, -np.sin(a)], [0.0, 1.0, 0.0], [np.sin(a), 0.0, np.cos(a)]])


def _shade(normals: np.ndarray) -> np.ndarray:
    """(K,) brightness of surfaces with unit ``normals`` (K, 3) (view frame) under :data:`LIGHT`."""
    return 0.35 + 0.65 * np.clip(normals @ LIGHT, 0.0, 1.0)


def _draw_mesh(ax, v: np.ndarray, tri: np.ndarray, vertex_colours: np.ndarray) -> None:
    """Back-to-front shaded triangles of ``v`` (N, 3, view frame; z to the viewer) with
    ``vertex_colours`` (N, 3) RGB averaged per triangle."""
    from matplotlib.collections import PolyCollection

    n = vertex_normals(v, tri)
    fn = n[tri].mean(1)
    front = fn[:, 2] > 0  # facing the viewer
    t = tri[front]
    order = np.argsort(v[t, 2].mean(1))  # far first
    t = t[order]
    rgb = vertex_colours[t].mean(1) * _shade(fn[front][order] / np.maximum(
        np.linalg.norm(fn[front][order], axis=1, keepdims=True), 1e-12))[:, None]
    rgb = np.clip(rgb, 0, 1)
    ax.add_collection(PolyCollection(v[t][:, :, :2], facecolors=rgb, edgecolors=rgb, linewidths=0.3))


def _draw_points(ax, p: np.ndarray, n: np.ndarray) -> None:
    """Back-to-front shaded points (scan frame turned to the view), grey."""
    known = np.linalg.norm(n, axis=1) > 0
    keep = ~known | (n[:, 2] > -0.1)  # points facing away are hidden behind the front
    p, n = p[keep], n[keep]
    order = np.argsort(p[:, 2])
    p, n = p[order], n[order]
    bright = np.where(np.linalg.norm(n, axis=1) > 0, _shade(n), 0.7)
    ax.scatter(p[:, 0], p[:, 1], s=2.5, c=np.repeat(bright[:, None], 3, axis=1) * 0.85, lw=0)


def _headline(result: FitResult) -> list[str]:
    """The report's lines: verdict and why, the numbers that judge a fit, time per stage."""
    s = result.summary()
    ev = result.evidence
    lines = []
    if not result.converged:
        lines += _wrap(result.message, 44) + [""]
    if result.face_distance_mm is not None:
        lines.append(f"face to scan, median   {result.face_distance_mm:.2f} mm")
    if result.scan_explained is not None:
        lines.append(f"scan explained         {result.scan_explained:.0%} within 2.5 mm")
    if "face_seen" in ev:
        lines.append(f"face on the scan       {ev['face_seen']:.0%}")
    if result.landmark_errors_mm:
        e = np.array(list(result.landmark_errors_mm.values()))
        lines.append(f"landmarks              {len(e)}, median {np.median(e):.2f} mm")
    if result.rejected_landmarks:
        lines.append("  rejected: " + ", ".join(result.rejected_landmarks[:5]))
    lines.append(f"units                  {s['units']}" + (" (estimated)" if s["units_estimated"] else ""))
    if "coefficient_mean_square" in ev:
        lines.append(f"coefficients, mean sq. {ev['coefficient_mean_square']:.2f}")
    if result.occluded is not None and result.occluded.any():
        lines.append(f"occluded (not skin)    {s['occluded_fraction']:.0%} of the vertices")
    if result.expression_weights:
        top = sorted(result.expression_weights.items(), key=lambda kv: -kv[1])[:4]
        shown = [f"{k} {v:.2f}" for k, v in top if v > 0.05]
        if shown:
            lines.append("expression")
            lines += [f"  {item}" for item in shown]
    lines += ["", f"stages ({result.seconds:.1f} s)"]
    lines += [f"  {st.name:17s} {st.seconds:6.2f} s" for st in result.stages]
    lines += ["", "top: the scan (grey), landmarks given (red)", "and fitted (blue); bottom: the fit"]
    return lines


def _wrap(text: str, width: int) -> list[str]:
    words, lines, line = text.split(), [], ""
    for w in words:
        if len(line) + len(w) + 1 > width:
            lines.append(line)
            line = w
        else:
            line = f"{line} {w}".strip()
    return lines + ([line] if line else [])
