"""The model fit: correspondences, the MAP coefficient and pose solves, their schedules."""
