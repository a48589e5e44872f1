"""Fitting a shape model to a raw scan, laid out as the algorithm (``fit.py`` strings the
stages together; ``docs/fitting.md`` has the table):

``prepare/``     the scan (normals, borders, stray points) and the landmarks' names
``problem.py``   one :class:`FitProblem`: model, scan, landmarks, units, config, device, random streams
``initialise/``  the pose: given, from landmarks or by the automatic search; rigid refinement
``model_fit/``   the MAP model fit (correspondences, solves, schedules)
``refine/``      what the model does not span: occlusion, expression, deformation fields,
                 non-rigid ICP, the final pose
``finish/``      uncertainty, smoothing, the verdict and the :class:`FitResult`
``outputs/``     the result type, the files written, colour transfer

Each stage is ``stage(problem, state) -> StageResult`` (:mod:`ssm.fitting.state`).
"""
