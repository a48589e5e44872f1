"""The ICT-FaceKit head model (USC ICT, MIT licence) as this project's model file: the
identity PCA, the 53 ARKit-style expression blendshapes under their names, the iBUG-68
landmarks, the face regions and the UV layout (reading the arrays of
``../shared/data/ict_head/ict_head.npz``; its README lists them)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ssm.errors import InputFileError
from ssm.models.blendshapes import Blendshapes
from ssm.models.shape_model import ShapeModel

SOURCE = ("ICT-FaceKit 'ICT Face Model Light' (USC Institute for Creative Technologies, MIT licence), "
          "skin of the face, head and neck")
NEEDED = ("mean", "identity_modes", "expression_deltas", "expression_names", "triangles", "uv", "triangle_uvs",
          "landmarks68", "face_vertex_count", "narrow_face_vertex_count")


def ict_head_model(path: str | os.PathLike) -> tuple[ShapeModel, Blendshapes]:
    """(the identity model, the expression blendshapes) of an ICT head file (.npz).

    The identity modes are scaled principal components of the whole ICT mesh (a head is
    ``mean + sum_k c_k mode_k``, ``c ~ N(0, 1)``); cut to the skin they are no longer
    orthogonal, so the model holds the principal components of the same Gaussian: the
    left singular vectors of the modes as the basis and the squared singular values as
    the variances (the same distribution of heads; its coefficients are not the file's).
    Stored float32, as the file has them (mm). The scans were
    registered without scale normalisation, so the model's size varies with its
    coefficients (``provenance['align'] = 'rigid'``: a scan in known units is fitted at
    its own scale)."""
    path = Path(path)
    try:
        d = np.load(path, allow_pickle=False)
        arrays = {k: d[k] for k in NEEDED}
    except (OSError, ValueError) as exc:
        raise InputFileError(path, f"not a readable ICT head file ({exc})", "see ../shared/data/README.md") from None
    except KeyError as exc:
        raise InputFileError(path, f"has no {exc} array", "see ../shared/data/README.md for its arrays") from None
    modes = arrays["identity_modes"].astype(np.float64)
    n_modes, n = modes.shape[0], modes.shape[1]
    u, s, _ = np.linalg.svd(modes.reshape(n_modes, -1).T, full_matrices=False)  # (3N, K), vertex-interleaved
    u *= np.where(u[np.argmax(np.abs(u), axis=0), np.arange(n_modes)] < 0, -1.0, 1.0)  # a fixed sign per component
    face, narrow = int(arrays["face_vertex_count"]), int(arrays["narrow_face_vertex_count"])
    model = ShapeModel(
        mean=arrays["mean"].astype(np.float32), basis=u.astype(np.float32), variances=(s ** 2).astype(np.float32),
        triangles=arrays["triangles"].astype(np.int32),
        landmarks={f"ibug{i:02d}": int(v) for i, v in enumerate(arrays["landmarks68"])},
        regions={"face": np.arange(face, dtype=np.int64), "narrow_face": np.arange(narrow, dtype=np.int64)},
        units="mm", uv=arrays["uv"].astype(np.float32), triangle_uvs=arrays["triangle_uvs"].astype(np.int32),
        provenance={"builder": "ssm.io.ict_facekit", "source": SOURCE, "align": "rigid",
                    "n_components": n_modes, "n_vertices": n})
    shapes = Blendshapes(tuple(str(s) for s in arrays["expression_names"]),
                         arrays["expression_deltas"].astype(np.float32), (0.0, 1.0))
    return model, shapes
