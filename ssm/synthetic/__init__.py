"""Synthetic test data with known truth: parametric heads, held-out ICT subjects, and raw-scan simulation
(range images from cameras, noise, holes, outliers, pose and units)."""
