"""Shared fixtures: small synthetic data made here, and ../shared/data when present."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SSM_SHARED_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """The tests' on-disk array cache (ssm.io.array_cache) is their own, not the user's."""
    old = os.environ.get("SSM_CACHE_DIR")
    os.environ["SSM_CACHE_DIR"] = str(tmp_path_factory.mktemp("ssm-cache"))
    yield
    if old is None:
        os.environ.pop("SSM_CACHE_DIR", None)
    else:
        os.environ["SSM_CACHE_DIR"] = old


def shared_file(rel: str) -> Path:
    """Path to a file in ../shared/data, or skip the test with the reason."""
    p = SHARED / rel
    if not p.exists():
        pytest.skip(f"shared evaluation data not found at {p} (set SSM_SHARED_DATA to its folder)")
    return p


def grid_triangles(nu: int, nv: int) -> np.ndarray:
    """(2 (nu-1)(nv-1), 3) triangles of an nu x nv vertex grid (row-major, u fastest)."""
    i, j = np.meshgrid(np.arange(nu - 1), np.arange(nv - 1))
    a = (j * nu + i).ravel()
    return np.concatenate([np.stack([a, a + 1, a + nu + 1], 1), np.stack([a, a + nu + 1, a + nu], 1)])


@pytest.fixture(scope="session")
def generator():
    from ssm.demo.synthetic_heads import make_generator

    return make_generator(n_lat=20, n_lon=32)


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory, generator):
    """80 posed synthetic heads (about 650 vertices) with landmarks, float64."""
    from ssm.demo.synthetic_heads import sample_heads
    from ssm.io.corpus import write_corpus

    v, params = sample_heads(generator, 80, seed=3)
    path = tmp_path_factory.mktemp("corpus") / "small.h5"
    write_corpus(path, v, generator.triangles, landmarks=generator.landmarks, regions=generator.regions,
                 dtype=np.float64)
    return path


@pytest.fixture(scope="session")
def ict():
    """The ICT head model arrays (skips when ../shared is absent)."""
    return np.load(shared_file("ict_head/ict_head.npz"))
