"""The ``ssm`` command line: corpus, train, evaluate, fit, demo."""

from __future__ import annotations

import json
import logging
import sys

import numpy as np
from pathlib import Path
from typing import List, Optional

import typer

from ssm.errors import SSMError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="3D head statistical shape models: build corpora, train, evaluate and fit.")
corpus_app = typer.Typer(no_args_is_help=True, help="Registered-scan corpora (HDF5).")
app.add_typer(corpus_app, name="corpus")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")


def _console():
    from rich.console import Console

    return Console()


@corpus_app.command("import")
def corpus_import(
    inputs: List[Path] = typer.Argument(..., help="Registered meshes (PLY/OBJ/OFF/STL/GLB) or folders of them."),
    out: Path = typer.Option(..., "--out", "-o", help="Corpus file to write (.h5)."),
    landmarks: Optional[Path] = typer.Option(None, help="Template landmarks: CSV 'name,vertex' or LJSON/points."),
    units: str = typer.Option("mm", help="Units of the input meshes (converted to mm)."),
    template: Optional[Path] = typer.Option(None, help="Mesh defining the topology (default: first input)."),
    nan_as_missing: bool = typer.Option(False, help="NaN vertices are unregistered parts (stored as masks)."),
    overwrite: bool = typer.Option(False, help="Replace an existing corpus."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
):
    """Import registered meshes into a corpus, validating every file (resumable)."""
    from ssm.cli.progress import progress_bars
    from ssm.io.corpus_import import import_meshes

    _setup_logging(verbose)
    with progress_bars() as bar:
        rep = import_meshes(inputs, out, landmarks=landmarks, units=units, template=template,
                            overwrite=overwrite, nan_as_missing=nan_as_missing,
                            progress=lambda d, t, name: bar("Importing meshes", d, t))
    _console().print(f"wrote {rep.path}: {rep.n_imported} subjects imported"
                     + (f", {rep.n_skipped_existing} already there (resumed)" if rep.n_skipped_existing else ""))


@corpus_app.command("info")
def corpus_info(corpus: Path = typer.Argument(..., help="Corpus file."),
                as_json: bool = typer.Option(False, "--json", help="Print JSON.")):
    """Summarise a corpus: subjects, vertices, units, landmarks, masks."""
    from dataclasses import asdict

    from ssm.io.corpus import Corpus

    with Corpus(corpus, allow_incomplete=True) as c:
        info = c.info()
    if as_json:
        typer.echo(json.dumps(asdict(info), indent=2, default=str))
        return
    con = _console()
    con.print(f"[bold]{info.path}[/bold]  (format v{info.format_version}{'' if info.complete else ', INCOMPLETE'})")
    con.print(f"  subjects   {info.n_subjects}")
    con.print(f"  vertices   {info.n_vertices}   triangles {info.n_triangles}")
    con.print(f"  units      {info.units}   stored as {info.dtype}")
    con.print(f"  masks      {'yes' if info.has_masks else 'no'}")
    con.print(f"  landmarks  {len(info.landmarks)}" + (f": {', '.join(list(info.landmarks)[:12])}"
                                                        + (' ...' if len(info.landmarks) > 12 else '')
                                                        if info.landmarks else ""))
    if info.regions:
        con.print(f"  regions    {', '.join(f'{k} ({v})' for k, v in info.regions.items())}")


@app.command()
def info(model: Optional[Path] = typer.Argument(None, help="Model file (.h5): ours, statismo / scalismo, or "
                                                           "Basel-style; the default model when left out."),
         as_json: bool = typer.Option(False, "--json", help="Print JSON.")):
    """Summarise a model file: vertices, components, variance, units, landmarks, UVs, expressions."""
    from ssm.io.model_file import default_model_path, load_blendshapes, load_expression_model, load_model

    model = default_model_path() if model is None else model
    m = load_model(model)
    e = load_expression_model(model, m)
    shapes = load_blendshapes(model)
    var = np.asarray(m.variances, np.float64)
    total = float(var.sum())
    summary = {
        "path": str(model), "vertices": m.n_vertices, "triangles": 0 if m.triangles is None else len(m.triangles),
        "components": m.n_components, "units": m.units, "total_variance": total,
        "components_for_95_percent": int(np.searchsorted(np.cumsum(var) / total, 0.95) + 1) if total > 0 else 0,
        # at one standard deviation: the RMS over the vertices of the first component's move, and of all
        "first_component_rms": float(np.sqrt(var[0] / m.n_vertices)) if len(var) else 0.0,
        "all_components_rms": float(np.sqrt(total / m.n_vertices)), "noise_variance": float(m.noise_variance),
        "landmarks": dict(m.landmarks), "regions": {k: int(len(v)) for k, v in m.regions.items()},
        "uv": m.uv is not None, "expression_components": None if e is None else e.n_components,
        "blendshapes": None if shapes is None else list(shapes.names),
        "precomputed": sorted(m.precomputed),
        "provenance": dict(m.provenance),
    }
    if as_json:
        typer.echo(json.dumps(summary, indent=2, default=str))
        return
    con = _console()
    u = m.units
    con.print(f"[bold]{model}[/bold]")
    con.print(f"  vertices    {summary['vertices']}   triangles {summary['triangles']}   units {u}"
              + (" (assumed: the file gives none)" if "units_assumed" in m.provenance else ""))
    con.print(f"  components  {m.n_components}   ({summary['components_for_95_percent']} for 95 % of the variance; "
              f"at one sd the first moves the vertices {summary['first_component_rms']:.3g} {u} RMS, all "
              f"{summary['all_components_rms']:.3g} {u})")
    names = list(m.landmarks)
    con.print(f"  landmarks   {len(names)}" + (f": {', '.join(names[:10])}" + (" ..." if len(names) > 10 else "")
                                               if names else " (name them for 'ssm fit' with --model-landmarks)"))
    if m.regions:
        con.print(f"  regions     {', '.join(f'{k} ({n})' for k, n in summary['regions'].items())}")
    con.print(f"  UV layout   {'yes' if m.uv is not None else 'no'}")
    if shapes is not None:
        con.print(f"  blendshapes {len(shapes.names)} named ({', '.join(shapes.names[:6])} ...; weights "
                  f"{shapes.value_range[0]:g} to {shapes.value_range[1]:g}; 'ssm fit' fits them and reports "
                  f"their weights)")
    elif e is not None:
        con.print(f"  expressions {e.n_components} components (Basel-style /expression; 'ssm fit' uses them)")
    if m.precomputed:
        con.print(f"  precomputed {', '.join(sorted({k.split('_')[0] for k in m.precomputed}))} (no first-use cost)")
    source = m.provenance.get("builder") or m.provenance.get("method") or m.provenance.get("source_file")
    if source:
        con.print(f"  built by    {source}")
    if m.provenance.get("source"):
        con.print(f"  source      {m.provenance['source']}")


@app.command()
def train(
    corpus: Path = typer.Argument(..., help="Corpus file (.h5) from 'ssm corpus import'."),
    out: Path = typer.Option(Path("models/model.h5"), "--out", "-o", help="Model file to write."),
    components: Optional[int] = typer.Option(None, help="Number of components K."),
    variance: Optional[float] = typer.Option(None, help="Keep this fraction of variance, e.g. 0.995."),
    align: str = typer.Option("similarity", help="Procrustes: similarity | rigid | none."),
    align_weights: Optional[str] = typer.Option(None, help="landmarks | region:NAME (default uniform)."),
    prune: float = typer.Option(0.0, help="Fraction of outlying subjects to drop (Mahalanobis), e.g. 0.05."),
    expressions: Optional[Path] = typer.Option(None, help="Corpus of expression scans of the same subjects "
                                                          "(ids '<neutral id>_<expression>'): also train an "
                                                          "expression model, saved beside the identity's."),
    expression_components: Optional[int] = typer.Option(None, help="Components of the expression model "
                                                                    "(default: 99.9 % of its variance)."),
    pca: str = typer.Option("auto", help="auto | exact | streamed (randomized SVD over chunks)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
    seed: int = typer.Option(0, help="Seed of the randomized SVD."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
):
    """Train a PCA shape model (Procrustes + PCA [+ pruning]) and save it."""
    from ssm.cli.progress import progress_bars
    from ssm.io.model_file import save_model
    from ssm.training.trainer import ModelTrainer

    _setup_logging(verbose)
    if components is not None and variance is not None:
        raise SSMError("give --components or --variance, not both")
    if variance is not None and not 0 < variance < 1:
        raise SSMError(f"--variance must be in (0, 1), got {variance}")
    k = components if components is not None else variance
    with progress_bars() as bar:
        trainer = ModelTrainer(k, align=align, align_weights=align_weights, prune=prune, pca=pca,
                               device=device, seed=seed, progress=bar).fit(corpus)
    model = trainer.model_
    expression = None
    if expressions is not None:
        expression = _train_expressions(model, corpus, expressions, expression_components)
    save_model(model, out, expression=expression)
    frac = model.variance_fraction()
    con = _console()
    con.print(f"wrote {out}: {model.n_components} components from {model.provenance['n_subjects']} subjects, "
              f"{frac[-1] * 100:.2f}% of variance, {model.provenance['pca_method']} PCA on "
              f"{model.provenance['device']}, {model.provenance['train_seconds']:.1f} s")
    if expression is not None:
        con.print(f"  and an expression model: {expression.n_components} components from "
                  f"{expression.provenance['n_expression_scans']} expression scans of "
                  f"{expression.provenance['n_subjects']} subjects")
    if trainer.pruned_:
        con.print(f"pruned {len(trainer.pruned_)}: " + ", ".join(p.subject_id for p in trainer.pruned_[:10])
                  + (" ..." if len(trainer.pruned_) > 10 else ""))


def _train_expressions(model, neutral_path: Path, expressions_path: Path, n_components: int | None):
    """The expression model from a corpus of expression scans paired with the neutral corpus."""
    from ssm.io.corpus import Corpus
    from ssm.training.expressions import pair_expressions, train_expression_model

    with Corpus(neutral_path) as n, Corpus(expressions_path) as e:
        if e.n_vertices != n.n_vertices:
            raise SSMError(f"{expressions_path}: {e.n_vertices} vertices per scan but the neutral corpus has "
                           f"{n.n_vertices} (register the expression scans to the same template)")
        pairs = pair_expressions(n.ids, e.ids)
        used = sorted({i for _, i in pairs})  # only the neutral scans that have expressions are read
        row = {i: r for r, i in enumerate(used)}
        return train_expression_model(model, n.read(np.array(used)), e.read(), [(j, row[i]) for j, i in pairs],
                                      0.999 if n_components is None else n_components)


@app.command()
def evaluate(
    model: Path = typer.Argument(..., help="Model file."),
    corpus: Path = typer.Argument(..., help="Training corpus (specificity; k-fold generalisation)."),
    test: Optional[Path] = typer.Option(None, help="Held-out corpus for generalisation (else k-fold)."),
    folds: int = typer.Option(5, help="Folds for cross-validated generalisation."),
    samples: int = typer.Option(100, help="Random samples for specificity."),
    seed: int = typer.Option(0),
    out: Path = typer.Option(Path("evaluation"), "--out", "-o", help="Folder for evaluation.json and .png."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
):
    """Compactness, generalisation and specificity (v2v and v2s), as JSON and PNG."""
    from ssm.cli.progress import progress_bars
    from ssm.io.corpus import Corpus
    from ssm.io.model_file import load_model

    _setup_logging(verbose)
    m = load_model(model)
    with Corpus(corpus) as c, progress_bars() as bar:
        t = Corpus(test) if test is not None else None
        try:
            _check_topology(m, c)
            if t is not None:
                _check_topology(m, t)
            from ssm.training.evaluate import evaluate as run_eval

            ev = run_eval(m, c, t, folds=folds, n_samples=samples, seed=seed, progress=bar)
        finally:
            if t is not None:
                t.close()
    _write_evaluation(ev, out)
    _console().print(ev.table())
    _console().print(f"wrote {out / 'evaluation.json'} and {out / 'evaluation.png'}")


def _check_topology(model, corpus) -> None:
    if corpus.n_vertices != model.n_vertices:
        raise SSMError(f"{corpus.path}: {corpus.n_vertices} vertices per subject but the model has "
                       f"{model.n_vertices} (use a corpus in the model's topology)")


def _write_evaluation(ev, out: Path) -> None:
    from ssm.io.atomic import atomic_write

    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / "evaluation.json") as tmp:
        tmp.write_text(ev.to_json())
    ev.plot(out / "evaluation.png")


MODEL_SUFFIXES = (".h5", ".hdf5", ".hdf")
EXIT_ERROR = 2  # bad input: a file, an option, or a scan that could not be fitted
EXIT_NOT_CONVERGED = 3  # every scan fitted and written, but at least one fit is wrong (fit.json says why)


def _model_and_scans(paths: list[Path]) -> tuple[Path, list[Path]]:
    """(the model file, the scans) of ``ssm fit``'s arguments: a first argument that is an
    HDF5 file names the model; otherwise the default model fits them all."""
    from ssm.io.model_file import default_model_path

    if paths and paths[0].suffix.lower() in MODEL_SUFFIXES:
        model, scans = paths[0], list(paths[1:])
    else:
        model, scans = default_model_path(), list(paths)
    if not scans:
        raise SSMError(f"no scan to fit after the model {model} (ssm fit [MODEL.h5] SCAN... --out DIR)")
    return model, scans


@app.command()
def fit(
    paths: List[Path] = typer.Argument(..., metavar="[MODEL.h5] SCAN...",
                                       help="A model file (.h5; without one, the default ICT head model), then "
                                            "raw scans: meshes (PLY/OBJ/STL/OFF/GLB) or point clouds (XYZ/PTS/PCD)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (one sub-folder per scan when several)."),
    landmarks: Optional[str] = typer.Option(None, help="Landmark file (CSV/LJSON/scalismo JSON); with several "
                                                       "scans use {stem}, e.g. 'lm/{stem}.csv'."),
    pose: Optional[Path] = typer.Option(None, help="Initial model->scan pose: a text file with a 4x4 matrix."),
    model_landmarks: Optional[Path] = typer.Option(None, help="The model's landmarks, for a model file without "
                                                              "them (statismo / scalismo): name,vertex CSV rows "
                                                              "or named points on its mean (model frame)."),
    expression_model: str = typer.Option("auto", help="When the model file has named blendshapes or a "
                                                      "Basel-style expression model (/expression): auto (fit "
                                                      "the expression when a quick probe finds the face is not "
                                                      "neutral) | on | off."),
    units: str = typer.Option("auto", help="Scan units: auto | mm | cm | m | in."),
    device: str = typer.Option("auto", help="auto | cpu | cuda: where the closest-point searches and the "
                                            "smoothing run (auto: a CUDA GPU when torch sees one)."),
    nicp: bool = typer.Option(True, help="Run the non-rigid ICP stage for detail outside the model."),
    occlusion: bool = typer.Option(True, help="Find where the scan is not skin (hair, a cap) and fit "
                                              "without it; fit.ply marks those vertices 'occluded'."),
    landmark_warp: bool = typer.Option(True, help="With 20+ landmarks, follow them where they agree the model "
                                                  "fit is off (an expression an identity model does not span)."),
    mirror_field: bool = typer.Option(True, help="When the deformation field the fit finds is mostly symmetric "
                                                 "(a smile on both sides), refit it with its two sides correlated."),
    expression_field: str = typer.Option("auto", help="With fewer than 20 landmarks, a smooth deformation field "
                                                      "over the whole model for what an identity model does not "
                                                      "span (an expression): auto (when a quick probe finds the "
                                                      "identity bending) | on (scans known to show one) | off."),
    preset: str = typer.Option("accurate", help="accurate | fast (about 1.3x faster with landmarks, "
                                                "slightly less accurate)."),
    map_: List[str] = typer.Option([], "--map", help="Also fuse a UV position map: POS.npy:VAR.npy (fused.ply)."),
    displacement_map: List[str] = typer.Option([], help="Also fuse a displacement map: D.npy:VAR.npy."),
    normal_map: Optional[str] = typer.Option(None, help="Also use a normal map: N.npy:VAR.npy (rad^2)."),
    depth_map: List[str] = typer.Option([], help="Also fuse a depth map: D.npy:VAR.npy:K.txt:POSE.txt."),
    texture: int = typer.Option(1024, help="For a scan with colours and a model with a UV layout: the rows "
                                           "of the texture baked from the scan (fit_texture.png, used by "
                                           "fit.obj); 0 for none. The meshes get vertex colours either way."),
    jobs: int = typer.Option(1, "--jobs", "-j", help="Scans fitted at once, each in its own process with "
                                                     "its share of the CPU's threads (many scans, many cores)."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
):
    """Fit the model to raw scans: the model's topology on each scan.

    Writes fit.ply, fit_model_frame.ply, fit.json, report.png and landmarks.csv / .json.

    A model with a UV layout: fit.obj, fit_model_frame.obj; a scan with colours: fit_texture.png.

    With geometry maps, also fused.ply / fused.json."""
    from ssm.cli.fit_batch import COLUMNS, FitOptions, ScanJob, fit_scans, load_fit_model
    from ssm.cli.progress import progress_bars
    from ssm.device import device_name
    from ssm.fitting.config import FitConfig

    _setup_logging(verbose)
    if expression_field not in ("auto", "on", "off"):
        raise SSMError(f"--expression-field must be auto, on or off, got {expression_field!r}")
    if expression_model not in ("auto", "on", "off"):
        raise SSMError(f"--expression-model must be auto, on or off, got {expression_model!r}")
    if jobs < 1:
        raise SSMError(f"--jobs must be 1 or more, got {jobs}")
    if not 0 <= texture <= 8192:
        raise SSMError(f"--texture must be 0 (none) to 8192 rows, got {texture}")
    model, scans = _model_and_scans(paths)
    device = device_name(device)  # a device that cannot be had fails once, before any scan
    m, expression = load_fit_model(model, model_landmarks, expression_model)
    cfg = FitConfig.preset(preset)
    gates = {}  # "on": no probe, always fitted
    if expression_field == "on":
        gates["expression_field_gate_mm"] = 0.0
    if expression_model == "on":
        gates["expression_model_gate_mm"] = 0.0
    cfg = cfg.replace(nicp=nicp, landmark_warp=landmark_warp, occlusion=occlusion, mirror_field=mirror_field,
                      expression_field_mm=0.0 if expression_field == "off" else cfg.refine.expression_field_mm,
                      **gates)
    if landmarks and len(scans) > 1 and "{stem}" not in landmarks:
        raise SSMError("with several scans, --landmarks must contain {stem} (e.g. 'lm/{stem}.csv')")
    con = _console()
    stems = [p.stem for p in scans]
    todo = []
    for scan_path in scans:
        sub = scan_path.stem if stems.count(scan_path.stem) == 1 else scan_path.name.replace(".", "_")
        todo.append(ScanJob(scan_path, out if len(scans) == 1 else out / sub,
                            landmarks.replace("{stem}", scan_path.stem) if landmarks else None))
    opts = FitOptions(model, cfg, device, units, pose, tuple(map_), tuple(displacement_map), normal_map,
                      tuple(depth_map), model_landmarks, expression_model, texture)

    def report(outcome) -> None:
        if outcome.note:
            con.print(f"[yellow]{outcome.note}")
        if outcome.error:
            typer.echo(f"error: {outcome.error}", err=True)

    with progress_bars() as bar:
        outcomes = fit_scans(m, todo, opts, jobs, bar, report, verbose, expression)
    rows = [o.row for o in outcomes]

    from rich.table import Table

    table = Table(title=f"Fits with {model.name}")
    for col in COLUMNS:
        table.add_column(col, no_wrap=col in ("status", "face to scan", "landmarks"), overflow="fold")
    for r in rows:
        table.add_row(*r)
    con.print(table)
    statuses = {o.status for o in outcomes}
    if "error" in statuses:
        raise typer.Exit(EXIT_ERROR)
    if "not converged" in statuses:
        raise typer.Exit(EXIT_NOT_CONVERGED)


@app.command()
def fuse(
    fits: List[Path] = typer.Argument(None, help="Folders written by 'ssm fit' (their fit_model_frame.ply)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (fused.ply, fused.json)."),
    map_: List[str] = typer.Option([], "--map", help="Position map and its variance map: POS.npy:VAR.npy "
                                                    "(UV, model frame, mm / mm^2)."),
    displacement_map: List[str] = typer.Option([], help="Displacement map along the normals: D.npy:VAR.npy."),
    normal_map: Optional[str] = typer.Option(None, help="Normal map (unit xyz, model frame) and its angular "
                                                        "variance map (rad^2): N.npy:VAR.npy."),
    depth_map: List[str] = typer.Option([], help="Depth map from a calibrated camera: D.npy:VAR.npy:K.txt:POSE.txt "
                                                 "(mm, mm^2, 3x3 intrinsics, 4x4 camera-to-model)."),
    model: Optional[Path] = typer.Option(None, help="Model file (for maps; default: the one in fit.json)."),
    smooth: int = typer.Option(3, help="Taubin iterations where the fused result is uncertain (0: off)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda (smoothing)."),
):
    """Fuse fits and geometry maps by their uncertainty (robust to a bad source)."""
    import dataclasses
    import json as _json

    from ssm.cli.geometry_maps import apply_normal_map, map_sources
    from ssm.fusion.fuse import fuse as run_fuse, source_from_fit, write_fused
    from ssm.geometry.torch_ops import smooth_uncertain
    from ssm.io.model_file import load_model

    fits = fits or []
    sources = [source_from_fit(f) for f in fits]
    model_path = model
    if model_path is None and fits and (fits[0] / "fit.json").exists():
        model_path = Path(_json.loads((fits[0] / "fit.json").read_text()).get("model") or "") or None
    m = load_model(model_path) if model_path else None
    if map_ or displacement_map or normal_map or depth_map:
        if m is None:
            raise SSMError("geometry maps need the model: pass --model")
        base = sources[0].vertices if sources else m.mean
        sources += map_sources(m, map_, displacement_map, base, depth_map)
    if len(sources) < 1:
        raise SSMError("nothing to fuse: give fit folders and/or --map files")
    tri = m.triangles if m is not None else _fit_triangles(fits[0])
    res = run_fuse(sources, triangles=tri)
    if normal_map:
        res = apply_normal_map(m, res, normal_map)
    if smooth > 0 and tri is not None:
        pins = None if m is None else m.landmark_indices
        v = smooth_uncertain(res.vertices, tri, res.stddev_mm, smooth, pins, device)
        res = dataclasses.replace(res, vertices=v)
    write_fused(res, out, tri)
    con = _console()
    for src in res.summary()["sources"]:
        con.print(f"{src['name']}: variance inflation {src['variance_inflation']:.2f}, "
                  f"mean weight share {src['mean_weight_share']:.2f}")
    con.print(f"wrote {out / 'fused.ply'} and {out / 'fused.json'}")


def _fit_triangles(folder: Path):
    import trimesh

    return np.asarray(trimesh.load(folder / "fit_model_frame.ply", process=False).faces)


@app.command()
def demo(
    out: Path = typer.Option(Path("demo_out"), "--out", "-o", help="Folder for the demo's files."),
    model_out: Path = typer.Option(Path("models/demo_head.h5"), help="Where to save the demo model."),
    subjects: int = typer.Option(150, help="Training subjects to generate."),
    seed: int = typer.Option(0),
):
    """Built-in example: synthetic heads -> meshes -> corpus -> model -> evaluation."""
    from ssm.demo.run import run_demo

    run_demo(out, model_out, n_subjects=subjects, seed=seed, console=_console())


def main() -> None:
    """Console-script entry: run the app, turning user errors into one-line messages."""
    try:
        app()
    except SSMError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_ERROR)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
