#!/usr/bin/env python3
"""Build the default head model, ``models/ict_head.h5``, from the ICT-FaceKit data.

    python models/build_ict_head.py [--ict ../shared/data/ict_head/ict_head.npz] [--out models/ict_head.h5]

The identity PCA (100 modes), the 53 ARKit-style blendshapes under their names (also the
fit's expression basis), the iBUG-68 landmarks, the face regions, the UV layout, and the
manifold harmonics of the mean surface that the fit's deformation fields need (so no fit
computes them). The ICT-FaceKit licence (MIT) is written beside it.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    from ssm.fitting.config import FitConfig
    from ssm.fitting.refine.deformation_basis import PROBE_LENGTH_MM, precompute_harmonics
    from ssm.io.ict_facekit import ict_head_model
    from ssm.io.model_file import load_model, save_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ict", type=Path, default=ROOT.parent / "shared" / "data" / "ict_head" / "ict_head.npz")
    ap.add_argument("--out", type=Path, default=ROOT / "models" / "ict_head.h5")
    args = ap.parse_args()
    model, shapes = ict_head_model(args.ict)
    shortest = min(FitConfig().refine.warp_basis_length_mm, PROBE_LENGTH_MM)
    model = model.with_metadata(precomputed=precompute_harmonics(model, shortest))
    save_model(model, args.out, blendshapes=shapes)
    licence = args.ict.parent / "LICENSE"
    if licence.exists():
        shutil.copyfile(licence, args.out.parent / "LICENSE-ICT-FaceKit.txt")
    back = load_model(args.out)
    print(f"wrote {args.out}: {back.n_vertices} vertices, {back.n_components} identity components, "
          f"{len(shapes.names)} blendshapes, {len(back.landmarks)} landmarks, "
          f"{back.precomputed['harmonics_functions'].shape[1]} harmonics, "
          f"{args.out.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
