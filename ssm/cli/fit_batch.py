"""``ssm fit`` over many scans: one scan's fit and outputs, and the loop over the scans,
in this process or in ``--jobs`` worker processes (each with the model loaded once and
its share of the CPU's threads). A scan's failure, expected (an :class:`SSMError`) or
not (a bug), is its outcome and never stops the others."""

from __future__ import annotations

import itertools
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ssm.errors import SSMError
from ssm.fitting.config import FitConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FitOptions:
    """What every scan of one ``ssm fit`` shares (picklable: it goes to the workers)."""

    model_path: Path
    config: FitConfig
    device: str
    units: str = "auto"
    pose: Path | None = None
    maps: tuple[str, ...] = ()
    displacement_maps: tuple[str, ...] = ()
    normal_map: str | None = None
    depth_maps: tuple[str, ...] = ()
    model_landmarks: Path | None = None
    expression_model: str = "auto"
    texture_size: int = 1024


def load_fit_model(model_path: Path, model_landmarks: Path | None = None, expression_model: str = "auto"):
    """(the model to fit with, its expression model or None).

    The model file's, with the named landmarks of ``model_landmarks`` (name,vertex rows
    or points on its mean) added to (or replacing) its own; the file's Basel-style
    expression model unless ``expression_model`` is "off".
    """
    from ssm.io.landmarks import read_model_landmarks
    from ssm.io.model_file import load_expression_model, load_model

    model = load_model(model_path)
    if model_landmarks is not None:
        model = model.with_metadata(landmarks={**model.landmarks,
                                               **read_model_landmarks(model_landmarks, model.mean)})
    expression = None if expression_model == "off" else load_expression_model(model_path, model)
    return model, expression


@dataclass(frozen=True)
class ScanJob:
    """One scan, where its outputs go, and its landmark file (or None)."""

    scan: Path
    dest: Path
    landmarks: str | None = None


@dataclass(frozen=True)
class ScanOutcome:
    """row : (scan, status, the face's median distance to the scan, share of the scan
    within 2.5 mm of the fit, the given landmarks' median distance to the fit, seconds,
    output or error) for the table (:data:`COLUMNS`); status: see :attr:`status`;
    failed : counts towards the exit code; note : a line for the console (a fit that did
    not converge); error : a line for stderr (without the leading ``error: ``)."""

    row: tuple[str, ...]
    failed: bool
    note: str | None = None
    error: str | None = None

    @property
    def status(self) -> str:
        """"ok", "not converged" (fitted and written, but wrong) or "error" (not fitted)."""
        return "error" if self.error else ("not converged" if self.failed else "ok")


def fit_scan(model, job: ScanJob, opts: FitOptions, expression=None,
             stage: Callable[[str], None] | None = None) -> ScanOutcome:
    """Fit one scan and write its outputs (and the fused geometry maps, if any);
    ``stage`` sees the name of each step as it starts (a terminal's progress line)."""
    from ssm.fitting.outputs.write import check_outputs_spare_inputs, write_fit
    from ssm.fitting.fit import fit
    from ssm.fitting.prepare.scan import load_scan

    name = job.scan.name
    try:
        say = stage or (lambda name: None)
        maps = [m.split(":")[0] for m in (*opts.maps, *opts.displacement_maps, *opts.depth_maps)]
        check_outputs_spare_inputs(job.dest, [job.scan, job.landmarks, opts.pose, opts.model_path,
                                              opts.model_landmarks, opts.normal_map and opts.normal_map.split(":")[0],
                                              *maps])
        say("reading the scan")
        sc = load_scan(job.scan)
        res = fit(model, sc, landmarks=job.landmarks, pose=opts.pose, units=opts.units, device=opts.device,
                  config=opts.config, expression_model=expression, progress=say)
        say("writing the outputs")
        info = {"scan": str(job.scan), "model": str(opts.model_path), "landmarks": job.landmarks}
        if expression is not None:
            info["expression_model"] = {"components": expression.n_components, "mode": opts.expression_model}
        uv_layout = None if model.uv is None else (model.uv, model.triangle_uvs)
        write_fit(res, job.dest, sc, info, uv_layout, opts.texture_size)
        if opts.maps or opts.displacement_maps or opts.normal_map or opts.depth_maps:
            _fuse_maps(model, res, job, opts)
        row = (name, "converged" if res.converged else "NOT CONVERGED", *_numbers(res), f"{res.seconds:.2f}",
               str(job.dest))
        if res.converged:
            return ScanOutcome(row, False)
        return ScanOutcome(row, True, note=f"{job.scan}: {res.message} (written to {job.dest}, flagged in fit.json)")
    except SSMError as exc:
        return ScanOutcome(_error_row(name, str(exc)), True, error=str(exc))
    except Exception as exc:  # a bug or a scan nobody foresaw must not stop the others
        what = f"unexpected {type(exc).__name__}: {exc}"
        log.info("where it happened", exc_info=True)
        return ScanOutcome(_error_row(name, what), True,
                           error=f"{job.scan}: {what} (a bug: please report it with the output of --verbose)")


