"""Fitting: stages on known truth (synthetic heads, anywhere) and the issue's ICT targets."""

import dataclasses
import json

import numpy as np
import pytest

from conftest import shared_file
from ssm.demo.raw_scans import make_raw_scan
from ssm.errors import SSMError
from ssm.fitting.config import FitConfig
from ssm.fitting.initialise.from_landmarks import landmark_similarity
from ssm.fitting.prepare.landmarks import match_landmarks
from ssm.fitting.fit import fit
from ssm.geometry.similarity import Similarity, similarity_step
from ssm.io.landmarks import LandmarkPoints


@pytest.fixture(scope="module")
def generator():
    """The demo's head generator (2,561 vertices): fine enough for millimetre fits."""
    from ssm.demo.synthetic_heads import make_generator

    return make_generator()


@pytest.fixture(scope="module")
def synth_model(generator, tmp_path_factory):
    from ssm.demo.synthetic_heads import sample_heads
    from ssm.io.corpus import write_corpus
    from ssm.training.trainer import ModelTrainer

    v, _ = sample_heads(generator, 120, seed=21)
    p = tmp_path_factory.mktemp("fit") / "c.h5"
    write_corpus(p, v, generator.triangles, landmarks=generator.landmarks, dtype=np.float64)
    return ModelTrainer(0.9999, device="cpu").fit(p).model_


def _case(generator, seed, units="cm", views="three"):
    rng = np.random.default_rng(seed)
    truth = generator.heads(rng.standard_normal(generator.fields.shape[0]))[0]
    raw = make_raw_scan(truth, generator.triangles, views=views, spacing_mm=1.5, noise_mm=0.2, units=units,
                        seed=seed)
    return truth, raw


def test_similarity_step_converges_to_known_transform():
    rng = np.random.default_rng(0)
    p = rng.normal(size=(200, 3)) * 50
    small = Similarity(1.02, np.array([[1, -0.05, 0], [0.05, 1, 0], [0, 0, 1.0]]), np.array([0.5, -0.2, 0.1]))
    u, _, vt = np.linalg.svd(small.rotation)
    small = Similarity(small.scale, u @ vt, small.translation)
    y = small.apply(p)
    cur = Similarity.identity()
    for _ in range(6):
        step = similarity_step(cur.apply(p), y, None, np.zeros(200), np.ones(200))
        cur = step.compose(cur)
    np.testing.assert_allclose(cur.matrix(), small.matrix(), atol=1e-8)


def test_coefficient_solve_recovers_known_coefficients(synth_model):
    """Exact targets at every vertex: the MAP solve (subsampled point-to-point rows or
    not) returns the true coefficients up to the tiny prior shrinkage."""
    from ssm.fitting.model_fit.iterate import solve_coefficients
    from ssm.geometry.mesh_ops import vertex_normals

    model = synth_model
    k = min(10, model.n_components)
    c_true = np.random.default_rng(3).standard_normal(k)
    x = model.instance(c_true)
    v = np.arange(model.n_vertices)
    n = vertex_normals(x, model.triangles)
    for pp in (None, 200):
        c = solve_coefficients(model, k, v, x, n, np.ones(len(v)), 1e-8, 0.7, pp_samples=pp)
        np.testing.assert_allclose(c, c_true, atol=1e-4)
    # pure point-to-plane (the default): no point-to-point rows at all, same answer
    c = solve_coefficients(model, k, v, x, n, np.ones(len(v)), 1e-8, 1.0)
    np.testing.assert_allclose(c, c_true, atol=1e-4)
    # with landmarks, which always count in 3D
    lm = (v[:5], x[:5], np.full(5, 10.0))
    c = solve_coefficients(model, k, v, x, n, np.ones(len(v)), 1e-8, 1.0, lm=lm)
    np.testing.assert_allclose(c, c_true, atol=1e-4)


def test_coefficient_solve_and_instance_on_a_torch_device_match_numpy(synth_model):
    """The GPU path of the model fit (the basis on the device: gather, products,
    instance), run here by torch on the CPU, gives numpy's numbers to float32 rounding,
    pose columns and landmarks included."""
    import torch

    from ssm.fitting.model_fit.iterate import basis_instance, scaled_basis, solve_coefficients
    from ssm.geometry.mesh_ops import vertex_normals

    model = synth_model
    phi, phi_dev = scaled_basis(model), torch.tensor(scaled_basis(model))
    k = model.n_components
    rng = np.random.default_rng(4)
    c = rng.standard_normal(k)
    x = basis_instance(model, phi, c, k)
    np.testing.assert_allclose(basis_instance(model, phi, c, k, phi_dev), x, atol=1e-4)
    v = np.sort(rng.choice(model.n_vertices, 1500, replace=False))
    y = x[v] + rng.normal(0, 0.5, (len(v), 3))
    n = vertex_normals(x, model.triangles)[v]
    lm = (v[:6], y[:6], np.full(6, 5.0))
    for p2p in (0.7, 1.0):
        args = (model, k, v, y, n, rng.uniform(0.5, 1.0, len(v)), 0.3, p2p, lm, phi)
        pose = (x - x.mean(0), True)
        ref = solve_coefficients(*args, pose_rows=pose)
        np.testing.assert_allclose(solve_coefficients(*args, pose_rows=pose, phi_dev=phi_dev), ref,
                                   rtol=1e-3, atol=1e-4 * np.abs(ref).max())


def test_model_fit_stops_at_a_collapsing_pose(synth_model, monkeypatch):
    """A pose update that collapses the scale (a degenerate solve) ends the model fit at
    the last sound iterate, reported as not converged, instead of handing on a model
    shrunk to a point (which once came out as a negative scale and NaN residuals)."""
    import ssm.fitting.model_fit.iterate as mf
    from ssm.fitting.prepare.scan import scan_from_arrays

    model = synth_model
    x = model.instance(np.zeros(model.n_components))
    scan = scan_from_arrays(x, model.triangles)
    cfg = FitConfig(component_schedule=(5,), prior_schedule=None, iterations_per_level=4)
    state, rep = mf.fit_model(model, scan, Similarity.identity(), cfg)
    assert rep.converged and abs(state.pose.scale - 1.0) < 0.05

    calls = []
    real = mf.update_pose

    def collapsing(*args, **kwargs):
        pose = real(*args, **kwargs)
        calls.append(pose.scale)
        if len(calls) < 3:
            return pose
        return Similarity(pose.scale * 0.01, pose.rotation, pose.translation)

    monkeypatch.setattr(mf, "update_pose", collapsing)
    state, rep = mf.fit_model(model, scan, Similarity.identity(), cfg)
    assert not rep.converged
    assert len(calls) == 3  # stopped at the first collapsed step
    assert abs(state.pose.scale - calls[1]) < 1e-12 and np.isfinite(state.coeffs).all()

def test_expression_offsets_sum_named_blendshapes_and_reject_unknown_names():
    """The held-out expression is the weighted sum of the named ICT blendshapes; a name
    the model lacks raises instead of being left out (it once dropped the brow raise)."""
    from ssm.demo.ict_cases import HELDOUT_EXPRESSION, ICT, expression_offsets

    rng = np.random.default_rng(0)
    names = ("jawOpen", "mouthSmile_L", "mouthSmile_R", "browInnerUp_L", "browInnerUp_R", "eyeBlink_L")
    deltas = rng.standard_normal((len(names), 4, 3))
    ict = ICT(np.zeros((4, 3)), np.zeros((1, 4, 3)), deltas, names, np.zeros((0, 3), int), np.arange(4), 4)
    got = expression_offsets(ict, HELDOUT_EXPRESSION)
    want = sum(HELDOUT_EXPRESSION[nm] * deltas[names.index(nm)] for nm in HELDOUT_EXPRESSION)
    np.testing.assert_allclose(got, want)
    with pytest.raises(KeyError, match="browInnerUp"):
        expression_offsets(ict, {"browInnerUp": 0.5})


