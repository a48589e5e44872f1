"""Acceptance (slow): real scans nobody on the project made fit converged."""



import numpy as np
import pytest
from conftest import shared_file

from ssm.fitting.fit import fit


@pytest.mark.slow
@pytest.mark.parametrize("scan,landmarks", [("james.ply", "james_landmarks68.csv"),
                                            ("humface.ply", "humface_landmarks7.csv"),
                                            ("lee_perry_smith.ply", None)])
def test_real_scans(ict_model, scan, landmarks):
    ict, model = ict_model
    lm = shared_file(f"scans/{landmarks}") if landmarks else None
    res = fit(model, shared_file(f"scans/{scan}"), landmarks=lm)
    assert res.converged
    # on the face, which every scan covers (humface covers about half the head: the
    # median over all vertices is in the unseen half, 1.7 mm)
    face = res.distance_mm[: ict.narrow_face]
    assert np.nanmedian(face) < 0.5, np.nanmedian(face)  # 0.15-0.26 mm
    if lm is not None:
        assert np.median(list(res.landmark_errors_mm.values())) < 6.0
    else:  # unknown units: about 8.5 units wide
        assert res.units_estimated
