"""Fitting accuracy and speed on held-out ICT cases, next to NICP baselines in the same run.

A model is trained on 300 ICT identities with surface detail (``ssm.synthetic.ict_cases``);
held-out subjects (identity + their own detail, optionally an expression) become raw
scans (re-triangulated range images from one or three views, 0.3 mm noise along the ray,
0.8 mm sampling, holes, 1 % outliers, random rigid pose). Scored: mean per-vertex
correspondence error on the narrow face (the first 6,706 vertices), mm, and wall time.

Then the real scans in ../shared/data/scans (no ground truth: distance to the scan,
share of the scan explained, landmark error).

Methods, all from the same landmark similarity initialisation where landmarks exist:
* ``init``      the model mean placed by the robust landmark similarity;
* ``ssm``       ``ssm.fit`` (model fit + NICP + pose refinement);
* ``trimesh``   ``trimesh.registration.nricp_amberg`` with the mean as template (default steps);
* ``menpo3d``   ``menpo3d.correspond.non_rigid_icp`` when it is importable (optional extra).
Baselines run on the first subject of the cases in ``BASELINE_CASES``.

The expression with 7 landmarks and none, where the landmark warp cannot apply and the
expression field's probe decides: the same cases with ``--expression-field off`` (what
the field buys), and the neutral ones with ``--expression-field on`` (what the field
would cost a neutral scan if the probe let it through).

Last, the frontal 68-landmark cases again with a second model whose corpus also holds
expression scans of the training identities (``ssm, model with expressions``): what a
user with expression data gets on the expression case, and what it costs on neutral scans;
and the frontal cases (68, 7, no landmarks) with the identity model plus a separate
expression model, as a Basel-style file holds one (``/expression``: ICT's 53 blendshapes,
weights of standard deviation 0.3; ``ssm, + expression model``), fitted only when the
probe finds an expression; and the same with an expression model trained from paired
scans as ``ssm train --expressions`` does (``ssm, + trained expression model``).

    python benchmarks/bench_fitting.py [--seeds 4] [--no-baselines] [--out ...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SSM_SHARED_DATA", ROOT.parent / "shared" / "data"))

CASES = [("frontal", "68", False), ("frontal", "7", False), ("frontal", "none", False),
         ("three", "7", False), ("three", "none", False), ("frontal", "68", True), ("frontal", "7", True),
         ("frontal", "none", True)]
BASELINE_CASES = [("frontal", "68", False), ("frontal", "7", False), ("three", "7", False)]  # issue 3's, + 7 lm


def load_ict_or_skip():
    """The ICT head model from ../shared/data, or None (with the reason printed)."""
    from ssm.synthetic.ict_cases import load_ict

    ict_path = SHARED / "ict_head" / "ict_head.npz"
    if not ict_path.exists():
        print(f"skipped: the ICT head model is not at {ict_path} (set SSM_SHARED_DATA)")
        return None
    return load_ict(ict_path)


def face_error(ict, to_truth, truth: np.ndarray, verts_scan: np.ndarray) -> float:
    """Mean per-vertex correspondence error (mm) on the narrow face of a fit whose
    vertices are in the scan frame; ``to_truth`` maps the scan frame to the truth's."""
    return float(np.linalg.norm(to_truth.apply(verts_scan) - truth, axis=1)[:ict.narrow_face].mean())


def train_model(ict, tmp: Path, expressions: bool = False):
    """The benchmark's model: 300 ICT identities with surface detail; with
    ``expressions``, the same 300 once more with a random expression each (one PCA)."""
    from ssm.synthetic.ict_cases import subjects, with_expressions
    from ssm.io.corpus import write_corpus
    from ssm.training.trainer import ModelTrainer

    scans = subjects(ict, 300, seed=1)
    if expressions:
        scans = np.concatenate([scans, with_expressions(ict, scans, seed=5)])
    path = tmp / ("ict300x.h5" if expressions else "ict300.h5")
    write_corpus(path, scans, ict.triangles, landmarks=ict.landmark_names)
    return ModelTrainer(None, device="cpu").fit(path).model_


