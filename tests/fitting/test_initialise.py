"""Initialisation: the batched search ICP equals a one-at-a-time reference, RANSAC drops a
wrong landmark, the search finds a head before a wall and on a whole body."""



import numpy as np
from conftest import synthetic_case

from ssm.fitting.config import FitConfig
from ssm.fitting.fit import fit
from ssm.fitting.initialise.from_landmarks import landmark_similarity
from ssm.fitting.prepare.landmarks import match_landmarks
from ssm.geometry.similarity import Similarity, similarity_step
from ssm.io.landmarks import LandmarkPoints
from ssm.synthetic.raw_scans import make_raw_scan


def _reference_icp(src_scan, tree, model_pts, model_nrm, sim, iters, trim, fixed_scale):
    """One hypothesis at a time, with similarity_step: what the batched search must equal."""
    score = np.inf
    for _ in range(iters):
        d, j = tree.query(sim.inverse().apply(src_scan))
        keep = d <= np.quantile(d, trim)
        score = float(d[keep].mean()) * sim.scale
        n = int(keep.sum())
        step = similarity_step(sim.apply(model_pts[j[keep]]), src_scan[keep], model_nrm[j[keep]] @ sim.rotation.T,
                               np.full(n, 0.8), np.full(n, 0.2), scale=fixed_scale is None)
        sim = step.compose(sim)
    return sim, score


def test_batched_hypothesis_icp_matches_one_at_a_time():
    """The automatic search refines hundreds of hypotheses in one batch: same numbers
    as the one-hypothesis ICP."""
    from scipy.spatial import cKDTree

    from ssm.fitting.initialise.search import _icp_batch
    from ssm.geometry.nearest import DevicePoints, TreePoints
    from ssm.geometry.similarity import axis_angle_rotation

    rng = np.random.default_rng(0)
    m = rng.normal(size=(2000, 3)) * [60, 80, 50]
    mn = rng.normal(size=(2000, 3))
    mn /= np.linalg.norm(mn, axis=1, keepdims=True)
    scan = 0.1 * (m[:400] @ axis_angle_rotation(np.array([0.1, 0.2, 0.0])).T) + 5
    starts = [(0.1 * (1 + 0.1 * rng.normal()), axis_angle_rotation(0.3 * rng.normal(size=3)), 5 + rng.normal(size=3))
              for _ in range(6)]
    for fixed in (None, 0.1):
        for index, tol in ((TreePoints(m), 1e-10), (DevicePoints(m, "cpu"), 1e-9)):  # the GPU's search, on the CPU
            s, r, t, score = _icp_batch(scan, index, m, mn, starts, 3, 0.7, fixed)
            for h, (s0, r0, t0) in enumerate(starts):
                one, one_score = _reference_icp(scan, cKDTree(m), m, mn, Similarity(s0, r0, t0), 3, 0.7, fixed)
                np.testing.assert_allclose(one.matrix(), Similarity(s[h], r[h], t[h]).matrix(), atol=tol)
                assert abs(one_score - score[h]) < tol


def test_landmark_ransac_ignores_a_wrong_landmark():
    rng = np.random.default_rng(1)
    model_pts = rng.normal(size=(10, 3)) * 40
    sim = Similarity(0.1, np.eye(3), np.array([5.0, 0, 0]))
    scan_pts = sim.apply(model_pts + rng.normal(0, 0.5, (10, 3)))
    scan_pts[3] += 5.0  # 50 mm off in model units
    lms = match_landmarks({f"l{i}": i for i in range(10)}, LandmarkPoints(scan_pts))
    est, inliers, rep = landmark_similarity(model_pts, lms, FitConfig().init, np.random.default_rng(0))
    assert not inliers[3] and inliers.sum() == 9
    assert rep.extra["rejected"] == ["l3"]
    assert abs(est.scale - 0.1) < 0.002


def test_fit_without_landmarks_ignores_a_wall_behind_the_head(synth_model, head_generator):
    """Clutter as big as the head (a wall behind it) must not capture the automatic
    initialisation: the head is found as a separate cluster."""
    from scipy.spatial import Delaunay

    truth, raw = synthetic_case(head_generator, seed=6, views="frontal")
    c = truth.mean(0)
    g = np.stack(np.meshgrid(np.linspace(-250, 250, 120), np.linspace(-250, 250, 120)), -1).reshape(-1, 2)
    wall = raw.to_scan.apply(np.column_stack([g + c[:2], np.full(len(g), c[2] - 180.0)]))
    verts = np.concatenate([raw.vertices, wall])
    faces = np.concatenate([raw.faces, Delaunay(g).simplices + len(raw.vertices)])
    res = fit(synth_model, (verts, faces))
    err = np.linalg.norm(raw.to_scan.inverse().apply(res.vertices) - truth, axis=1)
    assert err[head_generator.regions["face"]].mean() < 3.0, err[head_generator.regions["face"]].mean()
    assert res.units == "cm"


def test_a_head_on_a_whole_body_scan_converges(synth_model, head_generator):
    """A body scan where the head is a small part of the points: with landmarks the fit
    is right, and converged, judged on the scan near it (ssm.fitting.finish.verdict.EXPLAINED_REACH_MM)."""
    import trimesh

    from ssm.fitting.prepare.scan import scan_explained, scan_from_arrays

    rng = np.random.default_rng(8)
    truth = head_generator.heads(rng.standard_normal(head_generator.fields.shape[0]))[0]
    body = trimesh.creation.capsule(height=1100.0, radius=160.0, count=[48, 48])
    body_v = body.vertices[:, [0, 2, 1]] + [0.0, truth[:, 1].min() - 760.0, truth[:, 2].mean() - 40.0]
    v = np.concatenate([truth, body_v])
    f = np.concatenate([head_generator.triangles, body.faces + len(truth)])
    raw = make_raw_scan(v, f, views="frontal", spacing_mm=2.0, noise_mm=0.2, units="m", seed=8, fov_mm=1800.0)
    head_share = np.mean(np.linalg.norm(raw.to_scan.inverse().apply(raw.vertices) - truth.mean(0), axis=1) < 140)
    assert head_share < 0.3, head_share
    names = ["right_eye_outer", "left_eye_outer", "nose_tip", "right_mouth_corner", "left_mouth_corner"]
    lm = LandmarkPoints(raw.to_scan.apply(truth[[head_generator.landmarks[n] for n in names]]), tuple(names))
    res = fit(synth_model, (raw.vertices, raw.faces), landmarks=lm, units="m")
    err = np.linalg.norm(raw.to_scan.inverse().apply(res.vertices) - truth, axis=1)[head_generator.regions["face"]]
    assert res.converged, res.message
    assert err.mean() < 1.5, err.mean()
    # judged on the whole scan it would have failed: most of it is the body
    sc = scan_from_arrays(raw.vertices, raw.faces)
    assert scan_explained(sc, res.vertices, synth_model.triangles, res.pose.scale) < 0.3
    assert scan_explained(sc, res.vertices, synth_model.triangles, res.pose.scale, reach_mm=50.0) > 0.8


def test_near_named_unit():
    """A head fitted at its own size in a named unit (give or take 30 %) is in that unit;
    one five times too large (laid over a whole body in mm) or in a scanner's own units
    is in none (the body's head-sized windows are then tried too)."""
    from ssm.fitting.initialise.search import near_named_unit

    for scale in (1.0, 0.1, 0.001, 1 / 25.4, 1000.0, 1.2, 0.085):
        assert near_named_unit(scale), scale
    for scale in (4.96, 1 / 49.54, 0.5, 3.0):
        assert not near_named_unit(scale), scale
