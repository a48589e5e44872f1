"""File formats: one module a format, each parsing to plain arrays.

Nothing heavy is imported here; mesh readers import trimesh on first use.
"""
