"""The model a fit uses: a ShapeModel as given, a model file, or the default model
(:func:`ssm.io.model_file.default_model_path`), with its expression basis."""

from __future__ import annotations

import functools
import os
from pathlib import Path

from ssm.models.shape_model import ShapeModel


def resolve_model(model: ShapeModel | str | os.PathLike | None,
                  expression_model: ShapeModel | str | None = "auto") -> tuple[ShapeModel, ShapeModel | None]:
    """(the model, its expression basis or None).

    model : a ShapeModel, a model file's path, or None for the default model.
    expression_model : a ShapeModel; "auto" for the model file's own (its named
        blendshapes or Basel-style ``/expression``; none for an in-memory model); None or
        "off" for none.
    """
    path = None
    if model is None:
        from ssm.io.model_file import default_model_path

        path = default_model_path()
    elif isinstance(model, (str, os.PathLike)):
        path = Path(model)
    if path is not None:
        stat = path.stat() if path.exists() else None
        key = (str(path.resolve()), None if stat is None else (stat.st_mtime_ns, stat.st_size))
        model, own_expression = _load(key)
    else:
        own_expression = None
    if isinstance(expression_model, str):
        if expression_model not in ("auto", "off"):
            raise ValueError(f"expression_model must be a ShapeModel, 'auto', 'off' or None, got {expression_model!r}")
        expression_model = own_expression if expression_model == "auto" else None
    return model, expression_model


@functools.lru_cache(maxsize=4)
def _load(key: tuple) -> tuple[ShapeModel, ShapeModel | None]:
    """A model file and its expression model, read once per process (per path, time and size)."""
    from ssm.io.model_file import load_expression_model, load_model

    model = load_model(key[0])
    return model, load_expression_model(key[0], model)
