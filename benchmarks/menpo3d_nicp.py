"""Run menpo3d's non_rigid_icp on arrays from an .npz (for bench_fitting.py).

menpo3d 0.8.6 needs numpy < 2.4, so it lives in its own virtualenv; the benchmark calls
this script with that environment's python:

    python -m venv .venv-menpo
    .venv-menpo/bin/pip install "numpy<2.4" scipy cython wheel setuptools
    .venv-menpo/bin/pip install --no-build-isolation menpo==0.11.1 menpo3d==0.8.6
    SSM_MENPO_PYTHON=.venv-menpo/bin/python python benchmarks/bench_fitting.py

Input npz: src_points, src_trilist, tgt_points, tgt_trilist, src_lm (L, 3), tgt_lm (L, 3).
Output npz: points (the registered template).
"""

import sys

import numpy as np


def main(inp: str, out: str) -> None:
    from menpo.shape import PointCloud, TriMesh
    from menpo3d.correspond import non_rigid_icp

    d = np.load(inp)
    src = TriMesh(d["src_points"], d["src_trilist"])
    tgt = TriMesh(d["tgt_points"], d["tgt_trilist"])
    src.landmarks["lm"] = PointCloud(d["src_lm"])
    tgt.landmarks["lm"] = PointCloud(d["tgt_lm"])
    res = non_rigid_icp(src, tgt, landmark_group="lm")
    np.savez(out, points=np.asarray(res.points))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
