"""Scan and landmark files as other tools write them: ASCII point clouds, STL meshes and PTS
landmarks."""

import numpy as np
import pytest

from ssm.errors import InputFileError
from ssm.io.landmarks import read_landmark_points
from ssm.io.meshes import read_mesh


@pytest.fixture
def points():
    p = np.random.default_rng(0).normal(size=(40, 3)) * 50.0
    return p, p / np.linalg.norm(p, axis=1, keepdims=True)


def _write_rows(path, rows, sep=" ", head=""):
    path.write_text(head + "\n".join(sep.join(f"{c:.6f}" for c in r) for r in rows) + "\n")


def test_ascii_clouds_take_normals_only_when_they_are_unit_vectors(tmp_path, points):
    p, n = points
    rgb = np.random.default_rng(1).integers(0, 256, (len(p), 3)).astype(float)
    _write_rows(tmp_path / "normals.xyz", np.hstack([p, n]))
    _write_rows(tmp_path / "colours.xyz", np.hstack([p, rgb]))
    _write_rows(tmp_path / "commas.txt", p, sep=",", head="x,y,z\n")
    with_n = read_mesh(tmp_path / "normals.xyz", allow_points=True)
    np.testing.assert_allclose(with_n.vertices, p, atol=1e-5)
    np.testing.assert_allclose(with_n.normals, n, atol=1e-5)
    coloured = read_mesh(tmp_path / "colours.xyz", allow_points=True)
    assert coloured.normals is None  # colours are not normals
    np.testing.assert_allclose(coloured.vertices, p, atol=1e-5)
    np.testing.assert_allclose(read_mesh(tmp_path / "commas.txt", allow_points=True).vertices, p, atol=1e-5)


def test_leica_pts_cloud_skips_the_count_line(tmp_path, points):
    p, _ = points
    extra = np.random.default_rng(2).integers(0, 256, (len(p), 4)).astype(float)  # intensity r g b
    _write_rows(tmp_path / "scan.pts", np.hstack([p, extra]), head=f"{len(p)}\n")
    m = read_mesh(tmp_path / "scan.pts", allow_points=True)
    assert m.vertices.shape == (len(p), 3) and m.normals is None
    np.testing.assert_allclose(m.vertices, p, atol=1e-5)


def test_pts_landmarks_read_and_bad_ones_are_named(tmp_path, points):
    p, _ = points
    body = "\n".join(" ".join(f"{c:.6f}" for c in r) for r in p)
    (tmp_path / "lm.pts").write_text(f"version: 1\nn_points:  {len(p)}\n{{\n{body}\n}}\n")
    lm = read_landmark_points(tmp_path / "lm.pts")
    np.testing.assert_allclose(lm.points, p, atol=1e-5)
    flat = "\n".join(" ".join(f"{c:.6f}" for c in r[:2]) for r in p)
    (tmp_path / "flat.pts").write_text(f"version: 1\nn_points:  {len(p)}\n{{\n{flat}\n}}\n")
    with pytest.raises(InputFileError, match="flat.pts.*2D"):
        read_landmark_points(tmp_path / "flat.pts")
    (tmp_path / "cut.pts").write_text(f"version: 1\nn_points:  {len(p) + 5}\n{{\n{body}\n}}\n")
    with pytest.raises(InputFileError, match="cut.pts.*truncated"):
        read_landmark_points(tmp_path / "cut.pts")


def test_weld_vertices_keeps_first_order_and_signed_zeros_meet():
    from ssm.geometry.mesh_ops import weld_vertices

    v = np.array([[1.0, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 1], [0.0, -0.0, 1.0]])
    kept, new = weld_vertices(v)
    np.testing.assert_array_equal(kept, [0, 1, 3])
    np.testing.assert_array_equal(new, [0, 1, 0, 2, 2])
    same, ident = weld_vertices(v[:2])
    np.testing.assert_array_equal(same, [0, 1])
    np.testing.assert_array_equal(ident, [0, 1])


@pytest.mark.parametrize("kind", ["stl", "stl_ascii"])
def test_stl_scans_are_welded_so_only_real_borders_are_borders(tmp_path, kind):
    """STL repeats every triangle's corners: unwelded, every vertex would be a border
    and model -> scan matches would all be dropped."""
    import trimesh

    from ssm.fitting.prepare.scan import load_scan

    sphere = trimesh.creation.icosphere(subdivisions=3, radius=80.0)
    cap = sphere.vertices[:, 2] > -40.0  # a cap: a surface with one real border
    faces = sphere.faces[cap[sphere.faces].all(1)]
    mesh = trimesh.Trimesh(sphere.vertices, faces, process=False)
    mesh.remove_unreferenced_vertices()
    path = tmp_path / "cap.stl"
    mesh.export(path, file_type=kind)
    scan = load_scan(path)
    assert len(scan.points) == len(mesh.vertices)  # one point per corner, not three per face
    assert len(scan.faces) == len(mesh.faces)
    mesh.export(tmp_path / "cap.ply")  # shared corners: the reference
    truth = load_scan(tmp_path / "cap.ply")
    assert scan.boundary.sum() == truth.boundary.sum() > 0


