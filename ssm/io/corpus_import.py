"""Build a corpus from registered mesh files (one topology), validating every file.

The import writes to ``<out stem>.partial.h5`` beside the output and renames it to the
output only when every file was imported, so a failed import never leaves a corpus that
looks complete. Re-running the same command resumes: files already in the partial file
are skipped.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ssm.errors import InputFileError, SSMError
from ssm.io.atomic import disk_error
from ssm.io.corpus import CorpusWriter
from ssm.io.landmarks import read_template_landmarks
from ssm.io.meshes import MESH_SUFFIXES, read_mesh
from ssm.units import check_head_units, mm_per_unit

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImportReport:
    """What an import did: written path, counts, and the files that failed."""

    path: Path
    n_imported: int
    n_skipped_existing: int
    failures: tuple[tuple[str, str], ...] = field(default_factory=tuple)


def expand_inputs(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Files as given; directories expand to their mesh files, sorted by name."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            out.extend(sorted(q for q in p.iterdir() if q.suffix.lower() in MESH_SUFFIXES))
        else:
            out.append(p)
    return out


def partial_path(out: Path) -> Path:
    return out.with_name(out.stem + ".partial.h5")


def import_meshes(inputs: Sequence[str | os.PathLike], out: str | os.PathLike, *,
                  landmarks: str | os.PathLike | None = None, units: str = "mm",
                  template: str | os.PathLike | None = None, overwrite: bool = False,
                  nan_as_missing: bool = False, dtype=np.float32,
                  progress: Callable[[int, int, str], None] | None = None) -> ImportReport:
    """Import registered meshes into a corpus at ``out`` (coordinates stored in mm).

    inputs : mesh files (PLY/OBJ/OFF/STL/GLB) or folders of them, all in one topology.
    landmarks : template landmarks (CSV ``name,vertex`` or points snapped to the template).
    units : units of the input files; they are converted to mm.
    template : mesh whose triangles define the topology (default: the first input).
    nan_as_missing : NaN vertices mark unregistered parts (stored as validity masks)
        instead of being an error.
    progress : callback ``(done, total, name)``.

    Raises :class:`SSMError` listing every bad file (one line each); the good subjects
    stay in the partial file so a re-run after fixing the inputs resumes.
    """
    out = Path(out)
    files = expand_inputs(inputs)
    if not files:
        raise SSMError("no input meshes given (pass mesh files or folders of them)")
    scale = mm_per_unit(units)
    if out.exists() and not overwrite:
        raise InputFileError(out, "already exists", "pass --overwrite to replace it")
    partial = partial_path(out)
    tmpl = read_mesh(template if template is not None else files[0], allow_nan=nan_as_missing)
    tmpl_path = Path(template) if template is not None else files[0]
    tri = tmpl.faces.astype(np.int32)
    n = tmpl.vertices.shape[0]
    finite = np.isfinite(tmpl.vertices).all(1)
    check_head_units(tmpl.vertices[finite], units, tmpl_path)
    lms = read_template_landmarks(landmarks, tmpl.vertices) if landmarks is not None else {}

    writer = _open_partial(partial, n, tri, lms, nan_as_missing, dtype, units, files)
    failures: list[tuple[str, str]] = []
    imported = skipped = 0
    try:
        done = set(writer.sources)
        used_ids = set()
        for i, path in enumerate(files):
            key = str(path.resolve())
            if progress:
                progress(i, len(files), path.name)
            if key in done:
                skipped += 1
                continue
            try:
                verts, valid = _validated(path, n, tri, units, nan_as_missing)
            except InputFileError as exc:
                failures.append((str(path), str(exc)))
                log.warning("%s", exc)
                continue
            sid = path.stem if path.stem not in used_ids else f"{path.parent.name}/{path.stem}"
            used_ids.add(sid)
            try:
                writer.append(np.where(np.isfinite(verts), verts, 0.0) * scale, sid, key, valid)
            except OSError as exc:
                raise disk_error(partial, exc) from exc
            imported += 1
        if progress:
            progress(len(files), len(files), "")
        if failures:
            total = writer.n_subjects
            writer.close()
            lines = "\n".join(msg for _, msg in failures)
            raise SSMError(f"{len(failures)} of {len(files)} files could not be imported:\n{lines}\n"
                           f"{total} good subjects are kept in {partial}; fix or remove the bad files "
                           f"and run the same command again to finish {out}")
        writer.finish()
    finally:
        writer.close()
    os.replace(partial, out)
    return ImportReport(out, imported, skipped, tuple(failures))


def _open_partial(partial: Path, n: int, tri: np.ndarray, lms: dict, with_masks: bool, dtype,
                  units: str, files: list[Path]) -> CorpusWriter:
    if partial.exists():
        try:
            w = CorpusWriter.reopen(partial)
            same = (w.n_vertices == n and np.array_equal(w._f["template/triangles"][()], tri)
                    and ("valid" in w._f["subjects"]) == with_masks)
            if same:
                log.info("resuming %s (%d subjects already imported)", partial, w.n_subjects)
                return w
            w.close()
            log.warning("%s holds another topology; starting over", partial)
        except OSError:
            log.warning("%s is unreadable (interrupted mid-write?); starting over", partial)
    try:
        return CorpusWriter(partial, n, tri, lms, units="mm", dtype=dtype, with_masks=with_masks,
                            provenance={"input_units": units, "n_inputs": len(files)})
    except OSError as exc:
        raise disk_error(partial, exc) from exc


def _validated(path: Path, n: int, tri: np.ndarray, units: str, nan_as_missing: bool):
    mesh = read_mesh(path, allow_nan=nan_as_missing)
    v = mesh.vertices
    if v.shape[0] != n:
        raise InputFileError(path, f"has {v.shape[0]} vertices, the template has {n}",
                             "all meshes must be registered to one topology")
    if mesh.faces.shape != tri.shape or not np.array_equal(mesh.faces, tri):
        raise InputFileError(path, "its triangles differ from the template's",
                             "all meshes must be registered to one topology")
    valid = np.isfinite(v).all(axis=1)
    if valid.sum() < 3:
        raise InputFileError(path, "fewer than 3 valid vertices", "the registration failed; re-register it")
    check_head_units(v[valid], units, path)
    return v, (valid if nan_as_missing else None)