def test_model_fit_ends_on_every_vertex_and_scan_point(synth_model, generator, monkeypatch):
    """The model fit's iterations match random subsets (vertices, scan points, solve
    rows), but its last one matches them all and takes the plain solve: the result is
    the MAP fit for its correspondences, so it hardly depends on the random draws."""
    import ssm.fitting.model_fit.iterate as mf
    from ssm.fitting.prepare.scan import scan_from_arrays

    model = synth_model
    truth, raw = _case(generator, 11, units="mm")
    scan = scan_from_arrays(raw.vertices, raw.faces)
    base = FitConfig(component_schedule=(20, 100000), prior_schedule=(16.0, 1.0), iterations_per_level=4,
                     vertex_samples=800, solve_samples=600, scan_samples=1500)
    calls = []
    real = mf.find_correspondences

    def recording(verts, normals, sc, mm, gate, cos, samples, rng, candidates=None, **kw):
        calls.append((samples, None if candidates is None else int(candidates.sum())))
        return real(verts, normals, sc, mm, gate, cos, samples, rng, candidates, **kw)

    monkeypatch.setattr(mf, "find_correspondences", recording)
    pose = raw.to_scan  # the true pose: the test is of the shape
    mf.fit_model(model, scan, pose, base)
    assert calls[-1] == (len(scan.points), None)  # every scan point, every vertex
    assert all(c == (1500, 800) for c in calls[:-1])
    monkeypatch.setattr(mf, "find_correspondences", real)
    fits = [mf.fit_model(model, scan, pose, dataclasses.replace(base, seed=seed))[0] for seed in range(3)]
    xs = [raw.to_scan.inverse().apply(f.pose.apply(model.instance(f.coeffs))) for f in fits]
    spread = max(np.sqrt(((a - b) ** 2).sum(1).mean()) for a in xs for b in xs)
    err = np.mean([np.linalg.norm(x - truth, axis=1).mean() for x in xs])
    assert spread < 0.25 * err, (spread, err)


def test_joint_pose_and_shape_step_recovers_both(synth_model):
    """Targets = a known instance moved by a small known similarity: the joint solve
    returns the coefficients and the similarity step (up to second-order terms)."""
    from ssm.fitting.model_fit.iterate import solve_coefficients
    from ssm.geometry.similarity import step_similarity
    from ssm.geometry.mesh_ops import vertex_normals

    model = synth_model
    k = min(10, model.n_components)
    c_true = np.random.default_rng(4).standard_normal(k)
    x = model.instance(c_true)
    centre = x.mean(0)
    dp_true = np.array([0.004, -0.003, 0.002, 0.3, -0.2, 0.1, 0.005])  # rad, mm, relative scale
    y = step_similarity(dp_true, centre).apply(x)
    v = np.arange(model.n_vertices)
    sol = solve_coefficients(model, k, v, y, vertex_normals(y, model.triangles), np.ones(len(v)), 1e-8, 0.7,
                             pp_samples=None, pose_rows=(x - centre, True))
    np.testing.assert_allclose(sol[:k], c_true, atol=0.02)
    np.testing.assert_allclose(sol[k:], dp_true, atol=3e-4)


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


