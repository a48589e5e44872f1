"""Landmark files as annotation tools write them: MeshLab picked points, 3D Slicer markups
(JSON, legacy fcsv, control-point CSV), tab-separated and header-named CSV, NumPy arrays;
and matching their names (or their absence) to a model's landmarks."""

import json

import numpy as np
import pytest

from ssm.errors import InputFileError
from ssm.fitting.prepare.landmarks import match_landmarks
from ssm.io.landmarks import read_landmark_points

P = np.array([[-31.5, 40.25, 12.0], [33.0, 41.5, 11.75], [0.5, 5.0, 45.125], [-22.0, -30.0, 20.5]])
IBUG = {f"ibug{i:02d}": 100 + i for i in range(68)}  # a model naming iBUG-68 points


def test_meshlab_pp_names_inactive_points_and_default_names(tmp_path):
    names = ["right eye outer", "left eye outer", "nose tip", "right mouth corner"]
    pts = "\n".join(f' <point x="{x}" y="{y}" z="{z}" active="{0 if i == 1 else 1}" name="{n}"/>'
                    for i, ((x, y, z), n) in enumerate(zip(P, names)))
    (tmp_path / "lm.pp").write_text(f"<!DOCTYPE PickedPoints>\n<PickedPoints>\n <DocumentData>\n"
                                    f'  <DataFileName name="scan.ply"/>\n </DocumentData>\n{pts}\n</PickedPoints>\n')
    lp = read_landmark_points(tmp_path / "lm.pp")
    assert lp.names == tuple(names)
    np.testing.assert_array_equal(lp.points[[0, 2, 3]], P[[0, 2, 3]])
    assert np.isnan(lp.points[1]).all()  # switched off in MeshLab: missing
    m = match_landmarks(IBUG, lp, "lm.pp")
    assert m.names == ("ibug36", "ibug30", "ibug48")  # the inactive left eye corner is dropped
    # MeshLab's own names only count the points: they are an order, not iBUG indices
    plain = pts
    for n, k in zip(names, range(4)):
        plain = plain.replace(f'name="{n}"', f'name="{k}"')
    (tmp_path / "count.pp").write_text(f"<PickedPoints>\n{plain}\n</PickedPoints>\n")
    assert read_landmark_points(tmp_path / "count.pp").names is None
    (tmp_path / "bad.pp").write_text("<PickedPoints><point x='1' y='2'/></PickedPoints>")
    with pytest.raises(InputFileError, match="bad.pp.*point 1"):
        read_landmark_points(tmp_path / "bad.pp")


def test_slicer_markups_json_ras_is_turned_to_lps_and_undefined_points_are_missing(tmp_path):
    def doc(system, labels, status=("defined",) * 4):
        cps = [{"id": str(i + 1), "label": lab, "position": list(p), "positionStatus": st}
               for i, (lab, p, st) in enumerate(zip(labels, P, status))]
        return {"@schema": "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/"
                           "Resources/Schema/markups-schema-v1.0.3.json#",
                "markups": [{"type": "Fiducial", "coordinateSystem": system, "controlPoints": cps}]}

    (tmp_path / "lps.mrk.json").write_text(json.dumps(doc("LPS", ["nasion", "nose tip", "chin", "subnasale"])))
    lp = read_landmark_points(tmp_path / "lps.mrk.json")
    np.testing.assert_array_equal(lp.points, P)
    assert lp.names == ("nasion", "nose tip", "chin", "subnasale")
    (tmp_path / "ras.mrk.json").write_text(json.dumps(doc("RAS", [f"F-{i}" for i in range(1, 5)],
                                                          ("defined", "undefined", "defined", "defined"))))
    lp = read_landmark_points(tmp_path / "ras.mrk.json")
    assert lp.names is None  # Slicer's default labels F-1, F-2, ... only count
    np.testing.assert_array_equal(lp.points[[0, 2, 3]], P[[0, 2, 3]] * [-1, -1, 1])
    assert np.isnan(lp.points[1]).all()


def test_slicer_fcsv_columns_labels_and_coordinate_system(tmp_path):
    rows = "\n".join(f"vtkMRMLMarkupsFiducialNode_{i},{x},{y},{z},0,0,0,1,1,1,0,{lab},," for i, ((x, y, z), lab)
                     in enumerate(zip(P, ["right_eye_outer", "left_eye_outer", "nose_tip", "chin"])))
    head = "# Markups fiducial file version = 4.11\n# CoordinateSystem = {}\n" \
           "# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID\n"
    (tmp_path / "lps.fcsv").write_text(head.format("LPS") + rows + "\n")
    (tmp_path / "ras.fcsv").write_text(head.format("0") + rows + "\n")
    lps, ras = read_landmark_points(tmp_path / "lps.fcsv"), read_landmark_points(tmp_path / "ras.fcsv")
    np.testing.assert_array_equal(lps.points, P)
    np.testing.assert_array_equal(ras.points, P * [-1, -1, 1])
    assert match_landmarks(IBUG, lps).names == ("ibug36", "ibug45", "ibug30", "ibug08")


