"""Raw-scan simulation: each camera sees the side it faces."""



import numpy as np
import pytest

from ssm.synthetic.raw_scans import make_raw_scan


def test_raw_scan_views_see_the_side_they_face(head_generator):
    """A camera turned 80 degrees about the vertical axis sees one side of the head
    (x > centre), a frontal one both; anything else is refused."""
    rng = np.random.default_rng(3)
    truth = head_generator.heads(rng.standard_normal(head_generator.fields.shape[0]))[0]
    c = truth.mean(0)
    for views, side in (("frontal", None), (80.0, 1.0), (-80.0, -1.0)):
        raw = make_raw_scan(truth, head_generator.triangles, views=views, n_holes=0, outlier_fraction=0.0, pose=False,
                            seed=3)
        x = raw.vertices[:, 0] - c[0]
        if side is None:
            assert abs(np.mean(x > 0) - 0.5) < 0.1
        else:
            assert np.mean(side * x > 0) > 0.85
    with pytest.raises(ValueError, match="views must be"):
        make_raw_scan(truth, head_generator.triangles, views="top")
