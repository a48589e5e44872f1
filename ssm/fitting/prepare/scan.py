"""A raw scan prepared for fitting: points, normals, boundary flags and a KD-tree."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from ssm.errors import InputFileError
from ssm.geometry import nearest
from ssm.geometry.mesh_ops import (boundary_vertices, component_labels, edge_counts, face_normals,
                                   first_of_repeated_faces, vertex_normals, weld_vertices)


MATCH_POINTS = 100_000  # scan points searched from the model side (see Scan.match_tree)
# a scan point within this of the fitted surface is explained by it (scan_explained): a few
# times a scanner's noise, well under a feature's size
EXPLAINED_WITHIN_MM = 2.5


def scan_tree(points: np.ndarray) -> cKDTree:
    """A KD-tree over scan points, built for speed: unbalanced, uncompacted nodes build
    2.6x faster (0.8 vs 2.1 s at 3.2M points) and answer queries as fast."""
    return cKDTree(points, balanced_tree=False, compact_nodes=False)


@dataclass(frozen=True, eq=False)
class Scan:
    """A scan in its own frame and units.

    points : (P, 3) float64; faces : (F, 3) int64 (empty for point clouds).
    normals : (P, 3) unit normals (zero where unknown, e.g. isolated vertices).
    oriented : normals point outwards consistently (meshes; point clouds after
        :func:`orient_normals`) or not (point clouds as read).
    boundary : (P,) bool, on a border or hole of the surface (a model vertex matched
        there is probably beyond what the scanner saw); estimated for point clouds.
    path : file it came from, for messages.
    device : where the fit's closest-point searches run: "cpu" (KD-trees) or a torch
        device such as "cuda" (brute force, :mod:`ssm.geometry.nearest`); :meth:`on`.
    colors : (P, 3) float32 RGB in [0, 1] when the file had colours, else None; the fit
        does not use them, the outputs carry them over (:mod:`ssm.fitting.outputs.colors`).
    texture : the file's texture (:class:`ssm.io.meshes.TextureSource`, the same frame
        and units), which the fit's texture is sampled from at full resolution, or None.
    """

    points: np.ndarray
    faces: np.ndarray
    normals: np.ndarray
    oriented: bool
    boundary: np.ndarray
    path: str = "<array>"
    device: str = "cpu"
    colors: np.ndarray | None = None
    texture: object | None = None

    def on(self, device: str) -> "Scan":
        """The same scan with its closest-point searches on ``device`` (its caches kept)."""
        if str(device) == self.device:
            return self
        out = dataclasses.replace(self, device=str(device))
        _share_caches(self, out)
        return out

    @property
    def tree(self) -> cKDTree:
        t = self.__dict__.get("_tree")
        if t is None:
            t = scan_tree(self.points)
            object.__setattr__(self, "_tree", t)
        return t

    @property
    def match_tree(self) -> tuple[cKDTree, np.ndarray]:
        """A KD-tree over at most ``MATCH_POINTS`` of the points and their (M,) indices.

        Model -> scan matching needs the scan no denser than about the model's own
        vertex spacing (point-to-plane residuals do not care which nearby point is
        hit), and a query in a smaller tree is faster: a 200k-point scan matches in
        about half the time over a random half of its points. Border points are all
        kept, so a vertex beyond the scan's edge still lands on the edge (rejected).
        """
        t = self.__dict__.get("_match_tree")
        if t is None:
            if len(self.points) <= MATCH_POINTS:
                t = (self.tree, np.arange(len(self.points)))
            else:
                border = np.flatnonzero(self.boundary)
                rest = np.flatnonzero(~self.boundary)
                keep = max(0, MATCH_POINTS - len(border))
                pick = np.random.default_rng(0).choice(rest, min(keep, len(rest)), replace=False)
                idx = np.sort(np.concatenate([border, pick]))
                t = (scan_tree(self.points[idx]), idx)
            object.__setattr__(self, "_match_tree", t)
        return t

    def nearest_match(self, queries: np.ndarray, upper_bound: float) -> tuple[np.ndarray, np.ndarray]:
        """The nearest of the :attr:`match_tree` points to each query (Q, 3), scan frame.

        Returns ``(d (Q,), j (Q,))``: the distance (scan units; inf beyond
        ``upper_bound``) and the index into :attr:`points` (any value where ``d`` is inf),
        by the KD-tree, or by a brute-force search on :attr:`device`.
        """
        tree, idx = self.match_tree
        if nearest.is_cpu(self.device):
            d, j = tree.query(queries, distance_upper_bound=upper_bound, workers=-1)
        else:
            cached = self.__dict__.get("_match_device")
            if cached is None or cached[0] != self.device:  # uploaded once per device
                cached = (self.device, nearest.DevicePoints(self.points[idx], self.device))
                object.__setattr__(self, "_match_device", cached)
            d, j = cached[1].query(queries, upper_bound)
        return d, idx[np.where(np.isfinite(d), j, 0)]

    @property
    def matchable(self) -> np.ndarray:
        """Indices of points that may be matched from the scan side (they have a normal)."""
        m = self.__dict__.get("_matchable")
        if m is None:
            m = np.flatnonzero(np.linalg.norm(self.normals, axis=1) > 0)
            object.__setattr__(self, "_matchable", m)
        return m

    @property
    def diagonal(self) -> float:
        return float(np.linalg.norm(np.ptp(self.points, axis=0)))


def scan_from_arrays(points: np.ndarray, faces: np.ndarray | None = None, normals: np.ndarray | None = None,
                     path: str = "<array>", clean: bool = True, colors: np.ndarray | None = None,
                     texture=None) -> Scan:
    """Prepare a scan from arrays (scan frame and units).

    clean : drop stray points (isolated vertices far from the rest, as scanners leave)
        from the matching set; they stay in the data but get no normal and are flagged.
    colors : (P, 3) RGB in [0, 1] per point, carried along (not used by the fit).
    texture : a :class:`ssm.io.meshes.TextureSource` in the same frame, carried along.
    """
    p = np.asarray(points, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 3 or len(p) < 10:
        raise InputFileError(path, f"needs at least 10 points, got {len(p) if p.ndim == 2 else 0}",
                             "is the scan empty or degenerate?")
    if colors is not None:
        colors = np.asarray(colors, dtype=np.float32)
        if colors.shape != p.shape:
            raise InputFileError(path, f"{len(colors)} colours for {len(p)} points", "give one RGB per point")
    finite = np.isfinite(p).all(axis=1)
    f = np.zeros((0, 3), np.int64) if faces is None else np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    if not finite.all():  # drop NaN points, remap faces
        remap = -np.ones(len(p), np.int64)
        remap[finite] = np.arange(finite.sum())
        p = p[finite]
        f = remap[f]
        f = f[(f >= 0).all(axis=1)]
        if normals is not None:
            normals = np.asarray(normals)[finite]
        if colors is not None:
            colors = colors[finite]
    if len(f):  # one vertex per position: STL and seam-split meshes repeat corners per face
        kept, new_index = weld_vertices(p)
        if len(kept) < len(p):
            p, f = p[kept], new_index[f]
            normals = None if normals is None else np.asarray(normals)[kept]
            colors = None if colors is None else colors[kept]
    if np.linalg.norm(np.ptp(p, axis=0)) <= 0:
        raise InputFileError(path, "all points coincide", "the scan is degenerate")
    fn = None
    if len(f):
        fn = face_normals(p, f)
        # degenerate (zero-area) faces carry no surface; repeated ones hide the borders
        keep = ((fn ** 2).sum(1) > 0) & first_of_repeated_faces(f)
        f, fn = f[keep], fn[keep]
    tree = scan_tree(p)
    suspects = None  # points the stray test looks at (None: all)
    if len(f):
        counts = edge_counts(f, len(p))  # shared by the pieces and the border test
        label, count = _pieces(len(p), counts)
        f, n = _outward_faces(p, f, label, count, fn)
        oriented = True
        boundary = boundary_vertices(f, len(p), counts)
        in_face = np.zeros(len(p), bool)
        in_face[f.ravel()] = True
        boundary |= ~in_face  # isolated vertices: no surface around them
        # a point of a large connected piece has its mesh neighbours around it: only
        # isolated vertices and small floating pieces can be stray
        suspects = ~in_face | (count[label] < max(50, 0.01 * len(p)))
    else:
        n, oriented = _estimate_normals(p, normals, tree)
        boundary = _cloud_boundary(p, n, tree)
    if clean:
        stray = _stray_points(p, tree, suspects)
        n = n.copy()
        n[stray] = 0.0
        boundary = boundary | stray
    scan = Scan(p, f, n, oriented, boundary, str(path), colors=colors, texture=texture)
    object.__setattr__(scan, "_tree", tree)  # built once, shared with the stray-point test
    return scan


CONSENSUS_NEIGHBOURS = 8  # cloud neighbours a normal takes its side from
CONSENSUS_ROUNDS = 3


def orient_normals(scan: Scan, ref_points: np.ndarray, ref_normals: np.ndarray, near: float, k: int = 4) -> Scan:
    """The scan with its normals turned to agree with a reference surface; ``oriented``.

    Point-cloud normals come without a consistent side, and matching with ``|cos|``
    then pairs model vertices with surfaces seen from behind (lips, nostrils, the inside
    of the ears). Once a fit is roughly in place, each scan normal takes the side of the
    ``k`` nearest reference normals, then of most of its cloud neighbours
    (:func:`_side_consensus`). A mesh keeps its own normals unless most of those
    near it disagree (inverted winding): then all are flipped, faces too.
    ref_points, ref_normals : (N, 3), scan frame; near : the distance (scan units)
    within which a mesh's points take part in that vote.
    """
    tree = cKDTree(ref_points)
    if scan.oriented:  # a mesh: only its winding as a whole can be wrong
        pick = np.random.default_rng(0).choice(len(scan.points), min(5000, len(scan.points)), replace=False)
        d, j = tree.query(scan.points[pick], workers=-1)
        vote = np.sign(np.einsum("pd,pd->p", scan.normals[pick], ref_normals[j]))[d <= near]
        if not len(vote) or vote.mean() >= 0:
            return scan
        flip = np.full(len(scan.points), -1.0)
        faces = scan.faces[:, ::-1].copy()
    else:
        _, j = tree.query(scan.points, k=min(k, len(ref_points)), workers=-1)
        j = j.reshape(len(scan.points), -1)
        flip = np.where(np.einsum("pd,pkd->p", scan.normals, ref_normals[j]) < 0, -1.0, 1.0)
        flip *= _side_consensus(scan, scan.normals * flip[:, None])
        faces = scan.faces
    out = dataclasses.replace(scan, faces=faces, normals=scan.normals * flip[:, None], oriented=True)
    _share_caches(scan, out)
    return out


def _share_caches(scan: Scan, out: Scan) -> None:
    """Hand ``scan``'s search structures to ``out`` (the same points and normal support)."""
    for cached in ("_tree", "_match_tree", "_matchable", "_match_device"):
        if cached in scan.__dict__:
            object.__setattr__(out, cached, scan.__dict__[cached])


