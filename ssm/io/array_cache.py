"""An on-disk cache of arrays that are slow to compute from a model and the same every
time (the manifold harmonics of its mesh: 1-5 s for the 11k-vertex ICT head), so that a
fit in a fresh process, as each ``ssm fit`` run is, does not compute them again.

Where: ``$SSM_CACHE_DIR``, else ``$XDG_CACHE_HOME/ssm``, else ``~/.cache/ssm``.
``SSM_CACHE_DIR=off`` (or ``0``, ``none``, empty) turns the cache off. Entries are ``.npz``
files named by a hash of everything they were computed from (:func:`array_key`), written
whole or not at all (:mod:`ssm.io.atomic`); an entry that cannot be read or does not hold
what was asked for is computed again, and a cache that cannot be written (a read-only
home, a full disk) is skipped: the cache never makes a fit fail. Delete the folder at any
time to free the space.
"""

from __future__ import annotations

import hashlib
import logging
import os
import zipfile
from pathlib import Path

import numpy as np

from ssm.errors import SSMError
from ssm.io.atomic import atomic_write

log = logging.getLogger(__name__)

CACHE_ENV = "SSM_CACHE_DIR"
_OFF = {"", "0", "off", "none", "false", "no"}


def cache_dir() -> Path | None:
    """The cache folder (not created here), or None when ``SSM_CACHE_DIR`` turns it off."""
    env = os.environ.get(CACHE_ENV)
    if env is not None:
        return None if env.strip().lower() in _OFF else Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ssm"


def array_key(*parts) -> str:
    """A hex digest of arrays (dtype, shape and bytes) and plain values (their ``repr``)."""
    h = hashlib.sha1()
    for p in parts:
        if isinstance(p, np.ndarray):
            a = np.ascontiguousarray(p)
            h.update(f"{a.dtype.str}{a.shape}".encode())
            h.update(a.tobytes())
        else:
            h.update(repr(p).encode())
        h.update(b"|")
    return h.hexdigest()[:24]


def load_arrays(name: str) -> dict[str, np.ndarray] | None:
    """The arrays of cache entry ``name`` (a file name without suffix), or None when the
    cache is off, the entry is absent, or it cannot be read."""
    folder = cache_dir()
    if folder is None:
        return None
    path = folder / f"{name}.npz"
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        log.warning("%s: unreadable cache entry (%s); computing it again", path, exc)
        return None


def save_arrays(name: str, **arrays: np.ndarray) -> None:
    """Write cache entry ``name`` (atomically); a failure to write is logged and ignored."""
    folder = cache_dir()
    if folder is None:
        return
    path = folder / f"{name}.npz"
    try:
        with atomic_write(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)
    except (SSMError, OSError) as exc:
        log.info("not cached (%s)", exc)
