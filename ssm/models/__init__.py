"""Shape models (numpy only)."""

from ssm.models.shape_model import ShapeModel

__all__ = ["ShapeModel"]
