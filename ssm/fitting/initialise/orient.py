"""The scan's normals take their side from the placed model (point clouds as read,
meshes whose winding is inverted)."""

from __future__ import annotations

import numpy as np

from ssm.fitting.model_fit.basis import instance_normals
from ssm.fitting.prepare.scan import Scan, orient_normals
from ssm.fitting.problem import FitProblem
from ssm.geometry.similarity import Similarity

# a scan point takes its side from model vertices within this many model mm of it
ORIENT_REACH_MM = 10.0


def oriented_scan(problem: FitProblem, scan: Scan, pose: Similarity, shape: np.ndarray | None = None) -> Scan:
    """``scan`` with its normals on the side of the model's ``shape`` (N, 3, model frame,
    mm; the mean for None) placed by ``pose``."""
    model = problem.model
    x = model.mean if shape is None else shape
    return orient_normals(scan, pose.apply(x), instance_normals(model, x) @ pose.rotation.T,
                          near=ORIENT_REACH_MM * pose.scale)
