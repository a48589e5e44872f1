"""The model's manifold harmonics (the deformation fields' eigenfunctions): solved, against
read back from the on-disk cache (``ssm/io/array_cache.py``), in the same run.

On the ICT head's mean and triangles (../shared/data; a subdivided icosphere of about
the same size when it is absent), for the probe's 50 mm field and the refit's 30 mm one.
Each row uses a fresh model object (as a new ``ssm fit`` process has): ``solved`` with
the cache off, ``first run`` with an empty cache (the solve plus writing the entry),
``cached`` reading it back, which must give the same arrays. Prints a table and writes JSON.

    python benchmarks/bench_harmonics_cache.py [--repeats 3] [--out ...]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SSM_SHARED_DATA", ROOT.parent / "shared" / "data"))
LENGTHS_MM = (50.0, 30.0)


def mesh() -> tuple[str, np.ndarray, np.ndarray]:
    """(name, vertices (N, 3) mm, triangles (M, 3)): the ICT head's mean, else a sphere."""
    path = SHARED / "ict_head" / "ict_head.npz"
    if path.exists():
        d = np.load(path)
        return "ICT head mean", d["mean"].astype(np.float64), d["triangles"].astype(np.int64)
    import trimesh

    s = trimesh.creation.icosphere(subdivisions=5, radius=100.0)  # 10,242 vertices
    return "icosphere (ICT data absent)", np.asarray(s.vertices), np.asarray(s.faces, np.int64)


def timed(vertices: np.ndarray, triangles: np.ndarray, length_mm: float, cache: str):
    """Seconds to get the harmonics for ``length_mm`` on a fresh model, and them."""
    from ssm.fitting.refine.deformation_basis import model_harmonics
    from ssm.models.shape_model import ShapeModel

    os.environ["SSM_CACHE_DIR"] = cache
    model = ShapeModel(vertices, np.zeros((vertices.size, 1)), np.ones(1), triangles=triangles)
    t = time.perf_counter()
    h = model_harmonics(model, length_mm)
    return time.perf_counter() - t, h


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="runs of each row (the median is reported)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "harmonics_cache.json")
    args = ap.parse_args()
    name, v, f = mesh()
    before = os.environ.get("SSM_CACHE_DIR")
    rows = []
    try:
        for length in LENGTHS_MM:
            solved, first, cached, same = [], [], [], True
            for _ in range(args.repeats):
                solved.append(timed(v, f, length, "off")[0])
                with tempfile.TemporaryDirectory() as tmp:
                    t_first, h_first = timed(v, f, length, tmp)
                    t_cached, h_cached = timed(v, f, length, tmp)
                    size = sum(p.stat().st_size for p in Path(tmp).glob("*.npz"))
                first.append(t_first)
                cached.append(t_cached)
                same = same and (np.array_equal(h_first.functions, h_cached.functions)
                                 and np.array_equal(h_first.eigenvalues, h_cached.eigenvalues))
            rows.append({"length_mm": length, "eigenpairs": int(len(h_first.eigenvalues)),
                         "solved_s": float(np.median(solved)), "first_run_s": float(np.median(first)),
                         "cached_s": float(np.median(cached)), "entry_mb": size / 1e6, "same_arrays": bool(same),
                         "speedup": float(np.median(solved) / np.median(cached))})
    finally:
        if before is None:
            os.environ.pop("SSM_CACHE_DIR", None)
        else:
            os.environ["SSM_CACHE_DIR"] = before

    print(f"\nManifold harmonics of the {name} ({len(v)} vertices), median of {args.repeats}")
    print(f"{'length':>7} {'pairs':>6} {'solved s':>9} {'first run s':>12} {'cached s':>9} {'entry MB':>9}"
          f" {'speed-up':>9} {'same':>5}")
    for r in rows:
        print(f"{r['length_mm']:>5.0f}mm {r['eigenpairs']:>6} {r['solved_s']:>9.2f} {r['first_run_s']:>12.2f}"
              f" {r['cached_s']:>9.3f} {r['entry_mb']:>9.1f} {r['speedup']:>8.0f}x {str(r['same_arrays']):>5}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"mesh": name, "n_vertices": len(v), "repeats": args.repeats, "rows": rows},
                                   indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
