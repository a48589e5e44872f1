"""Nearest-neighbour queries on the CPU (a KD-tree) or on a torch device (brute force).

The fit's closest-point searches (model vertices into the scan, scan points into the
model) dominate its CPU time: a few thousand queries into up to 100k points, 40-60 times
per fit. On a GPU a brute-force search in chunks does them in a few milliseconds: each
chunk is one ``(B, 3) x (3, P)`` product and an argmin. Coordinates go to the device in
float32 about the points' centroid (so the squared distances keep their precision for a
head in mm, cm or m), and the distances of the chosen neighbours are recomputed in float64
on the host: a query's answer differs from the KD-tree's only where two points are within
float32 rounding of being equally near.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

# entries of one chunk's (B, P) distance matrix: 2^24 float32 = 64 MB (a few times that
# in temporaries), small for a GPU and a size at which the products run at full speed
CHUNK_ENTRIES = 1 << 24


def is_cpu(device) -> bool:
    """True for the KD-tree path: None, "cpu" or a torch CPU device."""
    return device is None or str(device) == "cpu"


class DevicePoints:
    """Points uploaded once to a torch device, for repeated nearest-neighbour queries.

    points : (P, 3) float array (any frame and units); device : a torch device or its name.
    """

    def __init__(self, points: np.ndarray, device) -> None:
        import torch

        self.points = np.asarray(points, dtype=np.float64)
        self.centre = self.points.mean(axis=0) if len(self.points) else np.zeros(3)
        self.device = torch.device(device)
        p = torch.as_tensor(self.points - self.centre, dtype=torch.float32, device=self.device)
        self._p_t = p.T.contiguous()  # (3, P)
        self._sq = (p * p).sum(1)  # (P,)

    def query(self, queries: np.ndarray, upper_bound: float = np.inf) -> tuple[np.ndarray, np.ndarray]:
        """The nearest point to each query.

        queries : (Q, 3) in the points' frame and units.
        Returns ``(d (Q,) float64, j (Q,) int64)``, as ``cKDTree.query``: ``d`` is inf and
        ``j`` is ``P`` where the nearest point is farther than ``upper_bound``.
        """
        import torch

        q = np.asarray(queries, dtype=np.float64).reshape(-1, 3)
        n_p = len(self.points)
        if not len(q) or not n_p:
            return np.full(len(q), np.inf), np.full(len(q), n_p, dtype=np.int64)
        qt = torch.as_tensor(q - self.centre, dtype=torch.float32, device=self.device)
        step = max(1, CHUNK_ENTRIES // n_p)
        idx = torch.empty(len(q), dtype=torch.int64, device=self.device)
        for s in range(0, len(q), step):
            # |q - p|^2 = |q|^2 + |p|^2 - 2 q.p, and |q|^2 does not change a row's argmin
            d2 = torch.addmm(self._sq[None, :], qt[s:s + step], self._p_t, alpha=-2.0)
            idx[s:s + step] = d2.argmin(dim=1)
        j = idx.cpu().numpy()
        d = np.linalg.norm(q - self.points[j], axis=1)
        miss = d > upper_bound
        d[miss] = np.inf
        j[miss] = n_p
        return d, j


class TreePoints:
    """A KD-tree over points (P, 3) with :class:`DevicePoints`' ``query``."""

    def __init__(self, points: np.ndarray) -> None:
        self.points = np.asarray(points, dtype=np.float64)
        self.tree = cKDTree(self.points)

    def query(self, queries: np.ndarray, upper_bound: float = np.inf) -> tuple[np.ndarray, np.ndarray]:
        """As :meth:`DevicePoints.query` (all cores)."""
        return self.tree.query(queries, distance_upper_bound=upper_bound, workers=-1)


def point_index(points: np.ndarray, device=None) -> TreePoints | DevicePoints:
    """Points (P, 3) ready for repeated nearest-neighbour queries: a KD-tree on the CPU
    (``device`` None or "cpu"), else uploaded to that torch device (brute force)."""
    return TreePoints(points) if is_cpu(device) else DevicePoints(points, device)


def nearest(points: np.ndarray, queries: np.ndarray, upper_bound: float = np.inf,
            device=None) -> tuple[np.ndarray, np.ndarray]:
    """One-off nearest neighbours of ``queries`` (Q, 3) among ``points`` (P, 3), as
    ``cKDTree.query`` (inf / P beyond ``upper_bound``), by :func:`point_index`."""
    return point_index(points, device).query(queries, upper_bound)
