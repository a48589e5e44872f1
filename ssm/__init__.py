"""ssm: 3D head statistical shape models.

Load a model in downstream code with numpy + h5py only::

    import ssm
    model = ssm.load_model("models/head.h5")
    head = model.instance([1.0, -0.5])      # (N, 3) mm

Fit a raw scan with the default model (the ICT head in ``models/``) or your own::

    res = ssm.fit("scan.ply", landmarks="lm.csv")
    res = ssm.fit(model, "scan.ply")

Heavier parts (training, fitting) are imported on first use.
"""

from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "ShapeModel": ("ssm.models.shape_model", "ShapeModel"),
    "load_model": ("ssm.io.model_file", "load_model"),
    "load_expression_model": ("ssm.io.model_file", "load_expression_model"),
    "save_model": ("ssm.io.model_file", "save_model"),
    "SSMError": ("ssm.errors", "SSMError"),
    "ModelTrainer": ("ssm.training.trainer", "ModelTrainer"),
    "train_model": ("ssm.training.trainer", "train_model"),
    "fit": ("ssm.fitting.fit", "fit"),
    "FitConfig": ("ssm.fitting.config", "FitConfig"),
    "FitResult": ("ssm.fitting.outputs.result", "FitResult"),
    "FitProblem": ("ssm.fitting.problem", "FitProblem"),
    "fuse": ("ssm.fusion.fuse", "fuse"),
    "GeometrySource": ("ssm.fusion.fuse", "GeometrySource"),
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ssm' has no attribute {name!r}")


def __dir__():
    return __all__
