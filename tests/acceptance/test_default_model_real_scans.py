"""Acceptance (slow): the default model fits every real scan nobody on the project made,
converged, its face on the scan, with a few landmarks given (MeshMonk's five, the
Spacetime face's three rough picks) and, for two of them, none."""

import numpy as np
import pytest
from conftest import shared_file

from ssm.fitting.fit import fit
from ssm.fitting.prepare.landmarks import ibug_points
from ssm.io.model_file import DEFAULT_MODEL

GIVEN7 = (36, 39, 42, 45, 30, 48, 54)
SCANS = [  # scan, landmarks, units, iBUG indices given
    ("scans/james.ply", "scans/james_landmarks68.csv", "mm", GIVEN7),
    ("scans/humface.ply", "scans/humface_landmarks7.csv", "mm", GIVEN7),
    ("scans/lee_perry_smith.ply", None, "auto", ()),
    ("external/flame_fitting_scan/scan.obj", "external/flame_fitting_scan/landmarks.csv", "m", GIVEN7),
    ("external/meshmonk_demoface/scan.obj", "external/meshmonk_demoface/landmarks.csv", "mm", (39, 42, 30, 48, 54)),
    ("external/tf_flame_registered/scan.ply", "external/tf_flame_registered/landmarks.csv", "m", GIVEN7),
    ("external/spacetime_faces_neutral/scan.ply", "external/spacetime_faces_neutral/landmarks_approx.csv", "mm",
     (30, 48, 54)),
]


@pytest.mark.slow
@pytest.mark.parametrize("scan,landmarks,units,given", SCANS, ids=[s[0].split("/")[-2 if "external" in s[0] else -1]
                                                                   for s in SCANS])
def test_real_scans_fit_the_default_model(scan, landmarks, units, given):
    lms = None
    if given:
        points = ibug_points(shared_file(landmarks))
        lms = np.full((68, 3), np.nan)
        for i in given:
            if i in points:
                lms[i] = points[i]
    res = fit(DEFAULT_MODEL, shared_file(scan), landmarks=lms, units=units)
    assert res.converged, res.message
    assert res.face_distance_mm < 0.5
    assert res.evidence["face_seen"] > 0.6


@pytest.mark.slow
@pytest.mark.parametrize("scan,units", [("scans/humface.ply", "mm"), ("external/flame_fitting_scan/scan.obj", "m")])
def test_real_scans_fit_the_default_model_without_landmarks(scan, units):
    res = fit(DEFAULT_MODEL, shared_file(scan), units=units)
    assert res.converged, res.message
    assert res.face_distance_mm < 0.5
