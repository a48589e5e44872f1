"""Taubin smoothing of a ~50k-vertex mesh for 100 iterations: ssm (torch) vs Open3D.

Both with Open3D's inverse-distance Laplacian (identical results to 1e-5, checked in
tests/test_torch_ops.py), plus ssm's uniform and cotangent variants; ssm on the CPU and,
when torch sees a GPU, on CUDA. Prints a table and writes JSON.

    python benchmarks/bench_smoothing.py [--iterations 100] [--subdivisions 6]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=100)
    ap.add_argument("--subdivisions", type=int, default=6, help="icosphere level (6: 40,962 vertices)")
    ap.add_argument("--batch", type=int, default=8, help="meshes per batch for the batched GPU row")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "smoothing.json")
    args = ap.parse_args()
    import trimesh

    try:
        import open3d as o3d
    except ImportError:  # a machine without open3d (a GPU box): the rows compare to ssm's CPU row
        o3d = None

    from ssm.geometry.torch_ops import taubin_smooth

    m = trimesh.creation.icosphere(args.subdivisions, radius=100.0)
    rng = np.random.default_rng(0)
    v = m.vertices + rng.normal(0, 0.5, m.vertices.shape)
    f = np.asarray(m.faces, dtype=np.int64)
    rows = []

    def timed(name, fn, repeat=2):
        best = np.inf
        out = None
        for _ in range(repeat):
            t = time.perf_counter()
            out = fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t)
        rows.append({"method": name, "seconds": best})
        return out

    ref = None
    if o3d is not None:
        mesh = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(v), o3d.utility.Vector3iVector(f))
        ref = timed("open3d filter_smooth_taubin (CPU)", lambda: np.asarray(
            mesh.filter_smooth_taubin(number_of_iterations=args.iterations).vertices))
    ours = timed("ssm inverse_distance (torch CPU, float64)",
                 lambda: taubin_smooth(v, f, args.iterations, laplacian="inverse_distance").numpy())
    diff = float(np.abs(ours - ref).max()) if ref is not None else float("nan")
    timed("ssm uniform (torch CPU, float64)", lambda: taubin_smooth(v, f, args.iterations))
    timed("ssm uniform (torch CPU, float32)",
          lambda: taubin_smooth(torch.tensor(v, dtype=torch.float32), f, args.iterations))
    timed("ssm cotangent (torch CPU, float64)", lambda: taubin_smooth(v, f, args.iterations, laplacian="cotangent"))
    if torch.cuda.is_available():
        vg = torch.tensor(v, dtype=torch.float32, device="cuda")
        fg = torch.tensor(f, device="cuda")
        timed("ssm inverse_distance (CUDA, float32)",
              lambda: taubin_smooth(vg, fg, args.iterations, laplacian="inverse_distance"), repeat=3)
        timed("ssm uniform (CUDA, float32)", lambda: taubin_smooth(vg, fg, args.iterations), repeat=3)
        vb = vg[None].repeat(args.batch, 1, 1)
        timed(f"ssm uniform (CUDA, float32, batch of {args.batch})",
              lambda: taubin_smooth(vb, fg, args.iterations), repeat=3)
    base = rows[0]["seconds"]
    versus = "open3d" if ref is not None else "ssm CPU"  # the first row is the baseline
    print(f"Taubin smoothing, {len(v)} vertices, {args.iterations} iterations "
          f"(max |ssm - open3d| = {diff:.2e}; {torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'})")
    print(f"{'method':<48} {'seconds':>8} {'vs ' + versus:>12}")
    for r in rows:
        r["speedup_vs_" + versus.replace(" ", "_")] = base / r["seconds"]
        print(f"{r['method']:<48} {r['seconds']:>8.3f} {base / r['seconds']:>11.2f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"vertices": len(v), "iterations": args.iterations, "max_abs_diff": diff,
                                    "cuda": torch.cuda.is_available(), "baseline": rows[0]["method"],
                                    "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
