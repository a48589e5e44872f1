"""Fitting real scans nobody on the project made, scored on the landmarks held back.

Every scan in ../shared/data/scans and ../shared/data/external with its annotations is
fitted twice with the 300-subject ICT model of ``bench_fitting.py``: once with a few
landmarks given (iBUG 36, 39, 42, 45, 30, 48, 54 where annotated; MeshMonk's five; the
Spacetime face's three rough picks) and once with none. Scored, in mm:

* ``held-back lm``: mean distance of the fitted iBUG 27-67 landmarks (nose, eyes,
  mouth) that were *not* given to the fit to their annotation; annotations of another
  convention (the jaw line) are left out, and so is every landmark the fit was given;
* ``face dist``: median distance of the narrow face's fitted vertices to the scan
  surface (those the scan saw and those it did not);
* ``explained``: the share of the scan within 2.5 mm of the fit;
* seconds of ``ssm.fit`` alone (the scan read, the outputs not written).

    python benchmarks/bench_real_scans.py [--model ict300.h5] [--out ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_fitting import ROOT, SHARED, load_ict_or_skip, train_model  # noqa: E402

GIVEN7 = (36, 39, 42, 45, 30, 48, 54)  # eye corners, nose tip, mouth corners
SCORED = range(27, 68)  # nose, eyes, mouth: the same on every annotation convention
# name -> (scan path, landmark file, scan units, iBUG indices given in the "given" row)
SCANS = {
    "james": ("scans/james.ply", "scans/james_landmarks68.csv", "mm", GIVEN7),
    "humface": ("scans/humface.ply", "scans/humface_landmarks7.csv", "mm", GIVEN7),
    "lee_perry_smith": ("scans/lee_perry_smith.ply", None, "auto", ()),
    "flame_fitting_scan": ("external/flame_fitting_scan/scan.obj", "external/flame_fitting_scan/landmarks.csv",
                           "m", GIVEN7),
    "meshmonk_demoface": ("external/meshmonk_demoface/scan.obj", "external/meshmonk_demoface/landmarks.csv",
                          "mm", (39, 42, 30, 48, 54)),
    "tf_flame_registered": ("external/tf_flame_registered/scan.ply", "external/tf_flame_registered/landmarks.csv",
                            "m", GIVEN7),
    "spacetime_faces_neutral": ("external/spacetime_faces_neutral/scan.ply",
                                "external/spacetime_faces_neutral/landmarks_approx.csv", "mm", (30, 48, 54)),
}
MM_PER = {"mm": 1.0, "m": 1000.0}


def fit_row(model, name: str, given: bool, narrow_face: int, expression=None) -> dict:
    """One fit of one real scan with its landmarks given (a few) or none."""
    from ssm import fit
    from ssm.fitting.prepare.landmarks import ibug_points
    from ssm.fitting.prepare.scan import load_scan

    scan_rel, lm_rel, units, give = SCANS[name]
    annotated = ibug_points(SHARED / lm_rel) if lm_rel else {}
    give = [i for i in give if i in annotated] if given else []
    lms = None
    if give:
        lms = np.full((len(model.landmarks), 3), np.nan)
        order = {n: k for k, n in enumerate(model.landmarks)}
        for i in give:
            lms[order[f"ibug{i:02d}"]] = annotated[i]
    scan = load_scan(SHARED / scan_rel)
    t = time.perf_counter()
    res = fit(model, scan, landmarks=lms, units=units, expression_model=expression)
    seconds = time.perf_counter() - t
    mm = MM_PER.get(units, 1.0 / res.pose.scale)
    held = [i for i in SCORED if i in annotated and i not in give]
    lmv = dict(model.landmarks)
    err = [float(np.linalg.norm(res.vertices[lmv[f"ibug{i:02d}"]] - annotated[i]) * mm) for i in held]
    return {"scan": name, "given": len(give), "held_back": len(held),
            "held_back_error_mm": float(np.mean(err)) if err else None,
            "face_distance_median_mm": float(np.nanmedian(res.distance_mm[:narrow_face])),
            "scan_within_2.5mm": res.scan_explained, "converged": bool(res.converged),
            "seconds": seconds, "stage_seconds": {s.name: round(s.seconds, 3) for s in res.stages}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="a model file (its expression model too, if it has one); "
                                               "without it, the 300-subject ICT model (written here when absent)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "real_scans.json")
    args = ap.parse_args()
    ict = load_ict_or_skip()
    if ict is None:
        return
    from ssm.io.model_file import load_expression_model, load_model, save_model

    expression = None
    if args.model is not None and args.model.exists():
        model = load_model(args.model)
        expression = load_expression_model(args.model)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            model = train_model(ict, Path(tmp))
        if args.model is not None:
            save_model(model, args.model)
    rows = []
    for name, (scan_rel, *_rest) in SCANS.items():
        if not (SHARED / scan_rel).exists():
            print(f"skipped {name}: {SHARED / scan_rel} is absent")
            continue
        for given in (True, False):
            if given and not SCANS[name][3]:
                continue
            rows.append(fit_row(model, name, given, ict.narrow_face, expression))
            r = rows[-1]
            held = "-" if r["held_back_error_mm"] is None else f"{r['held_back_error_mm']:.2f}"
            print(f"{name:<26} given {r['given']:>2}  held-back lm {held:>6} mm ({r['held_back']:>2})  "
                  f"face dist {r['face_distance_median_mm']:.2f} mm  explained {r['scan_within_2.5mm']:.0%}  "
                  f"{'converged' if r['converged'] else 'NOT converged'}  {r['seconds']:.1f} s", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "python": sys.version.split()[0]}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
