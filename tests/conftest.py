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


def tiny(name: str):
    """Solution `name`'s recipe on a small frontend (8 kHz, 32 mels, 4 s clips) and timm's 0.4M-parameter
    `test_resnet`: same code paths (PCEN, fusion, heads, SAM), a fraction of the compute."""
    from core import registry

    return registry.get(name).derive(
        frontend=dict(sample_rate=8000, n_ffts=(256,), hop_length=80, n_mels=32, f_max=4000.0),
        backbone=dict(arch="test_resnet"), augment=dict(freq_mask=8, time_mask=10))


def save_fold_checkpoints(root: Path, name: str, folds=(1,), recipe=None) -> Path:
    """`root/<name>/best_model_fold<k>.pt` of freshly initialised models whose BatchNorm statistics have
    seen a few real-looking clips (a stand-in for trained checkpoints: same files, same loading path)."""
    import torch

    from core import registry
    from core.model.network import build_model
    from core.train import checkpoint

    recipe = recipe or registry.get(name)
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    clips = torch.stack([torch.from_numpy(demo_clip(index, recipe.frontend.sample_rate,
                                                    recipe.frontend.num_samples)) for index in range(4)])
    for fold in folds:
        torch.manual_seed(fold)
        model = build_model(recipe).train()
        with torch.no_grad():
            model(clips, torch.tensor([1, 2, 1, 2]))
        checkpoint.save_best(folder / f"best_model_fold{fold}.pt", recipe, fold, 1, {}, model.eval())
    return folder


def demo_clip(index: int, sample_rate: int = 32000, num_samples: int = 128000, seconds: float = 4.0):
    """A real-looking mono clip (the synthetic generator's class `index % 10`), float32 [num_samples]."""
    import numpy as np

    from core.data.audio import fit_length
    from core.demo.synth import ClipPlan, render_clip

    plan = ClipPlan(slice_file_name="x.wav", fs_id=1, start=0.0, seconds=seconds, salience=1 + index % 2,
                    class_id=index % 10, fold=1, test_id=None, sample_rate=sample_rate, channels=1,
                    subtype="PCM_16")
    return fit_length(render_clip(plan, 0, index)[:, 0], num_samples).astype(np.float32)
