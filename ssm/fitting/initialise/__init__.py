"""The start of a fit: the pose from a given matrix, landmarks or the automatic search."""
