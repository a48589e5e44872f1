"""Device selection for torch code: ``auto`` | ``cpu`` | ``cuda`` (torch imported on use)."""

from __future__ import annotations

from ssm.errors import SSMError


def resolve_device(device: str = "auto"):
    """A ``torch.device`` for a user's choice; ``auto`` takes CUDA when it is available."""
    import torch

    name = (device or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SSMError("--device cuda was asked for but torch sees no CUDA GPU "
                           "(use --device cpu or auto)")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise SSMError(f"unknown device {device!r} (use auto, cpu or cuda)")


def device_name(device: str | None = "auto") -> str:
    """``resolve_device`` as a name: "cpu", or the CUDA device (e.g. "cuda:0") that
    ``device`` ("auto" | "cpu" | "cuda[:i]") names. "cpu" needs no torch import."""
    name = (device or "auto").lower()
    if name == "cpu":
        return "cpu"
    return str(resolve_device(name))