def test_csv_header_picks_named_columns_tabs_and_one_based_numbering(tmp_path):
    # Slicer's control-point table: label, r, a, s (RAS) and a 'defined' flag
    lines = ["label,r,a,s,defined,selected,visible,locked,description"]
    lines += [f"{n},{x},{y},{z},{'false' if n == 'chin' else 'true'},true,true,false,"
              for n, (x, y, z) in zip(["nasion", "nose tip", "subnasale", "chin"], P)]
    (tmp_path / "table.csv").write_text("\n".join(lines) + "\n")
    lp = read_landmark_points(tmp_path / "table.csv")
    assert lp.names == ("nasion", "nose tip", "subnasale", "chin")
    np.testing.assert_array_equal(lp.points[:3], P[:3] * [-1, -1, 1])
    assert np.isnan(lp.points[3]).all()
    # extra columns around named x, y, z; confidence is ignored
    lines = ["Landmark,confidence,X (mm),Y (mm),Z (mm)"] + [f"lm{i},0.9,{x},{y},{z}" for i, (x, y, z) in
                                                           zip([36, 45, 30, 8], P)]
    (tmp_path / "extra.csv").write_text("\n".join(lines) + "\n")
    lp = read_landmark_points(tmp_path / "extra.csv")
    np.testing.assert_array_equal(lp.points, P)
    assert match_landmarks(IBUG, lp).names == ("ibug36", "ibug45", "ibug30", "ibug08")
    # tab-separated, numbered 1..4: a count, so rows are taken in order (not iBUG 1..4)
    (tmp_path / "tabs.txt").write_text("".join(f"{i + 1}\t{x}\t{y}\t{z}\n" for i, (x, y, z) in enumerate(P)))
    lp = read_landmark_points(tmp_path / "tabs.txt")
    assert lp.names is None
    np.testing.assert_array_equal(lp.points, P)
    (tmp_path / "short.csv").write_text("name,x,y,z\nnasion,1,2\n")
    with pytest.raises(InputFileError, match="short.csv.*row 1"):
        read_landmark_points(tmp_path / "short.csv")


def test_npy_landmarks(tmp_path):
    np.save(tmp_path / "lm.npy", P)
    np.testing.assert_array_equal(read_landmark_points(tmp_path / "lm.npy").points, P)
    np.save(tmp_path / "flat.npy", P[:, :2])
    with pytest.raises(InputFileError, match="flat.npy.*2D"):
        read_landmark_points(tmp_path / "flat.npy")


# menpo3d's group order for the iBUG-68 points, as its james asset is written
MENPO3D_PARTS = [("chin", 0, 17), ("leye", 36, 6), ("reye", 42, 6), ("leyebrow", 17, 5), ("nose", 27, 9),
                 ("reyebrow", 22, 5), ("mouth", 48, 20)]


def _ibug68_points() -> np.ndarray:
    return np.column_stack([np.arange(68.0), np.arange(68.0) * 2.0, np.full(68, 7.0)])


def test_ljson_groups_in_another_order_are_read_in_ibug_order(tmp_path):
    truth = _ibug68_points()
    order = np.concatenate([np.arange(a, a + n) for _, a, n in MENPO3D_PARTS])  # file row -> iBUG index
    labels, start = [], 0
    for name, _, n in MENPO3D_PARTS:
        labels.append({"label": name, "mask": list(range(start, start + n))})
        start += n
    v3 = {"version": 3, "groups": {"LJSON": {"labels": labels,
                                             "landmarks": {"points": truth[order].tolist(), "connectivity": []}}}}
    (tmp_path / "v3.ljson").write_text(json.dumps(v3))
    np.testing.assert_array_equal(read_landmark_points(tmp_path / "v3.ljson").points, truth)
    # LJSON v1: one landmark list per group
    v1 = {"version": 1, "groups": [{"label": name, "landmarks": [{"point": p} for p in truth[a:a + n].tolist()]}
                                   for name, a, n in MENPO3D_PARTS]}
    (tmp_path / "v1.ljson").write_text(json.dumps(v1))
    np.testing.assert_array_equal(read_landmark_points(tmp_path / "v1.ljson").points, truth)
    # groups that are not iBUG-68 parts: the file's own order stands
    v3["groups"]["LJSON"]["labels"] = [{"label": "all", "mask": list(range(68))}]
    (tmp_path / "other.ljson").write_text(json.dumps(v3))
    np.testing.assert_array_equal(read_landmark_points(tmp_path / "other.ljson").points, truth[order])


def test_menpo3d_james_ljson_matches_the_ibug_csv():
    from conftest import shared_file

    ljson = read_landmark_points(shared_file("interop/james_menpo.ljson")).points
    csv_ = read_landmark_points(shared_file("scans/james_landmarks68.csv")).points
    np.testing.assert_allclose(ljson, csv_, atol=1e-3)


def test_semicolon_csv_with_decimal_commas_and_a_point_name_column(tmp_path):
    """Spreadsheets in decimal-comma locales write ';'-separated CSV; tools name the name
    column in their own words ("Point name")."""
    (tmp_path / "eu.csv").write_text("Punkt;x;y;z\nright eye outer;-31,5;40,25;12\nnose tip;0,5;5;45,125\n"
                                     "left eye outer;33;41,5;11,75\n")
    lp = read_landmark_points(tmp_path / "eu.csv")
    assert lp.names == ("right eye outer", "nose tip", "left eye outer")
    np.testing.assert_array_equal(lp.points, P[[0, 2, 1]])
    (tmp_path / "plain.csv").write_text("-31,5;40,25;12\n;;\n0,5;5;45,125\n")
    lp = read_landmark_points(tmp_path / "plain.csv")
    assert lp.names is None and np.isnan(lp.points[1]).all()
    np.testing.assert_array_equal(lp.points[[0, 2]], P[[0, 2]])
    (tmp_path / "cc.csv").write_text("Point name,X,Y,Z\nright eye outer,-31.5,40.25,12\nnose tip,0.5,5,45.125\n")
    lp = read_landmark_points(tmp_path / "cc.csv")
    assert lp.names == ("right eye outer", "nose tip")
    assert match_landmarks(IBUG, lp, "cc.csv").names == ("ibug36", "ibug30")
