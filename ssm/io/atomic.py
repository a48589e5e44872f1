"""Crash-safe file writing: write to a temporary sibling, then rename over the target.

A failed or interrupted write never leaves a half-written file at the target path and
never destroys a file that was there before.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path
from typing import Iterator

from ssm.errors import SSMError


def temp_sibling(path: Path, tag: str = "tmp") -> Path:
    """A temporary path next to ``path`` (same filesystem, so rename is atomic)."""
    return path.with_name(f".{path.name}.{tag}-{os.getpid()}")


def disk_error(path: Path, exc: OSError) -> SSMError:
    """Turn an OSError during writing into a one-line, actionable error."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return SSMError(f"{path}: disk full while writing (free some space and run again; "
                        "nothing already written was changed)")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return SSMError(f"{path}: no permission to write here (choose another --out)")
    return SSMError(f"{path}: could not write ({exc.strerror or exc}); nothing already written was changed")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; on success it is renamed to ``path``.

    On any exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    if path.parent and not path.parent.exists():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise disk_error(path, exc) from exc
    tmp = temp_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        _remove_quietly(tmp)
        raise disk_error(path, exc) from exc
    except BaseException:
        _remove_quietly(tmp)
        raise


def _remove_quietly(p: Path) -> None:
    with contextlib.suppress(OSError):
        p.unlink()