def _side_consensus(scan: Scan, normals: np.ndarray, k: int = CONSENSUS_NEIGHBOURS,
                    rounds: int = CONSENSUS_ROUNDS) -> np.ndarray:
    """(P,) +-1: the side each cloud normal takes from its ``k`` nearest cloud neighbours.

    The reference vote of :func:`orient_normals` goes wrong in patches where the
    initialised model is off by about a feature's size (lips, nostrils, eyelids); a point
    whose neighbours mostly face the other way turns, over a few rounds.
    """
    side = np.ones(len(normals))
    k = min(k, len(normals) - 1)
    if k < 1:
        return side
    _, nb = scan.tree.query(scan.points, k=k + 1, workers=-1)
    nb = nb.reshape(len(normals), -1)[:, 1:]
    n = normals
    for _ in range(rounds):
        turn = np.where(np.einsum("pd,pkd->p", n, n[nb]) < 0, -1.0, 1.0)
        side *= turn
        n = n * turn[:, None]
    return side


SIDE_AGREEMENT = 0.97  # share of near-parallel neighbour normals on one side that says the file's are oriented


def sides_consistent(p: np.ndarray, normals: np.ndarray, valid: np.ndarray, tree: cKDTree | None = None,
                     k: int = 8, samples: int = 20000) -> bool:
    """Whether a cloud's given normals (P, 3, unit where ``valid``) take consistent sides.

    Normals from a scanner face the sensor, and neighbours agree: nearly all pairs of
    neighbour normals within 60 degrees of (anti)parallel point the same way. A PCA
    estimate saved without orientation (Open3D's ``estimate_normals``, PCL without a
    viewpoint) flips in patches, and trusting its sides can send a fit without landmarks
    far off; below :data:`SIDE_AGREEMENT` the normals are taken as axes and their sides
    come from the fit.
    """
    idx = np.flatnonzero(valid)
    if len(idx) < 2:
        return True
    if len(idx) > samples:
        idx = np.random.default_rng(0).choice(idx, samples, replace=False)
    tree = tree or scan_tree(p)
    k = min(k, len(p) - 1)
    _, nb = tree.query(p[idx], k=k + 1)
    nb = nb.reshape(len(idx), -1)[:, 1:]
    cos = np.einsum("pd,pkd->pk", normals[idx], normals[nb])
    strong = np.abs(cos) > 0.5  # (zero normals of invalid neighbours drop out here)
    return not strong.any() or float(np.mean(cos[strong] > 0)) >= SIDE_AGREEMENT