def expression_model_rows(ict, seeds: int) -> list[dict]:
    """The frontal 68-landmark cases, neutral and with the held-out expression, fitted
    with a model whose corpus also holds expression scans (random ICT blendshape
    mixtures of the training identities, none the held-out one)."""
    from ssm.synthetic.ict_cases import heldout_case
    from ssm.fitting.fit import fit

    with tempfile.TemporaryDirectory() as tmp:
        model = train_model(ict, Path(tmp), expressions=True)
    rows = []
    for expr in (False, True):
        for seed in range(seeds):
            case = heldout_case(ict, seed, views="frontal", landmarks="68", expression=expr, units="mm")
            t = time.perf_counter()
            res = fit(model, (case.scan.vertices, case.scan.faces), landmarks=case.landmarks)
            rows.append({"case": "frontal/68 lm" + ("/expression" if expr else ""), "seed": seed,
                         "method": "ssm, model with expressions",
                         "error_mm": face_error(ict, case.scan.to_scan.inverse(), case.truth, res.vertices),
                         "seconds": time.perf_counter() - t, "converged": res.converged,
                         "scan_vertices": len(case.scan.vertices), "model_components": model.n_components})
    return rows


def basel_expression_rows(ict, model, seeds: int) -> list[dict]:
    """The frontal cases with 68, 7 and no landmarks, neutral and with the held-out
    expression, fitted with ``model`` and an expression model read from a Basel-style file
    (``/shape``: the model; ``/expression``: ICT's blendshapes turned into the model's
    frame, as offsets with weights of standard deviation 0.3), as ``ssm fit`` does."""
    import h5py

    from ssm.geometry.similarity import fit_similarity
    from ssm.io.model_file import load_expression_model

    s, r, _ = fit_similarity(ict.mean, model.mean)  # the blendshapes' frame -> the model's
    deltas = s * np.einsum("knd,ed->kne", ict.expressions, r)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "basel_style.h5"
        with h5py.File(path, "w") as f:
            for name, mean, basis, var in (
                    ("shape", model.mean, np.asarray(model.basis), np.asarray(model.variances)),
                    ("expression", np.zeros_like(model.mean), deltas.reshape(len(deltas), -1).T, None)):
                norms = np.linalg.norm(basis, axis=0)
                f[f"{name}/model/mean"] = np.asarray(mean, np.float32).reshape(-1)
                f[f"{name}/model/pcaBasis"] = (basis / norms).astype(np.float32)
                f[f"{name}/model/pcaVariance"] = (var if var is not None else (0.3 * norms) ** 2).astype(np.float32)
                f[f"{name}/model/noiseVariance"] = np.float32(model.noise_variance)
                f[f"{name}/representer/points"] = np.asarray(model.mean, np.float32).T
                f[f"{name}/representer/cells"] = model.triangles.T.astype(np.int32)
        expression = load_expression_model(path)
    return fits_with_expression_model(ict, model, expression, seeds, "ssm, + expression model")


def trained_expression_rows(ict, model, seeds: int) -> list[dict]:
    """The frontal cases with 68, 7 and no landmarks, neutral and with the held-out
    expression, fitted with ``model`` and an expression model trained as
    ``ssm train neutral.h5 --expressions expressions.h5`` does: the 300 training identities
    once more with a random expression each (never the held-out one), every expression
    scan moved by its own rigid motion (5 degrees, 10 mm), paired by id."""
    from scipy.spatial.transform import Rotation

    from ssm.synthetic.ict_cases import subjects, with_expressions
    from ssm.training.expressions import pair_expressions, train_expression_model

    neutral = subjects(ict, 300, seed=1)  # the identity model's corpus (train_model)
    rng = np.random.default_rng(7)
    moved = [x @ Rotation.from_rotvec(np.deg2rad(5.0) * rng.normal(size=3) / np.sqrt(3)).as_matrix().T
             + rng.normal(0, 10.0, 3) for x in with_expressions(ict, neutral, seed=5)]
    ids = [f"s{i:03d}" for i in range(len(neutral))]
    pairs = pair_expressions(ids, [i + "_expression" for i in ids])
    expression = train_expression_model(model, neutral, np.array(moved), pairs)
    return fits_with_expression_model(ict, model, expression, seeds, "ssm, + trained expression model")


