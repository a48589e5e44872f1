"""Geometry operations on arrays (numpy) and tensors (torch, imported on use)."""