def _estimate_normals(p: np.ndarray, normals: np.ndarray | None, tree: cKDTree | None = None
                      ) -> tuple[np.ndarray, bool]:
    """(P, 3) unit normals of a point cloud and whether they are oriented (``tree``: a
    KD-tree of ``p``, for the numpy estimate).

    The file's normals are used where they exist (most scanners write them, facing the
    sensor); points whose normal is zero or NaN (often the stray ones) take an estimate
    turned towards their nearest given neighbour's. Given normals whose sides disagree
    between neighbours (:func:`sides_consistent`) are kept as axes, unoriented. With
    fewer than half given, all are estimated (PCA of 16 neighbours, turned away from the
    centroid; unoriented).
    """
    given = valid = None
    if normals is not None:
        nrm = np.asarray(normals, dtype=np.float64)
        nn = np.linalg.norm(nrm, axis=1)
        valid = np.isfinite(nn) & (nn > 1e-6)
        if valid.mean() >= 0.5:
            given = np.zeros_like(nrm)
            given[valid] = nrm[valid] / nn[valid, None]
            if not sides_consistent(p, given, valid, tree):
                # axes without sides (a PCA estimate saved unoriented): the sides come
                # from the fit, as for estimated normals
                n = given if valid.all() else np.where(valid[:, None], given, pca_normals(p, tree=tree))
                return _away_from_centroid(p, n), False
            if valid.all():
                return given, True
    n = pca_normals(p, tree=tree)
    if given is not None:
        have = np.flatnonzero(valid)
        _, j = scan_tree(p[have]).query(p[~valid])
        est = n[~valid]
        est[(est * given[have[j]]).sum(1) < 0] *= -1
        given[~valid] = est
        return given, True
    return _away_from_centroid(p, n), False