# the table's columns: the face's median distance to the scan, the share of the scan within
# 2.5 mm of the fit, the landmarks' median distance to the fit (how many), seconds, where
COLUMNS = ("scan", "status", "face to scan", "scan explained", "landmarks", "seconds", "output")


def _numbers(res) -> tuple[str, str, str]:
    """The table's face distance, share of the scan explained and landmark error of a fit."""
    face = "-" if res.face_distance_mm is None else f"{res.face_distance_mm:.2f} mm"
    explained = "-" if res.scan_explained is None else f"{res.scan_explained:.0%}"
    kept = [e for n, e in res.landmark_errors_mm.items() if n not in res.rejected_landmarks]
    landmarks = f"{np.median(kept):.2f} mm ({len(kept)})" if kept else "-"
    return face, explained, landmarks


def _error_row(name: str, what: str) -> tuple[str, ...]:
    return (name, "error", "-", "-", "-", "-", what)


def _fuse_maps(model, res, job: ScanJob, opts: FitOptions) -> None:
    from ssm.cli.geometry_maps import apply_normal_map, map_sources
    from ssm.fusion.fuse import GeometrySource, fuse, write_fused

    srcs = [GeometrySource("fit", res.vertices_model, res.stddev_mm ** 2)]
    srcs += map_sources(model, list(opts.maps), list(opts.displacement_maps), res.vertices_model,
                         list(opts.depth_maps))
    fused = fuse(srcs, triangles=model.triangles)
    if opts.normal_map:
        fused = apply_normal_map(model, fused, opts.normal_map)
    write_fused(fused, job.dest, model.triangles)


_WORKER: dict = {}  # the model (and the thread limit it keeps) of a worker process


def _init_worker(opts: FitOptions, threads: int, verbose: bool) -> None:
    """A worker's start: its share of the threads, logging, and the model, loaded once."""
    import torch
    from threadpoolctl import threadpool_limits

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(threads)
    _WORKER["limits"] = threadpool_limits(limits=threads)  # BLAS / OpenMP, held for the worker's life
    _WORKER["model"], _WORKER["expression"] = load_fit_model(opts.model_path, opts.model_landmarks,
                                                             opts.expression_model)


def _fit_in_worker(job: ScanJob, opts: FitOptions) -> ScanOutcome:
    return fit_scan(_WORKER["model"], job, opts, _WORKER["expression"])


def fit_scans(model, jobs: list[ScanJob], opts: FitOptions, n_jobs: int, progress: Callable[[str, int, int], None],
              report: Callable[[ScanOutcome], None], verbose: bool = False, expression=None) -> list[ScanOutcome]:
    """Fit every scan; outcomes in the order of ``jobs``. ``report`` sees each outcome as
    it comes (for its note or error line); ``progress(task, done, total)`` the count.
    ``model`` and ``expression`` (its expression model or None) are :func:`load_fit_model`'s.

    n_jobs > 1 fits that many scans at once in worker processes ("spawn": a fork of a
    process whose OpenMP threads have run can hang), each with ``cpus / n_jobs``
    threads and the model loaded once; a worker that dies (out of memory) fails the
    scans it had and those still waiting, with a line that says so.
    """
    total = len(jobs)
    if n_jobs <= 1 or total <= 1:
        out = []
        for i, job in enumerate(jobs):
            progress("Fitting scans", i, total)
            steps = itertools.count(1)

            def stage(name: str, scan=job.scan.name) -> None:
                progress("Stage", next(steps), None, f"{scan}: {name}")

            out.append(fit_scan(model, job, opts, expression, stage))
            report(out[-1])
        progress("Fitting scans", total, total)
        return out
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    n_jobs = min(n_jobs, total)
    threads = max(1, (os.cpu_count() or 1) // n_jobs)
    results: list[ScanOutcome | None] = [None] * total
    progress("Fitting scans", 0, total)
    with ProcessPoolExecutor(n_jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
                             initargs=(opts, threads, verbose)) as pool:
        futures = {pool.submit(_fit_in_worker, job, opts): i for i, job in enumerate(jobs)}
        for done, fut in enumerate(as_completed(futures), 1):
            i = futures[fut]
            try:
                results[i] = fut.result()
            except BrokenProcessPool:
                msg = (f"{jobs[i].scan}: the worker process fitting it died (out of memory?); "
                       "fit it again with fewer --jobs")
                results[i] = ScanOutcome(_error_row(jobs[i].scan.name, "worker died"), True, error=msg)
            report(results[i])
            progress("Fitting scans", done, total)
    return results
