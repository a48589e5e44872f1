"""Rich progress bars behind the ``progress(task, done, total)`` callbacks of the library."""

from __future__ import annotations

import contextlib
import sys
from typing import Callable, Iterator

Progress = Callable[..., None]  # (task, done, total, label=None); total None: not known


@contextlib.contextmanager
def progress_bars(enabled: bool = True) -> Iterator[Progress]:
    """Yield a callback that shows one bar per task name (on stderr, only on a terminal)."""
    if not enabled or not sys.stderr.isatty():
        yield lambda task, done, total, label=None: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, \
        TimeElapsedColumn

    bars = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        transient=True)
    tasks: dict[str, int] = {}
    with bars:
        def update(task: str, done: int, total: int | None, label: str | None = None) -> None:
            if task not in tasks:
                tasks[task] = bars.add_task(task, total=total)
            bars.update(tasks[task], completed=done, total=total,
                        description=task if label is None else f"{task}: {label}")
        yield update