@pytest.mark.parametrize("binary", [False, True])
def test_ply_cloud_normals_named_as_pcl_writes_them(tmp_path, points, binary):
    """PCL's PLY writer names normals normal_x, normal_y, normal_z (and adds curvature)."""
    p, n = points
    rows = np.hstack([p, n, np.zeros((len(p), 1))]).astype(np.float32)
    head = (f"ply\nformat {'binary_little_endian' if binary else 'ascii'} 1.0\nelement vertex {len(p)}\n"
            + "".join(f"property float {c}\n" for c in ("x", "y", "z", "normal_x", "normal_y", "normal_z", "curvature"))
            + "end_header\n")
    body = rows.tobytes() if binary else "".join(" ".join(f"{x:.6f}" for x in r) + "\n" for r in rows).encode()
    (tmp_path / "pcl.ply").write_bytes(head.encode() + body)
    data = read_mesh(tmp_path / "pcl.ply", allow_points=True)
    np.testing.assert_allclose(data.vertices, p, atol=1e-4)
    np.testing.assert_allclose(data.normals, n, atol=1e-5)


@pytest.mark.parametrize("copy", ["twice", "double-sided"])
def test_repeated_faces_are_dropped_so_borders_stay_borders(copy):
    """Every triangle written twice, or with its reverse (a double-sided export), shares
    each edge among four faces: the borders would vanish (a frontal ICT scan fitted 1.0
    instead of 0.42 mm off when double-sided)."""
    import trimesh

    from ssm.fitting.prepare.scan import scan_from_arrays
    from ssm.geometry.mesh_ops import first_of_repeated_faces

    sphere = trimesh.creation.icosphere(subdivisions=3, radius=80.0)
    faces = sphere.faces[(sphere.vertices[:, 2] > -40.0)[sphere.faces].all(1)]  # a cap with one border
    again = faces if copy == "twice" else faces[:, ::-1]
    both = np.vstack([faces, np.roll(again, 1, axis=1)])  # the repeats start at another corner
    keep = first_of_repeated_faces(both)
    assert keep[:len(faces)].all() and not keep[len(faces):].any()
    truth = scan_from_arrays(sphere.vertices, faces)
    scan = scan_from_arrays(sphere.vertices, both)
    np.testing.assert_array_equal(scan.faces, truth.faces)
    assert scan.boundary.sum() == truth.boundary.sum() > 0


@pytest.mark.parametrize("ascii_", [False, True])
def test_ply_point_cloud_normals_are_read_and_used(tmp_path, points, ascii_):
    """Scanners write normals facing the sensor: they are kept (and the cloud counts as
    oriented) even when a few points (stray ones) have none."""
    import open3d as o3d

    from ssm.fitting.prepare.scan import load_scan

    p, n = points
    n = n.copy()
    n[0] = 0.0  # a point without a normal
    pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(p))
    pc.normals = o3d.utility.Vector3dVector(n)
    path = tmp_path / "cloud.ply"
    o3d.io.write_point_cloud(str(path), pc, write_ascii=ascii_)
    data = read_mesh(path, allow_points=True)
    np.testing.assert_allclose(data.normals, n, atol=1e-5)
    big = np.vstack([p * (1 + 0.01 * i) for i in range(3)])  # 120 points, 3 of them without a normal
    nb = np.vstack([n] * 3)
    pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(big))
    pc.normals = o3d.utility.Vector3dVector(nb)
    o3d.io.write_point_cloud(str(path), pc, write_ascii=ascii_)
    scan = load_scan(path, clean=False)
    assert scan.oriented
    has = np.linalg.norm(nb, axis=1) > 0
    np.testing.assert_allclose(scan.normals[has], nb[has], atol=1e-5)
    assert np.allclose(np.linalg.norm(scan.normals, axis=1), 1.0)  # the missing ones estimated


def test_cloud_normals_flipped_in_patches_are_axes_not_sides(tmp_path):
    """A PCA estimate saved without orientation (Open3D's ``estimate_normals``) flips its
    sides in patches: the cloud counts as unoriented (its sides then come from the fit)
    and the normals keep their axes; scanner normals, one side throughout, stay oriented."""
    import open3d as o3d

    from ssm.fitting.prepare.scan import load_scan

    rng = np.random.default_rng(3)
    u, v = rng.uniform(-1, 1, (2, 4000))
    p = np.stack([80 * u, 80 * v, 30 * (u ** 2 + v ** 2)], 1)  # a bowl, 160 units wide
    n = np.stack([-60 * u / 80, -60 * v / 80, np.ones_like(u)], 1)
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    for name, sides, oriented in (("scanner", np.ones(len(p)), True),
                                  ("patches", np.where(np.sin(u * 7) * np.sin(v * 5) > 0, 1.0, -1.0), False)):
        pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(p))
        pc.normals = o3d.utility.Vector3dVector(n * sides[:, None])
        path = tmp_path / f"{name}.pcd"
        o3d.io.write_point_cloud(str(path), pc)
        scan = load_scan(path, clean=False)
        assert scan.oriented == oriented, name
        np.testing.assert_allclose(np.abs(np.einsum("pd,pd->p", scan.normals, n)), 1.0, atol=1e-5)