def fits_with_expression_model(ict, model, expression, seeds: int, method: str) -> list[dict]:
    """Rows of the frontal cases with 68, 7 and no landmarks, neutral and with the
    held-out expression, fitted with ``model`` and its ``expression`` model."""
    from ssm.synthetic.ict_cases import heldout_case
    from ssm.fitting.fit import fit

    rows = []
    for lmk in ("68", "7", "none"):
        for expr in (False, True):
            for seed in range(seeds):
                case = heldout_case(ict, seed, views="frontal", landmarks=lmk, expression=expr, units="mm")
                t = time.perf_counter()
                res = fit(model, (case.scan.vertices, case.scan.faces), landmarks=case.landmarks,
                          expression_model=expression)
                stage = next(st for st in res.stages if st.name == "expression_model")
                rows.append({"case": f"frontal/{lmk} lm" + ("/expression" if expr else ""), "seed": seed,
                             "method": method, "seconds": time.perf_counter() - t,
                             "error_mm": face_error(ict, case.scan.to_scan.inverse(), case.truth, res.vertices),
                             "converged": res.converged, "scan_vertices": len(case.scan.vertices),
                             "expression_components": expression.n_components,
                             "probe_rms_mm": stage.extra["probe_rms_mm"], "applied": stage.extra["applied"]})
    return rows


def expression_field_rows(ict, model, seeds: int) -> list[dict]:
    """The frontal cases with 7 landmarks and none: with the held-out expression and
    ``--expression-field off``, neutral with ``--expression-field on``."""

    from ssm.synthetic.ict_cases import heldout_case
    from ssm.fitting.config import FitConfig
    from ssm.fitting.fit import fit

    rows = []
    for lmk in ("7", "none"):
        for expr, method, cfg in ((True, "ssm, --expression-field off",
                                   FitConfig().replace(expression_field_mm=0.0)),
                                  (False, "ssm, --expression-field on",
                                   FitConfig().replace(expression_field_gate_mm=0.0))):
            for seed in range(seeds):
                case = heldout_case(ict, seed, views="frontal", landmarks=lmk, expression=expr, units="mm")
                t = time.perf_counter()
                res = fit(model, (case.scan.vertices, case.scan.faces), landmarks=case.landmarks, config=cfg)
                rows.append({"case": f"frontal/{lmk} lm" + ("/expression" if expr else ""), "seed": seed,
                             "method": method, "seconds": time.perf_counter() - t, "converged": res.converged,
                             "error_mm": face_error(ict, case.scan.to_scan.inverse(), case.truth, res.vertices),
                             "scan_vertices": len(case.scan.vertices)})
    return rows


def init_pose(model, case):
    from ssm.fitting.config import FitConfig
    from ssm.fitting.initialise.from_landmarks import landmark_similarity
    from ssm.fitting.prepare.landmarks import match_landmarks
    from ssm.fitting.problem import RandomStreams
    from ssm.io.landmarks import LandmarkPoints

    lms = match_landmarks(dict(model.landmarks), LandmarkPoints(case.landmarks))
    sim, inl, _ = landmark_similarity(model.mean[lms.vertex], lms, FitConfig().init,
                                      RandomStreams().rng("landmark_init"))
    return sim, lms, inl


def run_trimesh(model, case, sim, lms, inl):
    import trimesh
    from trimesh.registration import nricp_amberg

    src = trimesh.Trimesh(sim.apply(model.mean), model.triangles, process=False)
    tgt = trimesh.Trimesh(case.scan.vertices, case.scan.faces, process=False)
    out = nricp_amberg(src, tgt, source_landmarks=lms.vertex[inl], target_positions=lms.points[inl])
    return np.asarray(out)