def _away_from_centroid(p: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Unoriented normals (P, 3) turned away from the cloud's centroid: right for most
    single-surface scans, and the matching uses ``|cos|`` for unoriented normals anyway."""
    return np.where((((p - p.mean(0)) * n).sum(1) < 0)[:, None], -n, n)


def pca_normals(p: np.ndarray, k: int = 16, tree: cKDTree | None = None) -> np.ndarray:
    """(P, 3) unit normals of a cloud (P, 3), of either side: the least direction of each
    point's ``k`` nearest neighbours (Open3D's ``estimate_normals``, or the same in numpy
    where Open3D does not import, by ``tree``, a KD-tree of ``p``, when given)."""
    from ssm.geometry.surface_distance import optional_open3d

    o3d = optional_open3d()
    if o3d is not None:
        pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(p))
        pcd.estimate_normals(o3d.geometry.KDTreeSearchParamKNN(k))
        return np.asarray(pcd.normals).copy()
    _, nb = (tree if tree is not None else scan_tree(p)).query(p, k=min(k, len(p)), workers=-1)
    nbr = p[nb.reshape(len(p), -1)]
    d = nbr - nbr.mean(1, keepdims=True)
    _, vec = np.linalg.eigh(np.einsum("pki,pkj->pij", d, d))
    return vec[:, :, 0]  # eigenvalues ascending: the least spread


def _pieces(n_points: int, counts) -> tuple[np.ndarray, np.ndarray]:
    """(P,) connected-piece label of each point and (pieces,) point count of each piece;
    counts : the mesh's :func:`edge_counts`."""
    label = component_labels(n_points, np.stack([counts.row, counts.col], axis=1))
    return label, np.bincount(label)


