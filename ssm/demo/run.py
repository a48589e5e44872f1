"""The built-in end-to-end example (``ssm demo``), needing no external data.

1. Draw registered synthetic heads (known 14-parameter linear model, random poses) and
   write them as PLY files, with a template-landmark CSV, as a user's registrations.
2. Import them into a corpus, train a model, save it.
3. Evaluate it on a held-out corpus and check it against the generator's truth.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ssm.synthetic.heads import make_generator, sample_heads


def largest_angle_outside(truth: np.ndarray, estimate: np.ndarray) -> float:
    """Largest principal angle (rad) between span(estimate) and its projection on span(truth).

    truth : (D, a), estimate : (D, b) with b <= a; 0 when the estimate lies in the truth.
    """
    qa, _ = np.linalg.qr(truth)
    qb, _ = np.linalg.qr(estimate)
    s = np.linalg.svd(qa.T @ qb, compute_uv=False)
    return float(np.arccos(np.clip(s.min(), -1, 1)))


def run_demo(out: Path, model_out: Path, n_subjects: int = 150, n_test: int = 30, seed: int = 0,
             console=None) -> dict:
    """Run the demo; returns a summary dict (also written to ``out/summary.json``)."""
    import json

    from ssm.io.atomic import atomic_write
    from ssm.io.corpus import Corpus, write_corpus
    from ssm.io.corpus_import import import_meshes
    from ssm.io.meshes import write_mesh
    from ssm.io.model_file import load_model, save_model
    from ssm.training.evaluate import evaluate
    from ssm.training.trainer import ModelTrainer

    say = console.print if console is not None else print
    out = Path(out)
    t0 = time.perf_counter()
    gen = make_generator()
    meshes = out / "registered_meshes"
    meshes.mkdir(parents=True, exist_ok=True)
    verts, _ = sample_heads(gen, n_subjects, seed=seed, noise_mm=0.05)
    for i, v in enumerate(verts):
        write_mesh(meshes / f"head_{i:04d}.ply", v, gen.triangles)
    lm_csv = out / "template_landmarks.csv"
    lm_csv.write_text("name,vertex\n" + "".join(f"{k},{v}\n" for k, v in gen.landmarks.items()))
    say(f"1. wrote {n_subjects} registered synthetic heads ({gen.n_vertices} vertices) to {meshes}/")

    corpus_path = out / "corpus.h5"
    rep = import_meshes([meshes], corpus_path, landmarks=lm_csv, overwrite=True)
    test_path = out / "test_corpus.h5"
    test_v, _ = sample_heads(gen, n_test, seed=seed + 1, noise_mm=0.05)
    write_corpus(test_path, test_v, gen.triangles, landmarks=gen.landmarks)
    say(f"2. imported {rep.n_imported} meshes into {corpus_path} (+ {n_test} held-out in {test_path})")

    trainer = ModelTrainer(0.9995, align="similarity", device="cpu").fit(corpus_path)
    model = trainer.model_
    save_model(model, model_out)
    model = load_model(model_out)
    say(f"3. trained {model_out}: {model.n_components} components keep 99.95% of the variance "
        f"(the generator has {gen.fields.shape[0]} parameters; pose and scale are removed by Procrustes)")

    with Corpus(corpus_path) as c, Corpus(test_path) as t:
        ev = evaluate(model, c, t, n_samples=50, seed=seed)
    (out / "evaluation").mkdir(exist_ok=True)
    with atomic_write(out / "evaluation" / "evaluation.json") as tmp:
        tmp.write_text(ev.to_json())
    ev.plot(out / "evaluation" / "evaluation.png")
    if console is not None:
        console.print(ev.table())
    # The generator's span, less the similarity motions that Procrustes removes, must
    # contain the model's components.
    from ssm.geometry.similarity import fit_similarity, similarity_tangent_basis

    _, rot, _ = fit_similarity(gen.mean, model.mean)  # the model lives in subject 0's pose
    truth = (gen.fields @ rot.T).reshape(gen.fields.shape[0], -1).T
    tangent = similarity_tangent_basis(gen.mean @ rot.T)
    truth = truth - tangent @ (tangent.T @ truth)
    angle = largest_angle_outside(truth, model.basis)
    summary = {
        "n_subjects": n_subjects, "n_components": model.n_components,
        "variance_explained": float(model.variance_fraction()[-1]),
        "generalisation_v2v_mm": ev.generalisation[-1].v2v_mean,
        "generalisation_v2s_mm": ev.generalisation[-1].v2s_mean,
        "specificity_v2v_mm": ev.specificity[-1].v2v_mean,
        "subspace_angle_to_truth_rad": angle,
        "seconds": round(time.perf_counter() - t0, 2),
        "model": str(model_out),
    }
    say(f"4. held-out generalisation {summary['generalisation_v2v_mm']:.3f} mm (v2v), "
        f"{summary['generalisation_v2s_mm']:.3f} mm (v2s); wrote {out / 'evaluation'}/")
    say(f"   largest angle between the model's {model.n_components} components and the generator's "
        f"span: {angle:.4f} rad")
    summary.update(_fit_demo(model, gen, out, seed, say))
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    with atomic_write(out / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
    say(f"done in {time.perf_counter() - t0:.1f} s; load the model with: "
        f"import ssm; m = ssm.load_model({str(model_out)!r})")
    return summary


def _fit_demo(model, gen, out: Path, seed: int, say) -> dict:
    """5. A held-out head -> raw-looking scan (new topology, noise, holes, outliers, pose,
    centimetres) with 7 noisy landmarks -> fit -> error against the truth."""
    from ssm.synthetic.raw_scans import make_raw_scan
    from ssm.fitting.outputs.write import write_fit
    from ssm.fitting.fit import fit
    from ssm.fitting.prepare.scan import scan_from_arrays
    from ssm.io.meshes import write_mesh

    rng = np.random.default_rng(seed + 2)
    truth = gen.heads(rng.standard_normal(gen.fields.shape[0]))[0]
    raw = make_raw_scan(truth, gen.triangles, views="frontal", spacing_mm=1.0, noise_mm=0.2, units="cm",
                        seed=seed + 3)
    names = ["right_eye_outer", "right_eye_inner", "left_eye_inner", "left_eye_outer", "nose_tip",
             "right_mouth_corner", "left_mouth_corner"]
    lm_true = truth[[gen.landmarks[n] for n in names]]
    lm_scan = raw.to_scan.apply(lm_true + rng.normal(0, 1.0, lm_true.shape))
    scan_dir = out / "raw_scan"
    scan_dir.mkdir(parents=True, exist_ok=True)
    write_mesh(scan_dir / "scan.ply", raw.vertices, raw.faces)
    (scan_dir / "landmarks.csv").write_text("name,x,y,z\n" + "".join(
        f"{n},{p[0]:.5f},{p[1]:.5f},{p[2]:.5f}\n" for n, p in zip(names, lm_scan)))
    say(f"5. made a raw scan of a held-out head ({len(raw.vertices)} points, new topology, 0.2 mm noise, "
        f"holes, 1% outliers, random pose, in cm) with 7 noisy landmarks: {scan_dir}/")
    sc = scan_from_arrays(raw.vertices, raw.faces, path=str(scan_dir / "scan.ply"))
    res = fit(model, sc, landmarks=scan_dir / "landmarks.csv")
    files = write_fit(res, out / "fit", sc, {"scan": str(scan_dir / "scan.ply")})
    est = raw.to_scan.inverse().apply(res.vertices)
    face = gen.regions["face"]
    err = np.linalg.norm(est - truth, axis=1)
    seen = res.distance_mm < 2.0
    say(f"6. fitted in {res.seconds:.2f} s: error against the truth {err[face].mean():.3f} mm on the face, "
        f"{err[seen].mean():.3f} mm where the scan saw the head; units estimated as {res.units}; "
        f"wrote {out / 'fit'}/ ({', '.join(sorted(p.name for p in files.values()))})")
    return {"fit_face_error_mm": float(err[face].mean()), "fit_seen_error_mm": float(err[seen].mean()),
            "fit_seconds": res.seconds, "fit_units": res.units, "fit_converged": res.converged}
