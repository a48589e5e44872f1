"""Finishing a fit: uncertainty, smoothing, the verdict and the result."""
