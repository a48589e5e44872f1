"""Preparing the inputs: a scan's borders, normals and matching subsets; landmark names,
numbering and units; clear errors for bad inputs."""



import numpy as np
import pytest
from conftest import synthetic_case

from ssm.errors import SSMError
from ssm.fitting.fit import fit
from ssm.fitting.prepare.landmarks import match_landmarks
from ssm.io.landmarks import LandmarkPoints


def test_point_cloud_borders_and_normal_sides():
    """A point cloud's border is found from its neighbourhoods, and its unoriented
    normals take the side of a reference surface."""
    from ssm.fitting.prepare.scan import orient_normals, scan_from_arrays

    g = np.stack(np.meshgrid(np.arange(-20.0, 21.0), np.arange(-20.0, 21.0)), -1).reshape(-1, 2)
    g = g[np.linalg.norm(g, axis=1) <= 20.0]
    rng = np.random.default_rng(0)
    pts = np.column_stack([g + rng.normal(0, 0.05, g.shape), rng.normal(0, 0.02, len(g))])
    sc = scan_from_arrays(pts)
    r = np.linalg.norm(g, axis=1)
    assert not sc.oriented
    assert sc.boundary[r > 19.5].mean() > 0.8 and sc.boundary[r < 17.0].mean() < 0.02
    up = orient_normals(sc, pts[::7], np.tile([0.0, 0.0, 1.0], (len(pts[::7]), 1)), near=5.0)
    assert up.oriented and (up.normals[:, 2] > 0.99).all()
    assert up.tree is sc.tree
    # a reference that is wrong over a patch (a model off by a feature's size there):
    # the points under it take the side of their cloud neighbours
    ref = pts[::7]
    ref_n = np.tile([0.0, 0.0, 1.0], (len(ref), 1))
    ref_n[np.linalg.norm(ref[:, :2] - [5.0, 5.0], axis=1) < 2.5] *= -1
    up = orient_normals(sc, ref, ref_n, near=5.0)
    assert (up.normals[:, 2] > 0.99).all()


def test_matching_over_a_scan_subset_keeps_every_border_point(monkeypatch):
    """Scans over MATCH_POINTS are matched over a random subset that holds all border
    points: matched targets are real scan points, and vertices beyond the edge still
    land on the border and are rejected."""
    from scipy.spatial import cKDTree

    from ssm.fitting.model_fit.correspondence import find_correspondences
    from ssm.fitting.prepare import scan as scan_module
    from ssm.fitting.prepare.scan import scan_from_arrays

    g = np.stack(np.meshgrid(np.arange(60.0), np.arange(60.0)), -1).reshape(-1, 2)
    pts = np.column_stack([g, np.zeros(len(g))])
    i = (np.arange(59)[:, None] * 60 + np.arange(59)[None]).ravel()
    faces = np.concatenate([np.stack([i, i + 1, i + 60], 1), np.stack([i + 1, i + 61, i + 60], 1)])
    monkeypatch.setattr(scan_module, "MATCH_POINTS", 1000)
    sc = scan_from_arrays(pts, faces)
    _, idx = sc.match_tree
    assert len(idx) == 1000 and np.isin(np.flatnonzero(sc.boundary), idx).all()
    inside = np.column_stack([np.random.default_rng(0).uniform(5, 54, (200, 2)), np.full(200, 0.3)])
    beyond = np.column_stack([np.full(20, 62.0), np.linspace(5, 54, 20), np.zeros(20)])
    verts = np.concatenate([inside, beyond])
    normals = np.tile(sc.normals[np.flatnonzero(~sc.boundary)[0]], (len(verts), 1))
    corr = find_correspondences(verts, normals, sc, 1.0, 5.0, 0.3, 0, np.random.default_rng(0))
    assert set(corr.vertex) <= set(range(200)) and len(corr) > 190  # none beyond the edge
    nearest, _ = sc.tree.query(corr.target)
    np.testing.assert_allclose(nearest, 0.0, atol=1e-12)  # real scan points (index mapping)
    subset_d, _ = cKDTree(sc.points[idx]).query(verts[corr.vertex])  # searched over the subset only
    np.testing.assert_allclose(corr.distance_mm, subset_d, atol=1e-12)


def test_residual_planes_take_the_model_normals_and_the_scan_ones_only_without():
    """Each correspondence's residual plane is the model vertex's normal, not the noisy
    scan normal at its target; a point model (no normals) gets the scan's."""
    from ssm.fitting.model_fit.correspondence import find_correspondences
    from ssm.fitting.prepare.scan import scan_from_arrays

    rng = np.random.default_rng(3)
    g = np.stack(np.meshgrid(np.arange(40.0), np.arange(40.0)), -1).reshape(-1, 2)
    tilt = rng.normal(0, 0.15, (len(g), 3))  # a scanner's normals: about 9 degrees off
    scan_n = np.array([0.0, 0.0, 1.0]) + tilt
    scan_n /= np.linalg.norm(scan_n, axis=1, keepdims=True)
    sc = scan_from_arrays(np.column_stack([g, np.zeros(len(g))]), None, scan_n)
    verts = np.column_stack([rng.uniform(5, 34, (100, 2)), np.full(100, 0.5)])
    model_n = np.tile([0.0, 0.0, 1.0], (100, 1))
    corr = find_correspondences(verts, model_n, sc, 1.0, 5.0, 0.3, 0, np.random.default_rng(0))
    assert len(corr) == 100
    np.testing.assert_allclose(corr.normal, model_n[corr.vertex])
    # the point-to-plane residual is then the true height of the vertex above the scan
    np.testing.assert_allclose(((verts[corr.vertex] - corr.target) * corr.normal).sum(1), 0.5)
    # a point model: every pair is compatible, and the plane is the scan's (tilted) normal
    corr = find_correspondences(verts, np.zeros_like(verts), sc, 1.0, 5.0, 0.3, 0, np.random.default_rng(0))
    assert len(corr) == 100 and (np.abs(corr.normal[:, 2]) < 0.999).mean() > 0.9
    np.testing.assert_allclose(np.linalg.norm(corr.normal, axis=1), 1.0)