def _outward_faces(p: np.ndarray, f: np.ndarray, label: np.ndarray, count: np.ndarray,
                   fn: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``f`` with each connected piece's winding reversed where it faces inwards, and
    the (P, 3) unit vertex normals of the result.

    label, count : from :func:`_pieces`; fn : the (M, 3) :func:`face_normals` of ``f``.
    Some exporters write inverted winding. A head scan's surface, whole or seen from
    one side, bulges away from its centroid: outward normals vote +0.4 to +0.8 on the
    ICT cases and the real scans here, so a piece (of at least 5 % of the points: small
    concave bits such as an ear canal vote inwards) voting below -0.1 is turned over.
    Small pieces, and flat ones such as a wall (they vote near 0), follow the majority
    of the pieces that decided.
    """
    n = vertex_normals(p, f, fn)
    centre = np.stack([np.bincount(label, p[:, c]) for c in range(3)], axis=1) / count[:, None]
    vote = np.sign(((p - centre[label]) * n).sum(1))
    piece_vote = np.bincount(label, vote) / count
    decided = (np.abs(piece_vote) >= 0.1) & (count >= max(10, 0.05 * len(p)))
    inward = decided & (piece_vote < 0)
    # small or flat pieces follow the file's majority: winding is the exporter's doing
    if count[inward].sum() > count[decided & ~inward].sum():
        inward |= ~decided
    flip = inward[label[f[:, 0]]]
    out = f.copy()
    out[flip] = f[flip][:, ::-1]
    return out, n * np.where(inward[label], -1.0, 1.0)[:, None]


def _cloud_boundary(p: np.ndarray, n: np.ndarray, tree: cKDTree, k: int = 16, ratio: float = 0.3) -> np.ndarray:
    """(P,) bool: points on the border of a point cloud's surface or of its holes.

    Inside a surface the k neighbours surround a point and their centroid, projected on
    the tangent plane, stays near it; on a border it shifts inwards by a good fraction of
    the neighbourhood radius (over ``ratio`` of the mean neighbour distance).
    """
    if len(p) <= k:
        return np.zeros(len(p), bool)
    d, j = tree.query(p, k=k, workers=-1)
    off = p[j[:, 1:]].mean(axis=1) - p
    off -= (off * n).sum(1, keepdims=True) * n
    return np.linalg.norm(off, axis=1) > ratio * (d[:, 1:].mean(axis=1) + 1e-12)


def _stray_points(p: np.ndarray, tree: cKDTree, suspects: np.ndarray | None = None, k: int = 8,
                  z: float = 4.0, reference: int = 20000) -> np.ndarray:
    """(P,) bool: points whose mean distance to their k neighbours (``tree`` holds ``p``)
    is far above typical. Only ``suspects`` (bool (P,), default all) are tested; the
    typical distance comes from a sample of ``reference`` points."""
    kk = min(k + 1, len(p))
    ref = p if len(p) <= reference else p[np.random.default_rng(0).choice(len(p), reference, replace=False)]
    md_ref = tree.query(ref, k=kk, workers=-1)[0][:, 1:].mean(axis=1)
    med = np.median(md_ref)
    mad = np.median(np.abs(md_ref - med)) + 1e-12
    idx = np.arange(len(p)) if suspects is None else np.flatnonzero(suspects)
    out = np.zeros(len(p), bool)
    if len(idx):
        md = tree.query(p[idx], k=kk, workers=-1)[0][:, 1:].mean(axis=1)
        out[idx] = md > med + z * 1.4826 * mad + 2 * med
    return out


def load_scan(path: str | os.PathLike, clean: bool = True) -> Scan:
    """Read a mesh (PLY/OBJ/STL/OFF/GLB) or point cloud (XYZ/PTS/PCD/PLY) as a Scan."""
    from ssm.io.meshes import read_mesh

    data = read_mesh(path, allow_points=True, allow_nan=True, colors=True)
    return scan_from_arrays(data.vertices, data.faces, data.normals, path=str(Path(path)), clean=clean,
                            colors=data.colors, texture=data.texture)


def scan_explained(scan: Scan, verts_scan: np.ndarray, triangles: np.ndarray | None, scale: float,
                   samples: int = 5000, within_mm: float = EXPLAINED_WITHIN_MM, reach_mm: float | None = None) -> float:
    """Fraction of (non-stray) scan points within ``within_mm`` of the fitted surface.

    verts_scan : (N, 3) fitted vertices in the scan frame; triangles : (M, 3) or None
    (then distances to the vertices); scale : scan units per mm; reach_mm : count only
    the scan points this near the fit (None: all), so that the rest of a body or a room
    around the head does not count against it.

    A fit that slid onto the wrong part of the head matches its own correspondences
    well but explains little of the scan: this is the convergence check that sees it.
    """
    idx = scan.matchable
    if not len(idx):
        idx = np.arange(len(scan.points))
    if reach_mm is not None:  # the points near the fit's bounding box (the exact reach below)
        lo = verts_scan.min(0) - reach_mm * scale
        hi = verts_scan.max(0) + reach_mm * scale
        idx = idx[((scan.points[idx] >= lo) & (scan.points[idx] <= hi)).all(1)]
        if not len(idx):
            return 0.0
    idx = np.random.default_rng(0).choice(idx, min(samples, len(idx)), replace=False)
    if triangles is not None:
        from ssm.geometry.surface_distance import point_to_surface

        d = point_to_surface(scan.points[idx], verts_scan, triangles)
    else:
        d, _ = cKDTree(verts_scan).query(scan.points[idx])
    d = d / scale
    if reach_mm is not None:
        d = d[d < reach_mm]
        if not len(d):
            return 0.0
    return float((d < within_mm).mean())
