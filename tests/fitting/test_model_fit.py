"""The model fit: its solves recover known coefficients and poses, on the CPU and a torch
device; it stops at a collapse; its last iteration is exact."""

import numpy as np
from conftest import synthetic_case

from ssm.fitting.config import FitConfig
from ssm.fitting.model_fit.schedule import configured_schedule
from ssm.fitting.problem import fit_problem
from ssm.fitting.state import FitState
from ssm.geometry.similarity import Similarity, similarity_step


def _fitted(result):
    return result.state, result.report


def _problem_at(model, scan, pose, cfg):
    """(problem, start state at ``pose``, the configured schedule) for a model fit."""
    problem = fit_problem(model, scan, units="mm", device="cpu", config=cfg)
    return problem, FitState(problem.scan, pose, np.zeros(model.n_components)), configured_schedule(cfg.model_fit)


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
    from ssm.fitting.model_fit.solve import solve_coefficients
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

    from ssm.fitting.model_fit.basis import basis_instance, scaled_basis
    from ssm.fitting.model_fit.solve import solve_coefficients
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
    cfg = FitConfig().replace(component_schedule=(5,), prior_schedule=None, iterations_per_level=4)
    problem = fit_problem(model, scan, units="mm", device="cpu", config=cfg)
    start = FitState(problem.scan, Similarity.identity(), np.zeros(model.n_components))
    schedule = configured_schedule(cfg.model_fit)
    state, rep = _fitted(mf.fit_model(problem, start, schedule))
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
    state, rep = _fitted(mf.fit_model(problem, start, schedule))
    assert not rep.converged
    assert len(calls) == 3  # stopped at the first collapsed step
    assert abs(state.pose.scale - calls[1]) < 1e-12 and np.isfinite(state.coeffs).all()


def test_model_fit_ends_on_every_vertex_and_scan_point(synth_model, head_generator, monkeypatch):
    """The model fit's iterations match random subsets (vertices, scan points, solve
    rows), but its last one matches them all and takes the plain solve: the result is
    the MAP fit for its correspondences, so it hardly depends on the random draws."""
    import ssm.fitting.model_fit.iterate as mf
    from ssm.fitting.prepare.scan import scan_from_arrays

    model = synth_model
    truth, raw = synthetic_case(head_generator, 11, units="mm")
    scan = scan_from_arrays(raw.vertices, raw.faces)
    base = FitConfig().replace(component_schedule=(20, 100000), prior_schedule=(16.0, 1.0), iterations_per_level=4,
                               vertex_samples=800, solve_samples=600, scan_samples=1500)
    calls = []
    real = mf.find_correspondences

    def recording(verts, normals, sc, mm, gate, cos, samples, rng, candidates=None, **kw):
        calls.append((samples, None if candidates is None else int(candidates.sum())))
        return real(verts, normals, sc, mm, gate, cos, samples, rng, candidates, **kw)

    monkeypatch.setattr(mf, "find_correspondences", recording)
    pose = raw.to_scan  # the true pose: the test is of the shape
    mf.fit_model(*_problem_at(model, scan, pose, base))
    assert calls[-1] == (len(scan.points), None)  # every scan point, every vertex
    assert all(c == (1500, 800) for c in calls[:-1])
    monkeypatch.setattr(mf, "find_correspondences", real)
    fits = [mf.fit_model(*_problem_at(model, scan, pose, base.replace(seed=seed))).state for seed in range(3)]
    xs = [raw.to_scan.inverse().apply(f.pose.apply(model.instance(f.coeffs))) for f in fits]
    spread = max(np.sqrt(((a - b) ** 2).sum(1).mean()) for a in xs for b in xs)
    err = np.mean([np.linalg.norm(x - truth, axis=1).mean() for x in xs])
    assert spread < 0.25 * err, (spread, err)


def test_joint_pose_and_shape_step_recovers_both(synth_model):
    """Targets = a known instance moved by a small known similarity: the joint solve
    returns the coefficients and the similarity step (up to second-order terms)."""
    from ssm.fitting.model_fit.solve import solve_coefficients
    from ssm.geometry.mesh_ops import vertex_normals
    from ssm.geometry.similarity import step_similarity

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