def run_menpo3d(model, case, sim, lms, inl):
    """menpo3d in its own virtualenv (it needs numpy < 2.4): see benchmarks/menpo3d_nicp.py."""
    import subprocess

    py = os.environ.get("SSM_MENPO_PYTHON", str(ROOT / ".venv-menpo" / "bin" / "python"))
    if not Path(py).exists():
        raise RuntimeError(f"no menpo3d environment at {py} (see benchmarks/menpo3d_nicp.py)")
    with tempfile.TemporaryDirectory() as tmp:
        src = sim.apply(model.mean)
        np.savez(Path(tmp) / "in.npz", src_points=src, src_trilist=model.triangles,
                 tgt_points=case.scan.vertices, tgt_trilist=case.scan.faces,
                 src_lm=src[lms.vertex[inl]], tgt_lm=lms.points[inl])
        subprocess.run([py, str(ROOT / "benchmarks" / "menpo3d_nicp.py"), str(Path(tmp) / "in.npz"),
                        str(Path(tmp) / "out.npz")], check=True, capture_output=True, text=True)
        return np.load(Path(tmp) / "out.npz")["points"]


REAL_SCANS = [("james.ply", "james_landmarks68.csv"), ("humface.ply", "humface_landmarks7.csv"),
              ("lee_perry_smith.ply", None)]


