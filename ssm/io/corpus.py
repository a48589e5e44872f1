"""The registered-scan corpus: an HDF5 file of meshes in one topology.

Layout (``docs/formats.md`` has the full description)::

    /                       attrs format="ssm-corpus", format_version=1, units, complete,
                                  created, generator, provenance (JSON)
    /template/triangles     (M, 3) int32
    /template/landmarks/names    (L,) str;  /template/landmarks/indices (L,) int64
    /template/regions/<name>     (k,) int64
    /template/uv/{coordinates (T, 2), triangle_indices (M, 3)}   optional texture coordinates
    /subjects/vertices      (S, N, 3) float32|float64, chunk (1, N, 3), gzip + shuffle
    /subjects/ids           (S,) str
    /subjects/sources       (S,) str   file each subject came from ("" if none)
    /subjects/valid         (S, N) bool, optional: vertices the registration is valid at

All coordinates are in ``units`` (mm unless stated). Subjects are appended one at a time
(resizable datasets), so large corpora are written and read in bounded memory.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import h5py
import numpy as np

from ssm.errors import InputFileError

FORMAT = "ssm-corpus"
FORMAT_VERSION = 1
_STR = h5py.string_dtype("utf-8")


def _names(ds) -> list[str]:
    return [x.decode() if isinstance(x, bytes) else str(x) for x in ds[()]]


class CorpusWriter:
    """Append subjects to a new or partially written corpus file.

    Use as a context manager. ``append`` flushes after each subject so an interrupted
    import keeps everything appended so far.
    """

    def __init__(self, path: str | os.PathLike, n_vertices: int, triangles: np.ndarray | None,
                 landmarks: Mapping[str, int] | None = None, regions: Mapping[str, np.ndarray] | None = None,
                 units: str = "mm", dtype=np.float32, with_masks: bool = False,
                 provenance: Mapping | None = None, compression: str | None = "gzip",
                 uv: np.ndarray | None = None, triangle_uvs: np.ndarray | None = None):
        self.path = Path(path)
        self.n_vertices = int(n_vertices)
        f = h5py.File(self.path, "w")
        self._f = f
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["units"] = units
        f.attrs["complete"] = False
        f.attrs["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        f.attrs["generator"] = "ssm"
        f.attrs["provenance"] = json.dumps(dict(provenance or {}), default=str)
        t = f.create_group("template")
        t["triangles"] = np.zeros((0, 3), np.int32) if triangles is None else np.asarray(triangles, np.int32)
        lm = t.create_group("landmarks")
        landmarks = dict(landmarks or {})
        lm.create_dataset("names", data=list(landmarks.keys()), dtype=_STR)
        lm["indices"] = np.asarray(list(landmarks.values()), dtype=np.int64)
        rg = t.create_group("regions")
        for k, v in (regions or {}).items():
            rg[k] = np.asarray(v, dtype=np.int64)
        if uv is not None:
            t["uv/coordinates"] = np.asarray(uv, dtype=np.float64)
            t["uv/triangle_indices"] = np.asarray(triangle_uvs, dtype=np.int64)
        s = f.create_group("subjects")
        comp = dict(compression=compression, shuffle=True) if compression else {}
        if compression == "gzip":
            comp["compression_opts"] = 1
        s.create_dataset("vertices", shape=(0, self.n_vertices, 3), maxshape=(None, self.n_vertices, 3),
                         dtype=dtype, chunks=(1, self.n_vertices, 3), **comp)
        s.create_dataset("ids", shape=(0,), maxshape=(None,), dtype=_STR, chunks=(1024,))
        s.create_dataset("sources", shape=(0,), maxshape=(None,), dtype=_STR, chunks=(1024,))
        if with_masks:
            s.create_dataset("valid", shape=(0, self.n_vertices), maxshape=(None, self.n_vertices),
                             dtype=bool, chunks=(1, self.n_vertices), **comp)

    @classmethod
    def reopen(cls, path: str | os.PathLike) -> "CorpusWriter":
        """Open a partially written corpus to append more subjects (resume)."""
        self = cls.__new__(cls)
        self.path = Path(path)
        self._f = h5py.File(self.path, "r+")
        self.n_vertices = self._f["subjects/vertices"].shape[1]
        return self

    @property
    def n_subjects(self) -> int:
        return self._f["subjects/vertices"].shape[0]

    @property
    def sources(self) -> list[str]:
        return _names(self._f["subjects/sources"])

    def append(self, vertices: np.ndarray, subject_id: str, source: str = "",
               valid: np.ndarray | None = None) -> None:
        """Append one subject: vertices (N, 3) in the corpus units, optional valid (N,) bool."""
        v = np.asarray(vertices)
        if v.shape != (self.n_vertices, 3):
            raise ValueError(f"subject {subject_id!r}: vertices must be ({self.n_vertices}, 3), got {v.shape}")
        s = self._f["subjects"]
        i = s["vertices"].shape[0]
        for name in ("vertices", "ids", "sources") + (("valid",) if "valid" in s else ()):
            s[name].resize(i + 1, axis=0)
        s["vertices"][i] = v
        s["ids"][i] = str(subject_id)
        s["sources"][i] = str(source)
        if "valid" in s:
            s["valid"][i] = np.ones(self.n_vertices, bool) if valid is None else np.asarray(valid, bool)
        elif valid is not None and not np.all(valid):
            raise ValueError("this corpus was created without validity masks (with_masks=False)")
        self._f.flush()

    def append_many(self, vertices: np.ndarray, ids: list[str]) -> None:
        """Append a block of subjects (S, N, 3) at once (no masks, no sources)."""
        v = np.asarray(vertices)
        s = self._f["subjects"]
        i = s["vertices"].shape[0]
        n = v.shape[0]
        for name in ("vertices", "ids", "sources") + (("valid",) if "valid" in s else ()):
            s[name].resize(i + n, axis=0)
        s["vertices"][i:i + n] = v
        s["ids"][i:i + n] = [str(x) for x in ids]
        s["sources"][i:i + n] = [""] * n
        if "valid" in s:
            s["valid"][i:i + n] = True
        self._f.flush()

    def finish(self) -> None:
        """Mark the corpus complete (readers refuse incomplete files) and close it."""
        self._f.attrs["complete"] = True
        self._f.close()

    def close(self) -> None:
        if self._f.id.valid:
            self._f.close()

    def __enter__(self) -> "CorpusWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_corpus(path: str | os.PathLike, vertices: np.ndarray | Iterable[np.ndarray],
                 triangles: np.ndarray | None, ids: list[str] | None = None,
                 landmarks: Mapping[str, int] | None = None, regions: Mapping[str, np.ndarray] | None = None,
                 units: str = "mm", masks: np.ndarray | None = None, dtype=np.float32,
                 provenance: Mapping | None = None, compression: str | None = "gzip",
                 uv: np.ndarray | None = None, triangle_uvs: np.ndarray | None = None) -> Path:
    """Write a complete corpus from arrays, atomically.

    vertices : (S, N, 3) array, or an iterable of (b, N, 3) blocks (streamed, bounded memory).
    masks : optional (S, N) bool validity masks (only with an array ``vertices``).
    """
    from ssm.io.atomic import atomic_write

    path = Path(path)
    blocks = [np.asarray(vertices)] if isinstance(vertices, np.ndarray) else vertices
    with atomic_write(path) as tmp:
        writer = None
        count = 0
        try:
            for block in blocks:
                block = np.asarray(block)
                if block.ndim == 2:
                    block = block[None]
                if writer is None:
                    writer = CorpusWriter(tmp, block.shape[1], triangles, landmarks, regions, units, dtype,
                                          with_masks=masks is not None, provenance=provenance,
                                          compression=compression, uv=uv, triangle_uvs=triangle_uvs)
                bids = ids[count:count + len(block)] if ids is not None else [
                    f"subject{count + j:06d}" for j in range(len(block))]
                if masks is not None:
                    for j in range(len(block)):
                        writer.append(block[j], bids[j], valid=masks[count + j])
                else:
                    writer.append_many(block, bids)
                count += len(block)
            if writer is None:
                raise ValueError("no subjects to write")
            writer.finish()
        finally:
            if writer is not None:
                writer.close()
    return path


@dataclass(frozen=True)
class CorpusInfo:
    """Summary of a corpus file."""

    path: str
    n_subjects: int
    n_vertices: int
    n_triangles: int
    units: str
    dtype: str
    has_masks: bool
    landmarks: dict
    regions: dict
    complete: bool
    format_version: int
    provenance: dict


class Corpus:
    """Read access to a corpus file, in chunks of subjects (bounded memory).

    Open with ``Corpus(path)`` (use as a context manager or call ``close``). Raises
    :class:`InputFileError` for missing, corrupt, incomplete or foreign files.
    """

    def __init__(self, path: str | os.PathLike, allow_incomplete: bool = False):
        self.path = Path(path)
        if not self.path.exists():
            raise InputFileError(self.path, "no such corpus file", "create it with 'ssm corpus import'")
        try:
            self._f = h5py.File(self.path, "r")
        except OSError as exc:
            raise InputFileError(self.path, "not a readable HDF5 corpus",
                                 "is it truncated? re-run 'ssm corpus import'") from exc
        f = self._f
        if f.attrs.get("format") != FORMAT or "subjects/vertices" not in f:
            self._f.close()
            raise InputFileError(self.path, "not an ssm corpus (no format='ssm-corpus' attribute)",
                                 "create it with 'ssm corpus import'")
        if int(f.attrs.get("format_version", 0)) > FORMAT_VERSION:
            self._f.close()
            raise InputFileError(self.path, f"corpus format {f.attrs['format_version']} is newer than this ssm",
                                 "upgrade ssm")
        if not bool(f.attrs.get("complete", False)) and not allow_incomplete:
            self._f.close()
            raise InputFileError(self.path, "corpus is incomplete (an import did not finish)",
                                 "re-run the same 'ssm corpus import' to resume it")
        self._v = f["subjects/vertices"]
        self._valid = f["subjects/valid"] if "subjects/valid" in f else None
        self._scratch = None  # uncompressed copy of the vertices, see stage()

    # ---------------------------------------------------------------- metadata
    @property
    def n_subjects(self) -> int:
        return self._v.shape[0]

    @property
    def n_vertices(self) -> int:
        return self._v.shape[1]

    @property
    def units(self) -> str:
        return str(self._f.attrs.get("units", "mm"))

    @property
    def triangles(self) -> np.ndarray | None:
        t = self._f["template/triangles"][()]
        return t if t.size else None

    @property
    def landmarks(self) -> dict[str, int]:
        g = self._f["template/landmarks"]
        return dict(zip(_names(g["names"]), (int(i) for i in g["indices"][()])))

    @property
    def regions(self) -> dict[str, np.ndarray]:
        return {k: v[()] for k, v in self._f["template/regions"].items()}

    @property
    def ids(self) -> list[str]:
        return _names(self._f["subjects/ids"])

    @property
    def uv(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(uv (T, 2), triangle_uvs (M, 3)) of the template, or None."""
        g = self._f["template"]
        if "uv" not in g:
            return None
        return g["uv/coordinates"][()], g["uv/triangle_indices"][()]

    @property
    def has_masks(self) -> bool:
        return self._valid is not None

    @property
    def provenance(self) -> dict:
        return json.loads(self._f.attrs.get("provenance", "{}"))

    def info(self) -> CorpusInfo:
        tri = self.triangles
        return CorpusInfo(str(self.path), self.n_subjects, self.n_vertices, 0 if tri is None else len(tri),
                          self.units, str(self._v.dtype), self.has_masks, self.landmarks,
                          {k: len(v) for k, v in self.regions.items()}, bool(self._f.attrs.get("complete")),
                          int(self._f.attrs.get("format_version", 0)), self.provenance)

    # ---------------------------------------------------------------- data
    # ---------------------------------------------------------------- staging
    @property
    def is_compressed(self) -> bool:
        return self._v.compression is not None

    def stage(self, directory: str | None = None) -> bool:
        """Keep an uncompressed scratch copy of the vertices for repeated passes.

        Training reads the corpus 6-10 times; decompressing each time dominates for large
        corpora. The copy is filled lazily by the first in-order pass over the subjects
        (no extra pass), lives in ``directory`` (default: the system temp dir), is deleted
        on close, and is read with plain file reads, so it costs disk and page cache but
        not process memory. If the disk fills up, reading falls back to the HDF5 file.
        """
        import tempfile

        if self._scratch is None:
            row = self.n_vertices * 3 * self._v.dtype.itemsize
            self._scratch = [tempfile.TemporaryFile(dir=directory, prefix="ssm-corpus-"), row, 0, True]
        return True

    def _read_rows(self, lo: int, hi: int) -> np.ndarray:
        if self._scratch is None:
            return self._v[lo:hi]
        fh, row, done, growing = self._scratch
        parts = []
        start = lo
        if lo < done:  # the cached part
            stop = min(hi, done)
            out = np.empty((stop - lo, self.n_vertices, 3), dtype=self._v.dtype)
            fh.seek(lo * row)
            fh.readinto(memoryview(out).cast("B"))
            parts.append(out)
            start = stop
        if start < hi:
            fresh = self._v[start:hi]
            if growing and start == done:  # extend the cache in order
                try:
                    fh.seek(done * row)
                    fh.write(np.ascontiguousarray(fresh).tobytes())
                    self._scratch[2] = hi
                except OSError:
                    self._scratch[3] = False
            parts.append(fresh)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def read(self, indices: np.ndarray | slice | None = None, dtype=np.float64) -> np.ndarray:
        """Vertices of some subjects, (S', N, 3) ``dtype``, corpus units."""
        if indices is None:
            indices = slice(None)
        if isinstance(indices, slice):
            lo, hi, step = indices.indices(self.n_subjects)
            if step == 1:
                return self._read_rows(lo, hi).astype(dtype, copy=False)
            return self._v[indices].astype(dtype, copy=False)
        if self._scratch is not None:
            return _take_rows(self._read_rows, np.asarray(indices)).astype(dtype, copy=False)
        return _take(self._v, np.asarray(indices)).astype(dtype, copy=False)

    def read_masks(self, indices: np.ndarray | slice | None = None) -> np.ndarray | None:
        """(S', N) bool validity masks, or None when the corpus has none."""
        if self._valid is None:
            return None
        if indices is None:
            return self._valid[()]
        if isinstance(indices, slice):
            return self._valid[indices]
        return _take(self._valid, np.asarray(indices))

    def chunk_size(self, budget_bytes: int = 64 << 20, dtype=np.float64) -> int:
        """Subjects per chunk so that one chunk of ``dtype`` stays near ``budget_bytes``."""
        per = self.n_vertices * 3 * np.dtype(dtype).itemsize
        return int(max(1, min(self.n_subjects, budget_bytes // per)))

    def iter_chunks(self, subjects: np.ndarray | None = None, chunk: int | None = None,
                    dtype=np.float64) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
        """Yield ``(indices, vertices (b, N, 3), masks (b, N) or None)`` over the subjects.

        subjects : sorted subset of subject indices (default: all), e.g. after pruning.
        chunk : subjects per chunk (default: about 64 MB per chunk).
        """
        chunk = chunk or self.chunk_size(dtype=dtype)
        if subjects is None:
            for start in range(0, self.n_subjects, chunk):
                sl = slice(start, min(start + chunk, self.n_subjects))
                idx = np.arange(sl.start, sl.stop)
                yield idx, self._read_rows(sl.start, sl.stop).astype(dtype, copy=False), (
                    None if self._valid is None else self._valid[sl])
        else:
            subjects = np.asarray(subjects)
            for start in range(0, len(subjects), chunk):
                idx = subjects[start:start + chunk]
                if idx[-1] - idx[0] + 1 == len(idx) and np.all(np.diff(idx) == 1):  # contiguous
                    sl = slice(int(idx[0]), int(idx[-1]) + 1)
                    yield idx, self.read(sl, dtype), self.read_masks(sl)
                else:
                    yield idx, self.read(idx, dtype), self.read_masks(idx)

    def close(self) -> None:
        if self._scratch is not None:
            self._scratch[0].close()
            self._scratch = None
        if self._f.id.valid:
            self._f.close()

    def __enter__(self) -> "Corpus":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _take(ds: h5py.Dataset, idx: np.ndarray) -> np.ndarray:
    """``ds[idx]`` along axis 0 for any integer indices (unsorted, repeated)."""
    if idx.size == 0:
        return np.empty((0,) + ds.shape[1:], ds.dtype)
    uniq, inv = np.unique(idx, return_inverse=True)
    lo, hi = int(uniq[0]), int(uniq[-1]) + 1
    if hi - lo <= 2 * len(uniq):  # dense: one contiguous read is faster than fancy indexing
        block = ds[lo:hi][uniq - lo]
    else:
        block = ds[uniq]
    return block[inv]


def _take_rows(read_rows, idx: np.ndarray) -> np.ndarray:
    """Rows ``idx`` (any order, repeats allowed) through a ``read_rows(lo, hi)`` reader."""
    uniq, inv = np.unique(idx, return_inverse=True)
    parts = []
    breaks = np.flatnonzero(np.diff(uniq) != 1) + 1
    for run in np.split(uniq, breaks):
        parts.append(read_rows(int(run[0]), int(run[-1]) + 1))
    return np.concatenate(parts)[inv]
