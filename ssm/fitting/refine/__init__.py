"""Refinements for what the model does not span: occlusion, expressions, deformation
fields, non-rigid ICP; and the final pose."""