def real_scan_rows(model, narrow_face: int) -> list[dict]:
    """Fits of the real scans in ../shared/data/scans: no ground truth, so the fit's
    distance to the scan on the narrow face, the share of the scan it explains, and
    the landmark errors (another annotator's definitions: indicative only)."""
    from ssm.fitting.fit import fit
    from ssm.fitting.prepare.scan import load_scan

    rows = []
    for scan_name, lm_name in REAL_SCANS:
        path = SHARED / "scans" / scan_name
        if not path.exists():
            continue
        scan = load_scan(path)
        t = time.perf_counter()
        res = fit(model, scan, landmarks=None if lm_name is None else SHARED / "scans" / lm_name)
        seconds = time.perf_counter() - t
        lm = np.array(list(res.landmark_errors_mm.values())) if res.landmark_errors_mm else np.array([np.nan])
        rows.append({"scan": scan_name, "points": len(scan.points), "landmarks": len(res.landmark_errors_mm),
                     "seconds": seconds, "converged": res.converged, "units": res.units,
                     "mm_per_unit": 1.0 / res.pose.scale,
                     "face_distance_median_mm": float(np.nanmedian(res.distance_mm[:narrow_face])),
                     "scan_within_2.5mm": res.scan_explained,
                     "landmark_error_median_mm": float(np.median(lm)), "landmark_error_mean_mm": float(np.mean(lm))})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--no-baselines", action="store_true", help="skip trimesh and menpo3d")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "fitting.json")
    args = ap.parse_args()
    ict = load_ict_or_skip()
    if ict is None:
        return
    from ssm.synthetic.ict_cases import heldout_case
    from ssm.fitting.config import FitConfig
    from ssm.fitting.fit import fit

    nf = ict.narrow_face
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        model = train_model(ict, Path(tmp))
        print(f"trained a {model.n_components}-component model on 300 subjects in {time.perf_counter() - t0:.1f} s",
              flush=True)
        warm = heldout_case(ict, 999, views="frontal", landmarks="68")
        fit(model, (warm.scan.vertices, warm.scan.faces), landmarks=warm.landmarks)  # imports, caches
    for views, lmk, expr in CASES:
        for seed in range(args.seeds):
            case = heldout_case(ict, seed, views=views, landmarks=lmk, expression=expr, units="mm")
            name = f"{views}/{lmk} lm" + ("/expression" if expr else "")
            back = case.scan.to_scan.inverse()

            def score(verts_scan):
                return face_error(ict, back, case.truth, verts_scan)

            base = {"case": name, "seed": seed, "scan_vertices": len(case.scan.vertices)}
            with_baselines = not args.no_baselines and seed == 0 and (views, lmk, expr) in BASELINE_CASES
            for preset in ("accurate", "fast"):
                # the subject the baselines run on is timed 3 times (median): one run on
                # this shared machine can be 50 % off, and the speed-up is read from it
                times = []
                for _ in range(3 if with_baselines else 1):
                    t = time.perf_counter()
                    res = fit(model, (case.scan.vertices, case.scan.faces), landmarks=case.landmarks,
                              config=FitConfig.preset(preset))
                    times.append(time.perf_counter() - t)
                rows.append({**base, "method": "ssm" if preset == "accurate" else "ssm fast",
                             "error_mm": score(res.vertices), "seconds": float(np.median(times)),
                             "converged": res.converged})
            if lmk != "none":
                sim, lms, inl = init_pose(model, case)
                rows.append({**base, "method": "init", "error_mm": score(sim.apply(model.mean)), "seconds": 0.0})
                if with_baselines:
                    for meth, fn in (("trimesh", run_trimesh), ("menpo3d", run_menpo3d)):
                        t = time.perf_counter()
                        try:
                            v = fn(model, case, sim, lms, inl)
                            rows.append({**base, "method": meth, "error_mm": score(v),
                                         "seconds": time.perf_counter() - t})
                        except Exception as exc:  # optional / broken baselines are reported, not fatal
                            rows.append({**base, "method": meth, "error": f"{type(exc).__name__}: {exc}"[:160]})
            print(f"  {name} seed {seed} done", flush=True)
    rows += expression_field_rows(ict, model, args.seeds)
    rows += expression_model_rows(ict, args.seeds)
    rows += basel_expression_rows(ict, model, args.seeds)
    rows += trained_expression_rows(ict, model, args.seeds)
    # table
    print(f"\nFitting, narrow-face correspondence error (mm) and time (s); model {model.n_components} components")
    print(f"{'case':<24} {'method':<28} {'error mm':>9} {'seconds':>8} {'scan verts':>10}")
    summary = {}
    for r in rows:
        key = (r["case"], r["method"])
        summary.setdefault(key, []).append(r)
    for (case, meth), rs in summary.items():
        ok = [r for r in rs if "error_mm" in r]
        if not ok:
            print(f"{case:<24} {meth:<28} {'n/a':>9}   {rs[0]['error']}")
            continue
        print(f"{case:<24} {meth:<28} {np.mean([r['error_mm'] for r in ok]):>9.3f} "
              f"{np.mean([r['seconds'] for r in ok]):>8.2f} {ok[0]['scan_vertices']:>10}")
    speed = {}
    for meth in ("trimesh", "menpo3d"):
        for case in sorted({r["case"] for r in rows if r["method"] == meth and "seconds" in r}):
            theirs_rows = [r for r in rows if r["case"] == case and r["method"] == meth]
            seeds = {r["seed"] for r in theirs_rows}
            theirs = np.mean([r["seconds"] for r in theirs_rows])
            theirs_err = np.mean([r["error_mm"] for r in theirs_rows if "error_mm" in r] or [np.nan])
            for ours_name in ("ssm", "ssm fast"):
                same = [r for r in rows if r["case"] == case and r["method"] == ours_name and r["seed"] in seeds]
                ours = np.mean([r["seconds"] for r in same])
                speed[f"{case} {meth}/{ours_name}"] = theirs / ours
                print(f"{case}, seeds {sorted(seeds)}: {ours_name} {np.mean([r['error_mm'] for r in same]):.2f} mm vs "
                      f"{meth} {theirs_err:.2f} mm; speed-up {theirs / ours:.1f}x")
    real = real_scan_rows(model, nf)
    if real:
        print("\nReal scans (../shared/data/scans): fit-to-scan distance on the narrow face, share of the scan "
              "within 2.5 mm of the fit, landmark error (median / mean)")
        print(f"{'scan':<22} {'points':>7} {'lm':>3} {'face dist':>9} {'explained':>9} {'lm err':>13} "
              f"{'units':>24} {'seconds':>7}")
        for r in real:
            lm = ("-" if not r["landmarks"]
                  else f"{r['landmark_error_median_mm']:.2f} / {r['landmark_error_mean_mm']:.2f}")
            print(f"{r['scan']:<22} {r['points']:>7} {r['landmarks']:>3} {r['face_distance_median_mm']:>9.2f} "
                  f"{r['scan_within_2.5mm']:>9.0%} {lm:>13} {r['units']:>24} {r['seconds']:>7.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "speedups": speed, "real_scans": real,
                                    "python": sys.version.split()[0]}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