def test_nicp_plane_targets_move_only_along_the_normal():
    """Point-to-plane targets are the feet on the tangent plane: no tangential pull."""
    from ssm.fitting.refine.nicp import plane_targets

    x = np.array([[0.0, 0.0, 1.0], [2.0, 3.0, -1.0], [0.0, 0.0, 0.0]])
    y = np.array([[5.0, -4.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    n = np.array([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])  # last: normal unknown
    np.testing.assert_allclose(plane_targets(x, y, n, 1.0), [[0, 0, 0], [2, 3, 0], [1, 1, 1]])
    np.testing.assert_allclose(plane_targets(x, y, n, 0.0), y)
    np.testing.assert_allclose(plane_targets(x, y, n, 0.5)[0], [2.5, -2.0, 0.0])


def test_fit_without_landmarks_ignores_a_wall_behind_the_head(synth_model, generator):
    """Clutter as big as the head (a wall behind it) must not capture the automatic
    initialisation: the head is found as a separate cluster."""
    from scipy.spatial import Delaunay

    truth, raw = _case(generator, seed=6, views="frontal")
    c = truth.mean(0)
    g = np.stack(np.meshgrid(np.linspace(-250, 250, 120), np.linspace(-250, 250, 120)), -1).reshape(-1, 2)
    wall = raw.to_scan.apply(np.column_stack([g + c[:2], np.full(len(g), c[2] - 180.0)]))
    verts = np.concatenate([raw.vertices, wall])
    faces = np.concatenate([raw.faces, Delaunay(g).simplices + len(raw.vertices)])
    res = fit(synth_model, (verts, faces))
    err = np.linalg.norm(raw.to_scan.inverse().apply(res.vertices) - truth, axis=1)
    assert err[generator.regions["face"]].mean() < 3.0, err[generator.regions["face"]].mean()
    assert res.units == "cm"


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

    from ssm.fitting import scan as scan_module
    from ssm.fitting.model_fit.correspondence import find_correspondences
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

def test_landmark_ransac_ignores_a_wrong_landmark():
    rng = np.random.default_rng(1)
    model_pts = rng.normal(size=(10, 3)) * 40
    sim = Similarity(0.1, np.eye(3), np.array([5.0, 0, 0]))
    scan_pts = sim.apply(model_pts + rng.normal(0, 0.5, (10, 3)))
    scan_pts[3] += 5.0  # 50 mm off in model units
    lms = match_landmarks({f"l{i}": i for i in range(10)}, LandmarkPoints(scan_pts))
    est, inliers, rep = landmark_similarity(model_pts, lms, FitConfig())
    assert not inliers[3] and inliers.sum() == 9
    assert rep.extra["rejected"] == ["l3"]
    assert abs(est.scale - 0.1) < 0.002


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


@pytest.mark.parametrize("with_landmarks,scan_kind", [(True, "mesh"), (False, "mesh"), (True, "cloud"),
                                                      (False, "inverted mesh")])
def test_fit_recovers_synthetic_head_in_other_units(synth_model, generator, with_landmarks, scan_kind):
    """Other units and pose; a point cloud; a mesh written with inverted winding."""
    truth, raw = _case(generator, seed=5)
    cloud = scan_kind == "cloud"
    lm = None
    if with_landmarks:
        names = ["right_eye_outer", "left_eye_outer", "nose_tip", "right_mouth_corner", "left_mouth_corner"]
        pts = raw.to_scan.apply(truth[[generator.landmarks[n] for n in names]])
        lm = LandmarkPoints(pts, tuple(names))
    faces = raw.faces[:, ::-1] if scan_kind == "inverted mesh" else raw.faces
    res = fit(synth_model, raw.vertices if cloud else (raw.vertices, faces), landmarks=lm)
    est = raw.to_scan.inverse().apply(res.vertices)
    err = np.linalg.norm(est - truth, axis=1)
    face = generator.regions["face"]
    assert res.converged
    # the synthetic head is smooth and nearly symmetric: without landmarks little stops
    # the fit from sliding along it (the ICT tests below hold the targets)
    assert err[face].mean() < (1.5 if with_landmarks else 3.0), err[face].mean()
    # a cloud's distances are to its nearest point (1.5 mm sampling), a mesh's to its surface
    assert np.median(res.distance_mm[face]) < (0.9 if cloud else 0.5)
    assert res.units == "cm"
    # fewer than 20 landmarks: the expression field probes (and finds nothing on a neutral head)
    assert [s.name for s in res.stages][-7:] == ["model_fit", "occlusion", "expression_field", "nicp",
                                                 "pose_refine", "uncertainty", "smoothing"]
    assert not next(s for s in res.stages if s.name == "expression_field").extra["applied"]
    assert np.isfinite(res.stddev_mm).all()
    # only a cloud's normals take their sides again from the model fit
    assert ("cloud_normals_turned" in next(s for s in res.stages if s.name == "model_fit").extra) == cloud


def test_model_units_are_read_from_the_declared_unit_or_the_head_size(synth_model):
    """A model declared in m, or sized as a head in m or um though it says mm (statismo
    files carry no units), is scaled to mm; a model of something else is left alone."""
    import dataclasses

    from ssm.models.model_units import in_millimetres, model_mm_per_unit

    def scaled(f, units):
        return dataclasses.replace(synth_model, mean=synth_model.mean * f, variances=synth_model.variances * f * f,
                                   noise_variance=synth_model.noise_variance * f * f, units=units)

    assert model_mm_per_unit(synth_model) == 1.0 and in_millimetres(synth_model) == (synth_model, 1.0)
    for f, units, want in ((1e-3, "m", 1e3), (1e-3, "mm", 1e3), (1e3, "mm", 1e-3), (0.1, "cm", 10.0),
                           (1e-5, "mm", 1.0)):  # the last: 5 um across, no head in any unit
        model = scaled(f, units)
        assert model_mm_per_unit(model) == pytest.approx(want), (f, units)
        mm, factor = in_millimetres(model)
        assert factor == pytest.approx(want) and mm.units == ("mm" if want != 1.0 else units)
        np.testing.assert_allclose(mm.stddevs, model.stddevs * factor, rtol=1e-6)
        np.testing.assert_allclose(mm.mean, model.mean * factor, rtol=1e-6)


def test_a_model_in_metres_fits_as_in_millimetres(synth_model, generator):
    """FLAME-like units: the same fit as the model in mm, results in mm, and a given pose
    read in the model's units."""
    import dataclasses

    truth, raw = _case(generator, seed=5)
    metres = dataclasses.replace(synth_model, mean=synth_model.mean / 1000, variances=synth_model.variances / 1e6,
                                 noise_variance=synth_model.noise_variance / 1e6, units="m")
    ref = fit(synth_model, (raw.vertices, raw.faces))
    res = fit(metres, (raw.vertices, raw.faces))
    assert res.model_mm_per_unit == 1000.0 and res.units == "cm" and res.summary()["model_mm_per_unit"] == 1000.0
    np.testing.assert_allclose(res.vertices, ref.vertices, atol=1e-6 * np.ptp(ref.vertices))
    np.testing.assert_allclose(res.vertices_model, ref.vertices_model, atol=1e-3)
    # the true pose, given for the model in metres (model m -> scan cm)
    posed = fit(metres, (raw.vertices, raw.faces), pose=raw.to_scan.compose(Similarity(1000.0, np.eye(3), np.zeros(3))))
    err = np.linalg.norm(raw.to_scan.inverse().apply(posed.vertices) - truth, axis=1)
    assert posed.converged and err[generator.regions["face"]].mean() < 3.0


def test_a_model_without_triangles_fits_on_its_points(synth_model, generator):
    """A point distribution model (a statismo file without cells): its vertices have no
    normals, so every pair passes the normal test and the scan's normals give the
    residual planes; it fits (no NICP) close to the model with triangles."""
    import dataclasses

    truth, raw = _case(generator, seed=5)
    names = ["right_eye_outer", "left_eye_outer", "nose_tip", "right_mouth_corner", "left_mouth_corner"]
    lm = LandmarkPoints(raw.to_scan.apply(truth[[generator.landmarks[n] for n in names]]), tuple(names))
    res = fit(dataclasses.replace(synth_model, triangles=None), (raw.vertices, raw.faces), landmarks=lm)
    err = np.linalg.norm(raw.to_scan.inverse().apply(res.vertices) - truth, axis=1)[generator.regions["face"]]
    assert res.converged, res.message
    assert err.mean() < 0.6, err.mean()  # 0.21 mm


def test_brute_force_search_path_gives_the_same_fit(synth_model, generator, monkeypatch):
    """The GPU path (closest-point searches by brute force, :mod:`ssm.geometry.nearest`,
    the automatic search's ICP and the model fit's products on the device), run here by
    torch on the CPU, gives the CPU path's fit: the same vertices but for float32
    rounding and near ties, and the same error against the truth."""
    import ssm.geometry.nearest as nearest_mod
    from ssm.fitting.prepare.scan import scan_from_arrays

    truth, raw = _case(generator, seed=5)
    names = ["right_eye_outer", "left_eye_outer", "nose_tip", "right_mouth_corner", "left_mouth_corner"]
    lm = LandmarkPoints(raw.to_scan.apply(truth[[generator.landmarks[n] for n in names]]), tuple(names))
    kd = fit(synth_model, scan_from_arrays(raw.vertices, raw.faces), landmarks=lm, device="cpu")
    monkeypatch.setattr(nearest_mod, "is_cpu", lambda device: False)  # every search: brute force in torch
    calls = []
    query = nearest_mod.DevicePoints.query
    monkeypatch.setattr(nearest_mod.DevicePoints, "query", lambda self, *a: calls.append(1) or query(self, *a))
    brute = fit(synth_model, scan_from_arrays(raw.vertices, raw.faces), landmarks=lm, device="cpu")
    assert len(calls) > 50  # both directions, every iteration of every stage
    back = raw.to_scan.inverse()
    face = generator.regions["face"]
    e_kd = np.linalg.norm(back.apply(kd.vertices) - truth, axis=1)[face].mean()
    e_bf = np.linalg.norm(back.apply(brute.vertices) - truth, axis=1)[face].mean()
    assert abs(e_kd - e_bf) < 0.02, (e_kd, e_bf)
    assert np.abs(back.apply(kd.vertices) - back.apply(brute.vertices)).max() < 0.5


def test_fit_on_cuda_matches_the_cpu(synth_model, generator):
    """``device="cuda"`` (searches, basis products and smoothing on the GPU) fits as the
    CPU does. The scan is the true mesh, moved, in cm, with noise along its normals and
    a third of it cut away: no ray casting, so it runs where Open3D does not."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device here")
    from ssm.geometry.mesh_ops import vertex_normals

    rng = np.random.default_rng(8)
    truth = generator.heads(rng.standard_normal(generator.fields.shape[0]))[0]
    noisy = truth + 0.2 * rng.standard_normal(len(truth))[:, None] * vertex_normals(truth, generator.triangles)
    keep = generator.triangles[(noisy[generator.triangles][:, :, 2] > np.quantile(noisy[:, 2], 0.33)).all(1)]
    pose = Similarity(0.1, np.linalg.qr(rng.normal(size=(3, 3)))[0] * [1, 1, -1], np.array([3.0, -2.0, 40.0]))
    if np.linalg.det(pose.rotation) < 0:
        pose = Similarity(0.1, -pose.rotation, pose.translation)
    names = ["right_eye_outer", "left_eye_outer", "nose_tip", "right_mouth_corner", "left_mouth_corner"]
    lm = LandmarkPoints(pose.apply(truth[[generator.landmarks[n] for n in names]]), tuple(names))
    face = generator.regions["face"]
    errs = {}
    for device in ("cpu", "cuda"):
        res = fit(synth_model, (pose.apply(noisy), keep), landmarks=lm, device=device)
        assert res.converged
        errs[device] = np.linalg.norm(pose.inverse().apply(res.vertices) - truth, axis=1)[face].mean()
    assert errs["cuda"] < 1.5 and abs(errs["cuda"] - errs["cpu"]) < 0.05, errs


def test_landmarks_far_from_the_fitted_surface_flag_the_fit(synth_model, generator):
    """Landmarks all 60 mm off (another subject's, a wrong frame) agree with each other,
    so RANSAC keeps them, but the surface wins: the fit is returned, flagged. (At 40 mm
    the fit bends far enough towards them to stay under the flag's 10 mm: a known limit,
    see the README.)"""
    truth, raw = _case(generator, seed=5, units="mm")
    names = ["right_eye_outer", "left_eye_outer", "nose_tip", "right_mouth_corner", "left_mouth_corner"]
    pts = raw.to_scan.apply(truth[[generator.landmarks[n] for n in names]] + np.array([0.0, 60.0, 0.0]))
    res = fit(synth_model, (raw.vertices, raw.faces), landmarks=LandmarkPoints(pts, tuple(names)), units="mm")
    assert not res.converged
    assert "landmarks are" in res.message and "mm (median) from the fit" in res.message


def test_a_head_on_a_whole_body_scan_converges(synth_model, generator):
    """A body scan where the head is a small part of the points: with landmarks the fit
    is right, and converged, judged on the scan near it (pipeline.EXPLAINED_REACH_MM)."""
    import trimesh

    from ssm.fitting.prepare.scan import scan_explained, scan_from_arrays

    rng = np.random.default_rng(8)
    truth = generator.heads(rng.standard_normal(generator.fields.shape[0]))[0]
    body = trimesh.creation.capsule(height=1100.0, radius=160.0, count=[48, 48])
    body_v = body.vertices[:, [0, 2, 1]] + [0.0, truth[:, 1].min() - 760.0, truth[:, 2].mean() - 40.0]
    v = np.concatenate([truth, body_v])
    f = np.concatenate([generator.triangles, body.faces + len(truth)])
    raw = make_raw_scan(v, f, views="frontal", spacing_mm=2.0, noise_mm=0.2, units="m", seed=8, fov_mm=1800.0)
    head_share = np.mean(np.linalg.norm(raw.to_scan.inverse().apply(raw.vertices) - truth.mean(0), axis=1) < 140)
    assert head_share < 0.3, head_share
    names = ["right_eye_outer", "left_eye_outer", "nose_tip", "right_mouth_corner", "left_mouth_corner"]
    lm = LandmarkPoints(raw.to_scan.apply(truth[[generator.landmarks[n] for n in names]]), tuple(names))
    res = fit(synth_model, (raw.vertices, raw.faces), landmarks=lm, units="m")
    err = np.linalg.norm(raw.to_scan.inverse().apply(res.vertices) - truth, axis=1)[generator.regions["face"]]
    assert res.converged, res.message
    assert err.mean() < 1.5, err.mean()
    # judged on the whole scan it would have failed: most of it is the body
    sc = scan_from_arrays(raw.vertices, raw.faces)
    assert scan_explained(sc, res.vertices, synth_model.triangles, res.pose.scale) < 0.3
    assert scan_explained(sc, res.vertices, synth_model.triangles, res.pose.scale, reach_mm=50.0) > 0.8


def test_raw_scan_views_see_the_side_they_face(generator):
    """A camera turned 80 degrees about the vertical axis sees one side of the head
    (x > centre), a frontal one both; anything else is refused."""
    rng = np.random.default_rng(3)
    truth = generator.heads(rng.standard_normal(generator.fields.shape[0]))[0]
    c = truth.mean(0)
    for views, side in (("frontal", None), (80.0, 1.0), (-80.0, -1.0)):
        raw = make_raw_scan(truth, generator.triangles, views=views, n_holes=0, outlier_fraction=0.0, pose=False,
                            seed=3)
        x = raw.vertices[:, 0] - c[0]
        if side is None:
            assert abs(np.mean(x > 0) - 0.5) < 0.1
        else:
            assert np.mean(side * x > 0) > 0.85
    with pytest.raises(ValueError, match="views must be"):
        make_raw_scan(truth, generator.triangles, views="top")


def test_landmarks_in_other_units_give_a_clear_error(synth_model, generator, tmp_path):
    """Landmarks written in other units than the scan (m for a mm scan, inches, mm for a
    cm scan) are not on it: a one-line error names the file and the factor that fixes it."""
    truth, raw = _case(generator, seed=5, units="mm")
    names = ["right_eye_outer", "left_eye_outer", "nose_tip", "right_mouth_corner", "left_mouth_corner"]
    pts = raw.to_scan.apply(truth[[generator.landmarks[n] for n in names]])
    for factor, fix in ((0.001, "scaled by 1000"), (1 / 25.4, "scaled by 25.4"), (10.0, "scaled by 0.1")):
        path = tmp_path / f"lm_{factor:g}.csv"
        path.write_text("".join(f"{n},{p[0]},{p[1]},{p[2]}\n" for n, p in zip(names, pts * factor)))
        with pytest.raises(SSMError, match=f"lm_{factor:g}.csv: the landmarks are not on the scan.*{fix}"):
            fit(synth_model, (raw.vertices, raw.faces), landmarks=path)


def test_fit_cli_writes_outputs_and_flags_errors(synth_model, generator, tmp_path):
    from typer.testing import CliRunner

    from ssm.cli.app import app
    from ssm.io.meshes import write_mesh
    from ssm.io.model_file import save_model

    save_model(synth_model, tmp_path / "m.h5")
    truth, raw = _case(generator, seed=6, units="mm", views="frontal")
    write_mesh(tmp_path / "a.ply", raw.vertices, raw.faces)
    (tmp_path / "b.ply").write_bytes(b"")  # a bad scan must not stop the others
    np.savetxt(tmp_path / "a.xyz", raw.vertices[::3])  # a point cloud
    names = ["right_eye_outer", "left_eye_outer", "nose_tip", "right_mouth_corner", "left_mouth_corner"]
    pts = raw.to_scan.apply(truth[[generator.landmarks[n] for n in names]])
    (tmp_path / "a_lm.csv").write_text("".join(f"{n},{p[0]},{p[1]},{p[2]}\n" for n, p in zip(names, pts)))
    res = CliRunner().invoke(app, ["fit", str(tmp_path / "m.h5"), str(tmp_path / "a.ply"), str(tmp_path / "b.ply"),
                                   str(tmp_path / "a.xyz"), "--out", str(tmp_path / "out"), "--units", "mm",
                                   "--landmarks", str(tmp_path / "{stem}_lm.csv")])
    assert res.exit_code == 3, res.output  # b.ply failed; the others were still fitted
    assert "b.ply: file is empty" in res.output
    face = generator.regions["face"]
    # same stem: sub-folders named by the whole file name; a cloud's distances are to
    # its nearest point (sparser than a surface), hence the looser bound
    for sub, limit in (("a_ply", 1.0), ("a_xyz", 1.5)):
        for name in ("fit.ply", "fit_model_frame.ply", "fit.json", "report.png"):
            assert (tmp_path / "out" / sub / name).exists()
        d = json.loads((tmp_path / "out" / sub / "fit.json").read_text())
        assert d["converged"] and d["units"] == "mm" and not d["units_estimated"]
        assert {s["name"] for s in d["stages"]} >= {"landmark_init", "model_fit", "nicp"}
        assert 0.9 <= d["scan_within_2.5mm"] <= 1.0, d["scan_within_2.5mm"]  # the fit covers the scan
        import trimesh

        mesh = trimesh.load(tmp_path / "out" / sub / "fit.ply", process=False)
        assert len(mesh.vertices) == synth_model.n_vertices
        dist = np.asarray(mesh.metadata["_ply_raw"]["vertex"]["data"]["distance_mm"])
        assert np.median(dist[face]) < limit, (sub, np.median(dist[face]))
        # the model's landmarks on the scan: all of them (5 were given), where the fit
        # put them, near the truth, and readable as the next fit's --landmarks
        from ssm.io.landmarks import read_landmark_points

        for suffix in (".csv", ".json"):
            lm = read_landmark_points(tmp_path / "out" / sub / f"landmarks{suffix}")
            assert lm.names == tuple(synth_model.landmarks)
            idx = list(synth_model.landmarks.values())
            np.testing.assert_allclose(lm.points, mesh.vertices[idx])
            err = np.linalg.norm(raw.to_scan.inverse().apply(lm.points) - truth[idx], axis=1)
            assert err.mean() < 1.5, (sub, err)
        assert set(d["fitted_landmarks"]) == set(synth_model.landmarks)
        assert all(v["stddev_mm"] > 0 for v in d["fitted_landmarks"].values())


def test_fit_cli_goes_on_after_an_unexpected_error(synth_model, generator, tmp_path, monkeypatch):
    """A bug met on one scan (not an SSMError) is reported on one line, and the other
    scans are still fitted."""
    from typer.testing import CliRunner

    import ssm.fitting.fit as pipeline
    from ssm.cli.app import app
    from ssm.io.meshes import write_mesh
    from ssm.io.model_file import save_model

    save_model(synth_model, tmp_path / "m.h5")
    truth, raw = _case(generator, seed=6, units="mm", views="frontal")
    for name in ("boom.ply", "fine.ply"):
        write_mesh(tmp_path / name, raw.vertices, raw.faces)
    real_fit = pipeline.fit

    def fit_or_fail(model, scan, **kw):
        if scan.path.endswith("boom.ply"):
            raise ZeroDivisionError("division by zero")
        return real_fit(model, scan, **kw)

    monkeypatch.setattr(pipeline, "fit", fit_or_fail)
    res = CliRunner().invoke(app, ["fit", str(tmp_path / "m.h5"), str(tmp_path / "boom.ply"),
                                   str(tmp_path / "fine.ply"), "--out", str(tmp_path / "out"), "--units", "mm"])
    assert res.exit_code == 3, res.output
    assert "boom.ply: unexpected ZeroDivisionError: division by zero" in res.output
    assert (tmp_path / "out" / "fine" / "fit.json").exists() and not (tmp_path / "out" / "boom").exists()


def test_fit_cli_jobs_fit_scans_in_worker_processes(synth_model, generator, tmp_path):
    """--jobs 2: the same fits as one at a time, a bad scan reported from its worker,
    and the table in the order the scans were given."""
    from typer.testing import CliRunner

    from ssm.cli.app import app
    from ssm.io.meshes import write_mesh
    from ssm.io.model_file import save_model

    save_model(synth_model, tmp_path / "m.h5")
    truth, raw = _case(generator, seed=6, units="mm", views="frontal")
    for name in ("a.ply", "c.ply"):
        write_mesh(tmp_path / name, raw.vertices, raw.faces)
    (tmp_path / "b.ply").write_bytes(b"")
    scans = [str(tmp_path / n) for n in ("a.ply", "b.ply", "c.ply")]
    runs = {}
    for jobs in ("1", "2"):
        res = CliRunner().invoke(app, ["fit", str(tmp_path / "m.h5"), *scans, "--out", str(tmp_path / jobs),
                                       "--units", "mm", "--jobs", jobs])
        assert res.exit_code == 3, res.output
        assert "b.ply: file is empty" in res.output
        assert res.output.index("a.ply") < res.output.index("c.ply")
        runs[jobs] = [json.loads((tmp_path / jobs / s / "fit.json").read_text()) for s in ("a", "c")]
    for one, two in zip(runs["1"], runs["2"]):
        assert two["converged"]
        assert abs(one["distance_to_scan_mm"]["median"] - two["distance_to_scan_mm"]["median"]) < 0.02


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


# ---------------------------------------------------------------- ICT targets
@pytest.fixture(scope="module")
def ict_model(tmp_path_factory):
    from ssm.demo.ict_cases import load_ict, subjects
    from ssm.io.corpus import write_corpus
    from ssm.training.trainer import ModelTrainer

    ict = load_ict(shared_file("ict_head/ict_head.npz"))
    p = tmp_path_factory.mktemp("ict") / "c.h5"
    write_corpus(p, subjects(ict, 300, seed=1), ict.triangles, landmarks=ict.landmark_names)
    return ict, ModelTrainer(None, device="cpu").fit(p).model_


@pytest.mark.slow
@pytest.mark.parametrize("views,landmarks,limit,expression", [
    ("frontal", "68", 0.8, False), ("frontal", "7", 1.0, False), ("three", "none", 1.2, False),
    ("frontal", "68", 0.8, True), ("frontal", "7", 1.0, True), ("frontal", "none", 1.2, True)])
def test_ict_heldout_targets(ict_model, views, landmarks, limit, expression):
    """Issue targets on the narrow face: 68 lm < 0.8 mm, 7 lm < 1.0 mm, none < 1.2 mm,
    also with an expression the identity model does not span (0.76 / 0.88 / 0.88 mm on
    bench_fitting's 4 subjects)."""
    from ssm.demo.ict_cases import heldout_case

    ict, model = ict_model
    errs = []
    for seed in range(2):
        case = heldout_case(ict, seed, views=views, landmarks=landmarks, expression=expression)
        res = fit(model, (case.scan.vertices, case.scan.faces), landmarks=case.landmarks)
        est = case.scan.to_scan.inverse().apply(res.vertices)
        errs.append(np.linalg.norm(est - case.truth, axis=1)[: ict.narrow_face].mean())
    assert np.mean(errs) < limit, errs


@pytest.mark.slow
def test_ict_point_cloud_without_normals(ict_model):
    """A frontal scan as a bare cloud (no faces, no normals), 7 landmarks: its estimated
    normals take their sides again from the model fit, and the fit stays within the
    issue's 1.0 mm (0.54 mm over the robustness benchmark's three subjects)."""
    from ssm.demo.ict_cases import heldout_case

    ict, model = ict_model
    errs = []
    for seed in range(2):
        case = heldout_case(ict, seed, views="frontal", landmarks="7")
        res = fit(model, case.scan.vertices, landmarks=case.landmarks)
        est = case.scan.to_scan.inverse().apply(res.vertices)
        errs.append(np.linalg.norm(est - case.truth, axis=1)[: ict.narrow_face].mean())
        turned = next(s for s in res.stages if s.name == "model_fit").extra["cloud_normals_turned"]
        assert 0.0 < turned < 0.2, turned
        assert res.converged
    assert np.mean(errs) < 0.8, errs


@pytest.mark.slow
def test_ict_cloud_with_unoriented_normals_without_landmarks(ict_model, tmp_path):
    """A frontal scan as a PCD whose normals Open3D estimated and saved without
    orientation (sides flipped in patches), no landmarks: fitted as a cloud without
    normals (when their sides were trusted, the fit ended 120 mm off, reported converged)."""
    import open3d as o3d

    from ssm.demo.ict_cases import heldout_case

    ict, model = ict_model
    case = heldout_case(ict, 3, views="frontal", landmarks="none")
    pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(case.scan.vertices))
    pc.estimate_normals()
    o3d.io.write_point_cloud(str(tmp_path / "scan.pcd"), pc)
    res = fit(model, tmp_path / "scan.pcd")
    est = case.scan.to_scan.inverse().apply(res.vertices)
    err = np.linalg.norm(est - case.truth, axis=1)[: ict.narrow_face].mean()
    assert res.converged and err < 1.2, err


def _fit_with_and_without(ict, model, case, option: str, values=(True, False), **base) -> dict:
    """Fit an ICT held-out ``case`` with the ``FitConfig`` field ``option`` at ``values``
    (on, off), other fields as in ``base``: {on: (FitResult, (N,) per-vertex error against
    the truth, mm)}."""
    import dataclasses

    runs = {}
    for on, value in zip((True, False), values):
        res = fit(model, (case.scan.vertices, case.scan.faces), landmarks=case.landmarks,
                  config=dataclasses.replace(FitConfig(), **{**base, option: value}))
        runs[on] = res, np.linalg.norm(case.scan.to_scan.inverse().apply(res.vertices) - case.truth, axis=1)
    return runs


@pytest.mark.slow
def test_ict_expression_field_with_7_landmarks(ict_model):
    """With 7 landmarks the warp cannot find the expression's region. The expression
    field's probe finds the identity bending and refits with the field over the whole
    model (1.33 against 1.98 mm on this subject); on the same subject without the
    expression the probe stays under its gate and the fit is the plain one."""
    from ssm.demo.ict_cases import heldout_case

    ict, model = ict_model
    case = heldout_case(ict, 0, views="frontal", landmarks="7", expression=True)
    runs = _fit_with_and_without(ict, model, case, "expression_field_mm", values=(1.0, 0.0))
    errs = {on: err[: ict.narrow_face].mean() for on, (_, err) in runs.items()}
    stage = [st for st in runs[True][0].stages if st.name == "expression_field"]
    assert len(stage) == 1 and stage[0].extra["applied"] and stage[0].extra["deformation_components"] > 0
    assert stage[0].extra["probe_rms_mm"] > FitConfig().expression_field_gate_mm
    assert not any(st.name == "expression_field" for st in runs[False][0].stages)
    assert errs[True] < 0.75 * errs[False], errs

    neutral = heldout_case(ict, 0, views="frontal", landmarks="7")
    runs = _fit_with_and_without(ict, model, neutral, "expression_field_mm", values=(1.0, 0.0))
    stage = next(st for st in runs[True][0].stages if st.name == "expression_field")
    assert not stage.extra["applied"] and stage.extra["probe_rms_mm"] < FitConfig().expression_field_gate_mm
    np.testing.assert_allclose(runs[True][1], runs[False][1], atol=1e-6)


@pytest.mark.slow
def test_ict_expression_landmark_warp(ict_model):
    """An expression the identity model does not span, 68 landmarks: the landmark warp
    (the model refitted with a smooth deformation field over the warped region, landmarks
    kept there in NICP) beats the plain fit by a clear margin (the issue's 0.8 mm on
    two subjects: test_ict_heldout_targets), and the reported stddev stays calibrated."""
    from ssm.demo.ict_cases import heldout_case

    ict, model = ict_model
    case = heldout_case(ict, 0, views="frontal", landmarks="68", expression=True)
    # without the warp the expression field's probe would step in: the plain fit has neither
    runs = _fit_with_and_without(ict, model, case, "landmark_warp", expression_field_mm=0.0)
    errs = {on: err[: ict.narrow_face].mean() for on, (_, err) in runs.items()}
    res, err = runs[True]
    warp = next(st for st in res.stages if st.name == "landmark_warp")
    assert warp.extra["refit"] and 0.05 < warp.extra["region_fraction"] < 0.3
    assert warp.extra["deformation_components"] > 0
    # the stddev takes the warp's own uncertainty where the model does not hold
    assert 0.85 <= np.mean(err[: ict.narrow_face] < 2 * res.stddev_mm[: ict.narrow_face]) <= 0.99
    assert errs[True] < 0.7 * errs[False] and errs[True] < 1.2, errs


@pytest.mark.slow
def test_ict_mirror_correlated_field_for_a_symmetric_expression_only(ict_model, monkeypatch):
    """The benchmark's expression (jaw open, a smile and raised brows on both sides) is
    symmetric: the landmark warp's refit finds its field mostly mirrored and fits it again
    with its two sides correlated (by 0.85), closer to the truth than without (0.91
    against 0.97 mm on this subject); a smile and squint on one side keeps the field it
    had, to the bit."""
    import ssm.demo.ict_cases as ict_cases

    ict, model = ict_model
    case = ict_cases.heldout_case(ict, 0, views="frontal", landmarks="68", expression=True)
    runs = _fit_with_and_without(ict, model, case, "mirror_field")
    errs = {on: err[: ict.narrow_face].mean() for on, (_, err) in runs.items()}
    rho = {on: next(st for st in res.stages if st.name == "landmark_warp").extra["mirror_correlation"]
           for on, (res, _) in runs.items()}
    assert rho[True] > 0.5 and rho[False] == 0.0, rho
    assert errs[True] < errs[False] - 0.02, errs

    monkeypatch.setattr(ict_cases, "HELDOUT_EXPRESSION", {"mouthSmile_L": 0.8, "eyeSquint_L": 0.5, "browDown_R": 0.4})
    one_sided = ict_cases.heldout_case(ict, 0, views="frontal", landmarks="68", expression=True)
    runs = _fit_with_and_without(ict, model, one_sided, "mirror_field")
    warp = next(st for st in runs[True][0].stages if st.name == "landmark_warp")
    assert warp.extra["refit"] and warp.extra["mirror_correlation"] == 0.0
    np.testing.assert_array_equal(runs[True][1], runs[False][1])


@pytest.mark.slow
def test_basel_style_model_with_expressions(tmp_path):
    """A Basel-style file (/shape: ICT's identity modes; /expression: its blendshapes), as
    the Basel Face Model 2017 lays them out, landmarks named with --model-landmarks. On a
    face with an expression, 'ssm fit' (--expression-model auto) finds it, fits identity and
    expression together and does much better than with the identity alone (off); on a
    neutral face the probe leaves the identity fit as it is."""
    import h5py
    import trimesh
    from typer.testing import CliRunner

    from ssm.cli.app import app
    from ssm.demo.ict_cases import heldout_case, load_ict
    from ssm.io.meshes import write_mesh

    ict = load_ict(shared_file("ict_head/ict_head.npz"))

    def group(f, name, mean, basis_rows, scale):  # statismo layout; basis rows (K, N, 3)
        b = basis_rows.reshape(len(basis_rows), -1).T
        norms = np.linalg.norm(b, axis=0)
        f[f"{name}/model/mean"] = mean.reshape(-1).astype(np.float32)
        f[f"{name}/model/pcaBasis"] = (b / norms).astype(np.float32)
        f[f"{name}/model/pcaVariance"] = ((scale * norms) ** 2).astype(np.float32)
        f[f"{name}/model/noiseVariance"] = np.float32(0.0)
        f[f"{name}/representer/points"] = ict.mean.T.astype(np.float32)
        f[f"{name}/representer/cells"] = ict.triangles.T.astype(np.int32)

    with h5py.File(tmp_path / "bfm.h5", "w") as f:
        group(f, "shape", ict.mean, ict.modes, 1.0)
        group(f, "expression", np.zeros_like(ict.mean), ict.expressions, 0.3)  # offsets; weights ~0.3
    (tmp_path / "model_lm.csv").write_text("".join(f"ibug{i:02d},{v}\n" for i, v in enumerate(ict.landmarks68)))

    def run(case, mode):
        name = f"{'expr' if case is expr else 'neutral'}_{mode}"
        write_mesh(tmp_path / f"{name}.ply", case.scan.vertices, case.scan.faces)
        np.savetxt(tmp_path / f"{name}.csv", case.landmarks, delimiter=",")
        res = CliRunner().invoke(app, ["fit", str(tmp_path / "bfm.h5"), str(tmp_path / f"{name}.ply"),
                                       "--landmarks", str(tmp_path / f"{name}.csv"), "--model-landmarks",
                                       str(tmp_path / "model_lm.csv"), "--expression-model", mode,
                                       "--out", str(tmp_path / name)])
        assert res.exit_code == 0, res.output
        v = np.asarray(trimesh.load(tmp_path / name / "fit.ply", process=False).vertices)
        err = np.linalg.norm(case.scan.to_scan.inverse().apply(v) - case.truth, axis=1)[:ict.narrow_face].mean()
        return err, json.loads((tmp_path / name / "fit.json").read_text())

    expr = heldout_case(ict, 0, views="frontal", landmarks="68", expression=True)
    e_auto, d_auto = run(expr, "auto")
    e_off, d_off = run(expr, "off")
    # the expression model against the identity alone with its landmark warp and field
    # (0.89 against 1.00 mm on this one subject; 0.83 against 1.02 before the model fit's
    # exact last iteration, which on bench_fitting's 4 subjects took the expression model
    # 0.57 -> 0.46 mm and the identity alone 0.82 -> 0.76: one subject moves by +-0.06 mm
    # with such changes)
    assert e_auto < e_off - 0.08, (e_auto, e_off)
    stage = next(st for st in d_auto["stages"] if st["name"] == "expression_model")
    assert stage["extra"]["applied"] and stage["extra"]["probe_rms_mm"] > 2.0
    assert d_auto["expression_model"] == {"components": 53, "mode": "auto"}
    assert len(d_auto["expression_coefficients"]) == 53 and len(d_auto["coefficients"]) == 100
    assert d_off["expression_coefficients"] is None and "expression_model" not in d_off
    # the subject without the expression, against the true neutral face (truth frame)
    from ssm.demo.ict_cases import HELDOUT_EXPRESSION, expression_offsets

    pose = np.array(d_auto["pose_model_to_scan"])
    neutral_fit = np.asarray(trimesh.load(tmp_path / "expr_auto" / "fit_neutral_model_frame.ply",
                                          process=False).vertices)
    to_truth = expr.scan.to_scan.inverse()
    neutral_truth = expr.truth - expression_offsets(ict, HELDOUT_EXPRESSION)
    nf = ict.narrow_face
    e_neutral = np.linalg.norm(to_truth.apply(neutral_fit @ pose[:3, :3].T + pose[:3, 3]) - neutral_truth,
                               axis=1)[:nf].mean()
    e_as_is = np.linalg.norm(expr.truth - neutral_truth, axis=1)[:nf].mean()  # the expression's own size
    assert e_neutral < 0.45 * e_as_is, (e_neutral, e_as_is)  # 1.21 against 2.97 mm
    assert not (tmp_path / "expr_off" / "fit_neutral_model_frame.ply").exists()
    neutral = heldout_case(ict, 0, views="frontal", landmarks="68")
    e_auto, d_auto = run(neutral, "auto")
    stage = next(st for st in d_auto["stages"] if st["name"] == "expression_model")
    assert not stage["extra"]["applied"] and d_auto["expression_coefficients"] is None
    e_off, _ = run(neutral, "off")  # (off: the generic landmark warp may differ slightly)
    assert e_auto < e_off + 0.05, (e_auto, e_off)


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


@pytest.mark.slow
def test_ict_uncertainty_is_calibrated(ict_model):
    """Issue 4: 85-99 % of face vertices within 2 sigma on held-out cases; unseen > seen."""
    from ssm.demo.ict_cases import heldout_case

    ict, model = ict_model
    inside, n = 0, 0
    for seed, (views, lmk) in enumerate([("frontal", "68"), ("frontal", "7"), ("three", "none")]):
        case = heldout_case(ict, 30 + seed, views=views, landmarks=lmk)
        res = fit(model, (case.scan.vertices, case.scan.faces), landmarks=case.landmarks)
        err = np.linalg.norm(case.scan.to_scan.inverse().apply(res.vertices) - case.truth, axis=1)
        face = slice(0, ict.narrow_face)
        inside += int((err[face] < 2 * res.stddev_mm[face]).sum())
        n += ict.narrow_face
        if views == "frontal":  # the back of the head was not seen: less certain
            assert np.median(res.stddev_mm[res.distance_mm > 5]) > 1.5 * np.median(res.stddev_mm[face])
    assert 0.85 <= inside / n <= 0.99, inside / n


@pytest.mark.slow
def test_ict_hair_is_left_out(ict_model):
    """18 mm of hair over the scalp and a fringe: the occlusion stage finds it (the
    'occluded' vertices are where the hair is) and the face fits nearly as without hair;
    without the stage the hair drags the skull, and the face with it."""
    from ssm.demo.ict_cases import hair_weight, heldout_case

    ict, model = ict_model
    case = heldout_case(ict, 0, views="frontal", landmarks="68", hair_mm=18.0)
    runs = _fit_with_and_without(ict, model, case, "occlusion")
    errs = {on: err[: ict.narrow_face].mean() for on, (_, err) in runs.items()}
    occluded = runs[True][0].occluded
    assert runs[True][0].summary()["occluded_fraction"] == pytest.approx(occluded.mean())
    w = hair_weight(ict, case.truth)
    hair, bare = w > 0.5, w == 0
    seen = case.truth[:, 2] > case.truth[ict.landmarks68[0], 2]  # in front of the ears: the frontal scan sees it
    assert occluded[hair & seen].mean() > 0.8 and occluded[bare].mean() < 0.08
    assert errs[True] < 0.75 and errs[True] < 0.8 * errs[False], errs


@pytest.mark.slow
@pytest.mark.parametrize("units", ["m", "auto"])
def test_ict_whole_body_without_landmarks(ict_model, units):
    """A frontal scan of a whole body (1.7 m; the head about a tenth of the points), no
    landmarks: the whole-scan and bust searches miss the head, the head-sized windows
    (init_auto.head_window_starts) find it, in the units given or, without them, in
    the units the scan would be a body in (init_auto.body_scales)."""
    import trimesh

    from ssm.demo.ict_cases import subjects, with_shoulders

    ict, model = ict_model
    truth = subjects(ict, 1, 10_001)[0]
    v, f = with_shoulders(truth, ict.triangles)
    below = v[:, 1].min()
    for height, radius, x, drop in ((500.0, 150.0, 0.0, 250.0), (800.0, 70.0, -90.0, 900.0), (800.0, 70.0, 90.0, 900.0)):
        part = trimesh.creation.capsule(height=height, radius=radius, count=[24, 24])  # trunk, legs
        f = np.concatenate([f, part.faces + len(v)])
        v = np.concatenate([v, part.vertices[:, [0, 2, 1]] + [x, below - drop, truth[:, 2].mean() - 30.0]])
    raw = make_raw_scan(v, f, views="frontal", fov_mm=1900.0, spacing_mm=2.0, seed=20_001, units="m")
    res = fit(model, (raw.vertices, raw.faces), units=units)
    err = np.linalg.norm(raw.to_scan.inverse().apply(res.vertices) - truth, axis=1)[: ict.narrow_face]
    assert res.converged, res.message
    assert res.units == "m"
    assert err.mean() < 1.2, err.mean()
    assert res.stages[0].extra["window_starts"] > 6  # the bust windows and the head-sized ones


@pytest.mark.slow
def test_ict_bust_without_landmarks(ict_model):
    """Head and shoulders, no landmarks: the whole-scan search lays a head twice the size
    over head and torso; the window search finds the head, and the fit is as good as on a
    head alone."""
    from ssm.demo.ict_cases import subjects, with_shoulders
    from ssm.demo.raw_scans import make_raw_scan

    ict, model = ict_model
    truth = subjects(ict, 1, 10_001)[0]
    raw = make_raw_scan(*with_shoulders(truth, ict.triangles), seed=20_001, fov_mm=560.0)
    res = fit(model, (raw.vertices, raw.faces))
    err = np.linalg.norm(raw.to_scan.inverse().apply(res.vertices) - truth, axis=1)[: ict.narrow_face].mean()
    init = next(st for st in res.stages if st.name == "auto_init")
    assert init.extra["window_starts"] > 0
    assert res.converged and err < 1.0, err


def _with_spherical_uv(model):
    """``model`` with a UV layout: spherical angles about its mean's centre, the seam at
    the back (per-corner coordinates, so no vertex is split)."""
    v, tri = model.mean, model.triangles
    c = v - v.mean(0)
    u = 0.5 + np.arctan2(c[:, 0], c[:, 2]) / (2 * np.pi)
    w = 0.5 + np.arcsin(np.clip(c[:, 1] / np.linalg.norm(c, axis=1), -1, 1)) / np.pi
    cu = u[tri]  # per corner: a triangle across the seam takes its low side past 1
    cu = np.where((cu.max(1, keepdims=True) - cu.min(1, keepdims=True) > 0.5) & (cu < 0.5), cu + 1.0, cu)
    uv = np.stack([cu.ravel() / 1.1, w[tri].ravel()], 1) * 0.9 + 0.05
    return model.with_metadata(uv=uv, triangle_uvs=np.arange(3 * len(tri)).reshape(-1, 3))


def test_fit_cli_carries_the_scan_colours_onto_the_fit_and_its_texture(synth_model, generator, tmp_path):
    """A coloured scan: fit.ply's vertex colours are the scan's where it saw the head (and
    filled smoothly behind), fit.obj carries the model's UVs and a texture whose texels
    under each seen vertex hold that vertex's colour; --texture 0 bakes none."""
    import trimesh
    from PIL import Image
    from typer.testing import CliRunner

    from ssm.cli.app import app
    from ssm.io.meshes import read_mesh, write_mesh
    from ssm.io.model_file import save_model

    model = _with_spherical_uv(synth_model)
    save_model(model, tmp_path / "m.h5")
    truth, raw = _case(generator, seed=6, units="mm", views="frontal")

    def paint(p_mm):  # a colour that varies smoothly over the head (truth frame, mm)
        return np.clip(np.stack([0.5 + 0.4 * np.sin(p_mm[:, 0] / 25.0), 0.5 + 0.4 * np.cos(p_mm[:, 1] / 30.0),
                                 0.5 + 0.004 * p_mm[:, 2]], 1), 0.0, 1.0)

    colors = paint(raw.to_scan.inverse().apply(raw.vertices))
    write_mesh(tmp_path / "a.ply", raw.vertices, raw.faces, vertex_colors=colors)
    args = ["fit", str(tmp_path / "m.h5"), str(tmp_path / "a.ply"), "--units", "mm"]
    res = CliRunner().invoke(app, args + ["--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    fit_mesh = read_mesh(tmp_path / "out" / "fit.ply", colors=True)
    dist = np.asarray(trimesh.load(tmp_path / "out" / "fit.ply", process=False)
                      .metadata["_ply_raw"]["vertex"]["data"]["distance_mm"])
    seen = dist < 0.5
    assert seen.mean() > 0.2 and np.isfinite(fit_mesh.colors).all()  # a frontal scan
    expect = paint(raw.to_scan.inverse().apply(fit_mesh.vertices))
    assert np.abs(fit_mesh.colors[seen] - expect[seen]).mean() < 0.01  # 8-bit colours, 0.5 mm of fit error
    obj = trimesh.load(tmp_path / "out" / "fit.obj", process=False, maintain_order=True)
    assert isinstance(obj.visual, trimesh.visual.TextureVisuals) and obj.visual.material.image is not None
    frame = trimesh.load(tmp_path / "out" / "fit_model_frame.obj", process=False, maintain_order=True)
    np.testing.assert_allclose(frame.vertices, read_mesh(tmp_path / "out" / "fit_model_frame.ply").vertices,
                               atol=1e-6)  # the model frame, the same texture
    assert frame.visual.material.image is not None
    tex = np.asarray(Image.open(tmp_path / "out" / "fit_texture.png")).astype(float) / 255.0
    assert tex.shape == (1024, 2048, 3)  # the layout spans two unit tiles (u up to 1.1 / 1.1 * 0.9 + 0.05)
    # each seen vertex's corners: the texel under their uv has about the vertex's colour
    corner_v = model.triangles.ravel()
    ok = seen[corner_v]
    uvc = model.uv[model.triangle_uvs.ravel()][ok]
    rows = np.clip(((1.0 - uvc[:, 1]) * 1024).astype(int), 0, 1023)
    cols = np.clip((uvc[:, 0] / 2.0 * 2048).astype(int), 0, 2047)
    assert np.median(np.abs(tex[rows, cols] - fit_mesh.colors[corner_v[ok]]).max(1)) < 0.03
    res = CliRunner().invoke(app, args + ["--out", str(tmp_path / "plain"), "--texture", "0"])
    assert res.exit_code == 0, res.output
    assert not (tmp_path / "plain" / "fit_texture.png").exists()  # the UVs still, no texture
    plain = trimesh.load(tmp_path / "plain" / "fit.obj", process=False, maintain_order=True)
    np.testing.assert_allclose(plain.vertices, fit_mesh.vertices, atol=1e-6)


def test_fit_cli_fuses_a_position_map_with_the_fit(synth_model, generator, tmp_path):
    """``ssm fit --map POS:VAR``: a UV position map of the subject (model frame, 0.15 mm
    noise per axis) is fused with the fit by their uncertainties; fused.ply is closer to
    the truth than the fit alone (and is not moved onto the fit's slightly turned face),
    and a spec without its variance file is one error line."""
    import trimesh
    from typer.testing import CliRunner

    from ssm.cli.app import app
    from ssm.fusion.uv_maps import bake_to_map
    from ssm.io.meshes import write_mesh
    from ssm.io.model_file import save_model

    model = _with_spherical_uv(synth_model)
    uv, tri = model.uv, model.triangles
    save_model(model, tmp_path / "m.h5")
    truth, raw = _case(generator, seed=6, units="mm", views="frontal")
    write_mesh(tmp_path / "a.ply", raw.vertices, raw.faces)
    runner = CliRunner()
    args = ["fit", str(tmp_path / "m.h5"), str(tmp_path / "a.ply"), "--units", "mm"]
    res = runner.invoke(app, args + ["--out", str(tmp_path / "plain")])
    assert res.exit_code == 0, res.output
    # the truth in the model frame, through the pose the fit found (the fit is seeded:
    # the run with the map finds the same pose)
    pose = np.array(json.loads((tmp_path / "plain" / "fit.json").read_text())["pose_model_to_scan"])
    ts = raw.to_scan.apply(truth)
    t_model = np.linalg.solve(pose[:3, :3], (ts - pose[:3, 3]).T).T
    rng = np.random.default_rng(0)
    pos = bake_to_map(t_model + rng.normal(0, 0.15, t_model.shape), uv, model.triangle_uvs, tri, (512, 512))
    np.save(tmp_path / "pos.npy", pos)
    np.save(tmp_path / "var.npy", np.full(pos.shape[:2], 0.0675))  # 3 x 0.15^2 mm^2
    res = runner.invoke(app, args + ["--out", str(tmp_path / "mapped"),
                                     "--map", f"{tmp_path / 'pos.npy'}:{tmp_path / 'var.npy'}"])
    assert res.exit_code == 0, res.output
    fit = np.asarray(trimesh.load(tmp_path / "mapped" / "fit_model_frame.ply", process=False).vertices)
    fused = np.asarray(trimesh.load(tmp_path / "mapped" / "fused.ply", process=False).vertices)
    face = generator.regions["face"]
    e_fit = np.linalg.norm(fit - t_model, axis=1)[face].mean()
    e_fused = np.linalg.norm(fused - t_model, axis=1)[face].mean()
    assert e_fused < 0.75 * e_fit, (e_fused, e_fit)
    sources = json.loads((tmp_path / "mapped" / "fused.json").read_text())["sources"]
    assert [s["name"] for s in sources] == ["fit", "pos"] and not sources[1]["aligned"]
    res = runner.invoke(app, args + ["--out", str(tmp_path / "bad"), "--map", str(tmp_path / "pos.npy")])
    assert res.exit_code != 0 and "give POSITIONS:VARIANCE files" in res.output, res.output


def test_fit_with_a_scalismo_model_and_vertex_landmarks(tmp_path):
    """A statismo / scalismo model file (no named landmarks, not a head) fits a raw scan of
    one of its instances, initialised from landmarks given as point ids."""
    from typer.testing import CliRunner

    from ssm.cli.app import app
    from ssm.io.meshes import write_mesh
    from ssm.io.model_file import load_model

    path = shared_file("interop/scalismo_model.h5")
    model = load_model(path)
    truth = model.instance(np.random.default_rng(0).standard_normal(model.n_components))
    raw = make_raw_scan(truth, model.triangles, views="frontal", spacing_mm=1.0, noise_mm=0.2, units="cm", seed=1)
    write_mesh(tmp_path / "scan.ply", raw.vertices, raw.faces)
    ids = [0, 300, 700, 1000, 1399]
    pts = raw.to_scan.apply(truth[ids])
    (tmp_path / "lm.csv").write_text("".join(f"{i} {p[0]} {p[1]} {p[2]}\n" for i, p in zip(ids, pts)))
    res = CliRunner().invoke(app, ["fit", str(path), str(tmp_path / "scan.ply"), "--landmarks",
                                   str(tmp_path / "lm.csv"), "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    import trimesh

    fitted = np.asarray(trimesh.load(tmp_path / "out" / "fit.ply", process=False).vertices)
    err = np.linalg.norm(raw.to_scan.inverse().apply(fitted) - truth, axis=1).mean()
    assert err < 1.0, err
    d = json.loads((tmp_path / "out" / "fit.json").read_text())
    assert sorted(d["landmark_errors_mm"]) == sorted(f"vertex{i}" for i in ids)
    assert abs(d["scale"] - 0.1) < 0.005  # centimetres, estimated
    # scalismo's own way: reference landmarks on the model's mean and the scan's, matched by id
    def scalismo_json(points):
        return json.dumps([{"id": f"L{i}", "coordinates": list(map(float, q))} for i, q in zip(ids, points)])

    (tmp_path / "ref.json").write_text(scalismo_json(model.mean[ids] + 0.3))  # near the vertices, not on them
    (tmp_path / "target.json").write_text(scalismo_json(pts))
    res = CliRunner().invoke(app, ["fit", str(path), str(tmp_path / "scan.ply"), "--landmarks",
                                   str(tmp_path / "target.json"), "--model-landmarks", str(tmp_path / "ref.json"),
                                   "--out", str(tmp_path / "out2")])
    assert res.exit_code == 0, res.output
    d2 = json.loads((tmp_path / "out2" / "fit.json").read_text())
    assert sorted(d2["landmark_errors_mm"]) == sorted(f"L{i}" for i in ids)
    assert d2["coefficients"] == d["coefficients"]  # the same landmarks, by another route
    (tmp_path / "far.json").write_text(scalismo_json(model.mean[ids] * 10.0))  # in another unit
    res = CliRunner().invoke(app, ["fit", str(path), str(tmp_path / "scan.ply"), "--landmarks",
                                   str(tmp_path / "target.json"), "--model-landmarks", str(tmp_path / "far.json"),
                                   "--out", str(tmp_path / "out3")])
    assert isinstance(res.exception, SSMError) and "not on the model's mean shape" in str(res.exception)


def test_near_named_unit():
    """A head fitted at its own size in a named unit (give or take 30 %) is in that unit;
    one five times too large (laid over a whole body in mm) or in a scanner's own units
    is in none (the body's head-sized windows are then tried too)."""
    from ssm.fitting.initialise.search import near_named_unit

    for scale in (1.0, 0.1, 0.001, 1 / 25.4, 1000.0, 1.2, 0.085):
        assert near_named_unit(scale), scale
    for scale in (4.96, 1 / 49.54, 0.5, 3.0):
        assert not near_named_unit(scale), scale
