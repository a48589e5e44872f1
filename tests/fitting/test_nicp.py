"""Non-rigid ICP's point-to-plane targets."""



import numpy as np


def test_nicp_plane_targets_move_only_along_the_normal():
    """Point-to-plane targets are the feet on the tangent plane: no tangential pull."""
    from ssm.fitting.refine.nicp import plane_targets

    x = np.array([[0.0, 0.0, 1.0], [2.0, 3.0, -1.0], [0.0, 0.0, 0.0]])
    y = np.array([[5.0, -4.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    n = np.array([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])  # last: normal unknown
    np.testing.assert_allclose(plane_targets(x, y, n, 1.0), [[0, 0, 0], [2, 3, 0], [1, 1, 1]])
    np.testing.assert_allclose(plane_targets(x, y, n, 0.0), y)
    np.testing.assert_allclose(plane_targets(x, y, n, 0.5)[0], [2.5, -2.0, 0.0])