def test_landmark_names_and_aliases_match():
    model_lms = {"ibug36": 10, "ibug30": 20, "ibug48": 30}
    lp = LandmarkPoints(np.arange(9.0).reshape(3, 3), ("Nose tip", "right eye outer", "unknown"))
    m = match_landmarks(model_lms, lp)
    assert list(m.names) == ["ibug30", "ibug36"] and list(m.vertex) == [20, 10]
    with pytest.raises(SSMError, match="unnamed landmarks but the model has 3"):
        match_landmarks(model_lms, LandmarkPoints(np.zeros((5, 3))))
    with pytest.raises(SSMError, match="none of the landmark names match"):
        match_landmarks(model_lms, LandmarkPoints(np.zeros((1, 3)), ("elbow",)))


def test_landmarks_numbered_from_one_are_read_as_ibug_points():
    """68 rows named 1..68 (the iBUG charts' numbering) are the iBUG points 0..67; rows
    named 0..67, or a subset without 68, are 0-based."""
    model_lms = {f"ibug{i:02d}": 100 + i for i in range(68)}
    pts = np.arange(68 * 3.0).reshape(68, 3)
    one = match_landmarks(model_lms, LandmarkPoints(pts, tuple(str(i + 1) for i in range(68))))
    assert list(one.vertex) == [100 + i for i in range(68)]
    zero = match_landmarks(model_lms, LandmarkPoints(pts, tuple(str(i) for i in range(68))))
    assert list(zero.vertex) == [100 + i for i in range(68)]
    subset = match_landmarks(model_lms, LandmarkPoints(pts[:2], ("37", "46")))
    assert list(subset.vertex) == [137, 146]


def test_landmarks_by_model_vertex():
    """Rows named 'vertex N' are model vertex N with any model; with a model without named
    landmarks (a statismo / scalismo file) plain integer names are vertex indices."""
    pts = np.arange(12.0).reshape(4, 3)
    m = match_landmarks({}, LandmarkPoints(pts, ("0", "300", "1399", "7")), "lm.csv", n_vertices=1400)
    assert list(m.vertex) == [0, 300, 1399, 7] and m.names == ("vertex0", "vertex300", "vertex1399", "vertex7")
    np.testing.assert_array_equal(m.points, pts)
    mixed = match_landmarks({"ibug30": 20}, LandmarkPoints(pts[:3], ("Vertex 5", "nose tip", "vertex:9")),
                            n_vertices=100)
    assert list(mixed.vertex) == [5, 20, 9] and mixed.names == ("vertex5", "ibug30", "vertex9")
    with pytest.raises(SSMError, match="names vertex 1400, but the model has 1400 vertices"):
        match_landmarks({}, LandmarkPoints(pts[:1], ("1400",)), n_vertices=1400)
    with pytest.raises(SSMError, match=r"no named landmarks, and the rows have no names.*'vertex 123"):
        match_landmarks({}, LandmarkPoints(pts))
    with pytest.raises(SSMError, match=r"the model has no named landmarks.*'vertex 123'"):
        match_landmarks({}, LandmarkPoints(pts[:1], ("nose tip",)))


def test_landmarks_in_other_units_give_a_clear_error(synth_model, head_generator, tmp_path):
    """Landmarks written in other units than the scan (m for a mm scan, inches, mm for a
    cm scan) are not on it: a one-line error names the file and the factor that fixes it."""
    truth, raw = synthetic_case(head_generator, seed=5, units="mm")
    names = ["right_eye_outer", "left_eye_outer", "nose_tip", "right_mouth_corner", "left_mouth_corner"]
    pts = raw.to_scan.apply(truth[[head_generator.landmarks[n] for n in names]])
    for factor, fix in ((0.001, "scaled by 1000"), (1 / 25.4, "scaled by 25.4"), (10.0, "scaled by 0.1")):
        path = tmp_path / f"lm_{factor:g}.csv"
        path.write_text("".join(f"{n},{p[0]},{p[1]},{p[2]}\n" for n, p in zip(names, pts * factor)))
        with pytest.raises(SSMError, match=f"lm_{factor:g}.csv: the landmarks are not on the scan.*{fix}"):
            fit(synth_model, (raw.vertices, raw.faces), landmarks=path)


def test_bad_inputs_give_clear_errors(synth_model, tmp_path):
    with pytest.raises(SSMError, match="needs at least 10 points"):
        fit(synth_model, np.zeros((3, 3)))
    with pytest.raises(SSMError, match="all points coincide"):
        fit(synth_model, np.ones((50, 3)))
    bad_pose = tmp_path / "pose.txt"
    bad_pose.write_text("1 0 0\n0 1 0\n")
    with pytest.raises(SSMError, match="pose.txt: holds a"):
        fit(synth_model, np.random.default_rng(0).normal(size=(100, 3)) * 50, pose=bad_pose)
    # a head about 300 mm across, said to be in metres: not fitted, told which units fit
    with pytest.raises(SSMError, match="implausible for units=m .*pass --units mm"):
        fit(synth_model, np.random.default_rng(0).normal(size=(100, 3)) * 50, units="m")