def _vrml2(points, polygons, tex=True):
    pts = ",\n".join(" ".join(f"{c:.6f}" for c in p) for p in points)
    idx = ", ".join(", ".join(str(i) for i in poly) + ", -1" for poly in polygons)
    texc = "texCoord TextureCoordinate { point [ 0 0, 1 0, 1 1, 0 1 ] }\n texCoordIndex [ 0 1 2 3 -1 ]\n" if tex else ""
    return (f"Shape {{ appearance Appearance {{ material Material {{ }} }}\n geometry IndexedFaceSet {{\n {texc}"
            f" coordIndex [ {idx} ]\n coord DEF scan_coords Coordinate {{ point [ {pts} ] }}\n }} }}\n")


def test_vrml_scans_2_0_1_0_gzip_and_point_sets(tmp_path):
    import gzip

    from ssm.io.vrml import read_vrml

    quad = np.array([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [10.0, 10.0, 0.0], [0.0, 10.0, 1.0]])
    polys = [[0, 1, 2, 3], [0, 2, 1]]  # a quad (two fan triangles) and a triangle
    second = "Shape { geometry IndexedFaceSet { coord USE scan_coords coordIndex [ 3, 2, 1, -1 ] } }\n"
    text = "#VRML V2.0 utf8\n# exported by a scanner\nTransform { children [\n" + _vrml2(quad, polys) + second + "] }\n"
    (tmp_path / "scan.wrl").write_text(text)
    m = read_mesh(tmp_path / "scan.wrl")
    np.testing.assert_allclose(m.vertices, np.vstack([quad, quad]))  # the texture's points are not vertices
    np.testing.assert_array_equal(m.faces, [[0, 1, 2], [0, 2, 3], [0, 2, 1], [7, 6, 5]])
    (tmp_path / "scan.wrz").write_bytes(gzip.compress(text.encode()))
    np.testing.assert_array_equal(read_mesh(tmp_path / "scan.wrz").faces, m.faces)
    v1 = ("#VRML V1.0 ascii\nSeparator { Coordinate3 { point [ " + ", ".join(" ".join(map(str, p)) for p in quad)
          + " ] }\n IndexedFaceSet { coordIndex [ 0, 1, 2, -1, 0, 2, 3, -1 ] } }\n")
    (tmp_path / "v1.wrl").write_text(v1)
    v, f = read_vrml(tmp_path / "v1.wrl")
    np.testing.assert_allclose(v, quad)
    np.testing.assert_array_equal(f, [[0, 1, 2], [0, 2, 3]])
    cloud = "#VRML V2.0 utf8\nShape { geometry PointSet { coord Coordinate { point [ 1 2 3, 4 5 6 ] } } }\n"
    (tmp_path / "cloud.wrl").write_text(cloud)
    c = read_mesh(tmp_path / "cloud.wrl", allow_points=True)
    assert c.is_point_cloud and c.vertices.shape == (2, 3)
    (tmp_path / "bad.wrl").write_text("#VRML V2.0 utf8\nShape { geometry IndexedFaceSet { coord Coordinate "
                                      "{ point [ 0 0 0, 1 0 0, 0 1 0 ] } coordIndex [ 0, 1, 7, -1 ] } }\n")
    with pytest.raises(InputFileError, match="bad.wrl.*point 7 of 3"):
        read_mesh(tmp_path / "bad.wrl")
    (tmp_path / "not.wrl").write_text("solid x\nendsolid x\n")
    with pytest.raises(InputFileError, match="not.wrl.*not a VRML"):
        read_mesh(tmp_path / "not.wrl")


@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_written_landmarks_read_back_with_names_and_uncertainty(tmp_path, points, suffix):
    from ssm.errors import SSMError
    from ssm.io.landmark_writer import write_landmark_points

    p = points[0][:5]
    names = ["nose tip", "mouth, left corner", 'a "quoted" one', "ibug03", "vertex 17"]
    sd = np.array([0.5, 1.0, np.nan, 2.0, 0.1])
    path = write_landmark_points(tmp_path / f"lm{suffix}", names, p, sd)
    back = read_landmark_points(path)
    assert back.names == tuple(names)
    np.testing.assert_array_equal(back.points, p)  # full precision, no rounding
    if suffix == ".json":  # scalismo: isotropic, per-axis sd / sqrt(3), so the RMS 3D deviation is sd
        assert np.isnan(back.covariances[2]).all()
        ok = np.isfinite(sd)
        np.testing.assert_allclose(np.trace(back.covariances[ok], axis1=1, axis2=2), sd[ok] ** 2)
        np.testing.assert_allclose(back.covariances[0], np.eye(3) * 0.25 / 3)
    else:
        assert (tmp_path / "lm.csv").read_text().splitlines()[0] == "name,x,y,z,stddev"
    with pytest.raises(SSMError, match=r"lm\.txt: cannot write landmarks as \.txt \(use \.csv or \.json\)"):
        write_landmark_points(tmp_path / "lm.txt", names, p)
    assert not (tmp_path / "lm.txt").exists()
