"""Training time and peak memory vs scikit-learn PCA, measured in the same run.

For each corpus size S (default 500, 2000, 10000 subjects x 11,248 vertices), a corpus is
drawn from the ICT head model in ../shared/data (100 identity modes; the synthetic head
generator at the same vertex count stands in when the data are absent) and written as a
normal gzip-compressed corpus file. Then, each in a fresh process so that peak RSS is
its own:

* ``ssm streamed``  ModelTrainer(K, pca="streamed"): Procrustes + streamed randomized PCA
                    reading the corpus file chunk by chunk;
* ``ssm auto``      the default path (exact in memory for small corpora);
* ``sklearn``       read the whole corpus into memory (float32) and run
                    ``sklearn.decomposition.PCA(K)`` (its randomized solver), no alignment.

Prints a table and writes JSON (default ``benchmarks/results/training.json``).

    python benchmarks/bench_training.py [--sizes 500 2000 10000] [--components 50]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SSM_SHARED_DATA", ROOT.parent / "shared" / "data"))


def make_corpus(path: Path, n: int, seed: int = 0) -> str:
    from ssm.io.corpus import write_corpus

    ict = SHARED / "ict_head" / "ict_head.npz"
    rng = np.random.default_rng(seed)
    if ict.exists():
        d = np.load(ict)
        mean = d["mean"].astype(np.float64).reshape(-1)
        modes = d["identity_modes"].astype(np.float64).reshape(100, -1)
        tri = d["triangles"]
        source = "ICT head model, 100 modes"
    else:
        from ssm.synthetic.heads import make_generator

        g = make_generator(n_lat=88, n_lon=128)
        mean, modes, tri = g.mean.reshape(-1), g.fields.reshape(len(g.fields), -1), g.triangles
        source = f"synthetic heads (../shared/data not found at {SHARED})"

    def blocks():
        for start in range(0, n, 500):
            b = min(500, n - start)
            c = rng.standard_normal((b, modes.shape[0]))
            yield (mean + c @ modes + rng.normal(0, 0.1, (b, mean.size))).reshape(b, -1, 3)

    write_corpus(path, blocks(), tri)
    return source


def worker(kind: str, corpus: str, k: int) -> dict:
    t0 = time.perf_counter()
    if kind.startswith("ssm"):
        from ssm.training.trainer import ModelTrainer

        pca = "streamed" if kind == "ssm streamed" else "auto"
        m = ModelTrainer(k, pca=pca, device="cuda" if kind == "ssm cuda" else "cpu").fit(corpus).model_
        var = m.variances
        method = m.provenance["pca_method"]
    else:
        from sklearn.decomposition import PCA

        from ssm.io.corpus import Corpus

        with Corpus(corpus) as c:
            x = c.read(dtype=np.float32).reshape(c.n_subjects, -1)
        t_load = time.perf_counter() - t0
        p = PCA(k, random_state=0).fit(x)
        var = p.explained_variance_
        method = f"sklearn {p._fit_svd_solver} (load {t_load:.1f} s)"
    secs = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux: KiB)
    return {"kind": kind, "seconds": secs, "peak_rss_mib": peak, "method": method,
            "top_variances": [float(v) for v in var[:5]]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[500, 2000, 10000])
    ap.add_argument("--components", type=int, default=50)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "training.json")
    ap.add_argument("--worker", nargs=3, metavar=("KIND", "CORPUS", "K"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        kind, corpus, k = args.worker
        print(json.dumps(worker(kind, corpus, int(k))))
        return
    import torch

    cuda = torch.cuda.is_available()  # then a row with the PCA on the GPU too
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            path = Path(tmp) / f"corpus_{n}.h5"
            t0 = time.perf_counter()
            source = make_corpus(path, n)
            gen_s = time.perf_counter() - t0
            for kind in ("ssm streamed", "ssm auto", "sklearn") + (("ssm cuda",) if cuda else ()):
                out = subprocess.run([sys.executable, __file__, "--worker", kind, str(path), str(args.components)],
                                     capture_output=True, text=True)
                if out.returncode != 0:
                    rows.append({"subjects": n, "kind": kind, "error": out.stderr.strip().splitlines()[-1]})
                    continue
                r = json.loads(out.stdout.strip().splitlines()[-1])
                r.update({"subjects": n, "corpus_mib": path.stat().st_size / 2**20, "source": source,
                          "generate_seconds": gen_s})
                rows.append(r)
            path.unlink()
    base = {r["subjects"]: r for r in rows if r.get("kind") == "sklearn" and "seconds" in r}
    print(f"\nTraining, K={args.components}, vertices 11248 ({rows[0].get('source', '')})")
    print(f"{'subjects':>8} {'method':<14} {'seconds':>8} {'vs sklearn':>10} {'peak RSS MiB':>13}  detail")
    for r in rows:
        if "error" in r:
            print(f"{r['subjects']:>8} {r['kind']:<14} failed: {r['error']}")
            continue
        b = base.get(r["subjects"])
        ratio = f"{r['seconds'] / b['seconds']:.2f}x" if b else "-"
        print(f"{r['subjects']:>8} {r['kind']:<14} {r['seconds']:>8.1f} {ratio:>10} {r['peak_rss_mib']:>13.0f}  "
              f"{r['method']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"components": args.components, "rows": rows,
                                    "machine": {"cpus": os.cpu_count(),
                                                "gpu": torch.cuda.get_device_name() if cuda else None}}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
