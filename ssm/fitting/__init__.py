"""Fitting a shape model to a raw scan: initialisation, model fit, non-rigid ICP, pose.

Data flow: ``scan`` (loading, normals, cleaning) -> ``landmark_match`` -> ``init_landmarks``
/ ``init_auto`` -> ``rigid`` -> ``model_fit`` -> ``nicp`` -> ``pose`` -> ``outputs``;
``pipeline.fit`` strings them together with a ``FitConfig``.
"""
