import json
import subprocess
import sys

import numpy as np
from typer.testing import CliRunner

from ssm.cli.app import app

ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]
runner = CliRunner()


def test_demo_runs_end_to_end(tmp_path):
    res = runner.invoke(app, ["demo", "--out", str(tmp_path / "demo"), "--model-out", str(tmp_path / "m.h5"),
                              "--subjects", "60"])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert summary["generalisation_v2v_mm"] < 1.0
    assert summary["subspace_angle_to_truth_rad"] < 0.2
    assert (tmp_path / "demo" / "evaluation" / "evaluation.png").exists()


def test_import_train_evaluate_via_cli(tmp_path, generator):
    from ssm.io.meshes import write_mesh
    from ssm.synthetic.heads import sample_heads

    v, _ = sample_heads(generator, 25, seed=5)
    for i, x in enumerate(v):
        write_mesh(tmp_path / f"h{i:02d}.obj", x, generator.triangles)
    corpus = tmp_path / "c.h5"
    res = runner.invoke(app, ["corpus", "import", *[str(p) for p in sorted(tmp_path.glob("*.obj"))],
                              "--out", str(corpus)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["corpus", "info", str(corpus), "--json"])
    assert json.loads(res.output)["n_subjects"] == 25
    model = tmp_path / "m.h5"
    res = runner.invoke(app, ["train", str(corpus), "--out", str(model), "--variance", "0.99",
                              "--prune", "0.04", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "pruned 1" in res.output
    res = runner.invoke(app, ["evaluate", str(model), str(corpus), "--folds", "2", "--samples", "5",
                              "--out", str(tmp_path / "ev")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "ev" / "evaluation.json").read_text())["generalisation_mode"] == "2-fold"
    res = runner.invoke(app, ["info", str(model), "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    from ssm.io.model_file import load_model

    m = load_model(model)
    assert info["components"] == m.n_components and info["vertices"] == m.n_vertices
    assert info["landmarks"] == dict(m.landmarks) and info["expression_components"] is None
    np.testing.assert_allclose(info["all_components_rms"] ** 2 * m.n_vertices, m.variances.sum(), rtol=1e-9)
    res = runner.invoke(app, ["info", str(model)])
    assert res.exit_code == 0 and f"components  {m.n_components}" in res.output, res.output


def test_cli_errors_are_one_line_with_exit_code(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "cli.py"), "train", str(tmp_path / "none.h5")],
                         capture_output=True, text=True)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "none.h5: no such corpus" in lines[0]
    out = subprocess.run([sys.executable, str(ROOT / "cli.py"), "train", str(tmp_path / "none.h5"),
                          "--components", "3", "--variance", "0.9"], capture_output=True, text=True)
    assert out.returncode == 2 and "not both" in out.stderr
    out = subprocess.run([sys.executable, str(ROOT / "cli.py"), "fit", str(tmp_path / "m.h5"), str(tmp_path / "s.ply"),
                          "--out", str(tmp_path / "o"), "--expression-field", "1"], capture_output=True, text=True)
    assert out.returncode == 2 and "--expression-field must be auto, on or off" in out.stderr
    out = subprocess.run([sys.executable, str(ROOT / "cli.py"), "fit", str(tmp_path / "m.h5"), str(tmp_path / "s.ply"),
                          "--out", str(tmp_path / "o"), "--texture", "-1"], capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.strip() == "error: --texture must be 0 (none) to 8192 rows, got -1"
    assert not (tmp_path / "o").exists()  # refused before anything is read or written
    # a device that cannot be had fails once, before any model or scan is read
    out = subprocess.run([sys.executable, str(ROOT / "cli.py"), "fit", str(tmp_path / "m.h5"), str(tmp_path / "s.ply"),
                          "--out", str(tmp_path / "o"), "--device", "gpu"], capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.strip() == "error: unknown device 'gpu' (use auto, cpu or cuda)"


def test_cli_help_lists_commands():
    out = subprocess.run([sys.executable, str(ROOT / "cli.py"), "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for cmd in ("corpus", "train", "evaluate", "fit", "fuse", "info", "demo"):
        assert cmd in out.stdout
