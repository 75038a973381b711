"""Shared fixtures: a tiny synthetic dataset (built once per session) and an isolated cache."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A Kaggle-layout synthetic set: 8 folds x 10 classes x 1 clip, 10 labelled test clips."""
    from core.demo.synth import write_synthetic_dataset

    root = tmp_path_factory.mktemp("tiny") / "data"
    write_synthetic_dataset(root, seed=1, clips_per_class_fold=1, test_clips_per_class=1)
    return root


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Every test session writes its waveform cache to a temporary folder, not the repo's cache/."""
    cache = tmp_path_factory.getbasetemp() / "waveform-cache"
    monkeypatch.setenv("US8K_CACHE_DIR", str(cache))
    return cache


@pytest.fixture
def one_torch_thread():
    """One intra-op thread: on a shared 2-core machine, two spinning OpenMP threads per op slow small ops down."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for running `python -m core` from any folder."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env
