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
    from ssm.synthetic.heads import make_generator

    return make_generator(n_lat=20, n_lon=32)


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory, generator):
    """80 posed synthetic heads (about 650 vertices) with landmarks, float64."""
    from ssm.io.corpus import write_corpus
    from ssm.synthetic.heads import sample_heads

    v, params = sample_heads(generator, 80, seed=3)
    path = tmp_path_factory.mktemp("corpus") / "small.h5"
    write_corpus(path, v, generator.triangles, landmarks=generator.landmarks, regions=generator.regions,
                 dtype=np.float64)
    return path


@pytest.fixture(scope="session")
def ict():
    """The ICT head model arrays (skips when ../shared is absent)."""
    return np.load(shared_file("ict_head/ict_head.npz"))


@pytest.fixture(scope="session")
def head_generator():
    """The demo's head generator (2,561 vertices): fine enough for millimetre fits."""
    from ssm.synthetic.heads import make_generator

    return make_generator()


@pytest.fixture(scope="session")
def synth_model(head_generator, tmp_path_factory):
    """A model of 120 synthetic heads (mm, the demo's resolution, float64)."""
    from ssm.io.corpus import write_corpus
    from ssm.synthetic.heads import sample_heads
    from ssm.training.trainer import ModelTrainer

    v, _ = sample_heads(head_generator, 120, seed=21)
    p = tmp_path_factory.mktemp("fit") / "c.h5"
    write_corpus(p, v, head_generator.triangles, landmarks=head_generator.landmarks, dtype=np.float64)
    return ModelTrainer(0.9999, device="cpu").fit(p).model_


def synthetic_case(head_generator, seed, units="cm", views="three"):
    """A random head of the generator (mm) and a raw scan of it (``units``; three views)."""
    from ssm.synthetic.raw_scans import make_raw_scan

    rng = np.random.default_rng(seed)
    truth = head_generator.heads(rng.standard_normal(head_generator.fields.shape[0]))[0]
    raw = make_raw_scan(truth, head_generator.triangles, views=views, spacing_mm=1.5, noise_mm=0.2, units=units,
                        seed=seed)
    return truth, raw


@pytest.fixture(scope="session")
def ict_model(tmp_path_factory):
    """The ICT arrays and the benchmarks' model of 300 ICT subjects (skips without ../shared)."""
    from ssm.io.corpus import write_corpus
    from ssm.synthetic.ict_cases import load_ict, subjects
    from ssm.training.trainer import ModelTrainer

    ict = load_ict(shared_file("ict_head/ict_head.npz"))
    p = tmp_path_factory.mktemp("ict") / "c.h5"
    write_corpus(p, subjects(ict, 300, seed=1), ict.triangles, landmarks=ict.landmark_names)
    return ict, ModelTrainer(None, device="cpu").fit(p).model_
