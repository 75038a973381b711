"""--workers: auto resolved with the device (fed GPU, in-process on CPU); loaders with workers persist and prefetch."""
from __future__ import annotations

import pytest
import torch
import typer

from core.commands.options import _check_workers, workers_count
from core.train import data
from core.train.data import MAX_AUTO_WORKERS, PREFETCH_BATCHES, make_loader, resolve_workers


def test_auto_is_in_process_on_cpu_and_derived_from_the_cpus_on_cuda(monkeypatch):
    assert resolve_workers(None, torch.device("cpu")) == 0
    monkeypatch.setattr(data.os, "sched_getaffinity", lambda pid: set(range(4)))
    assert resolve_workers(None, torch.device("cuda")) == 3  # one CPU left for the training process
    monkeypatch.setattr(data.os, "sched_getaffinity", lambda pid: set(range(64)))
    assert resolve_workers(None, torch.device("cuda")) == MAX_AUTO_WORKERS
    monkeypatch.setattr(data.os, "sched_getaffinity", lambda pid: {0})
    assert resolve_workers(None, torch.device("cuda")) == 0


def test_a_given_count_is_kept_on_every_device():
    assert resolve_workers(0, torch.device("cuda")) == 0
    assert resolve_workers(5, torch.device("cpu")) == 5


def test_the_option_takes_auto_or_a_count():
    assert workers_count(_check_workers("auto")) is None
    assert workers_count(_check_workers("0")) == 0
    assert workers_count(_check_workers("3")) == 3
    for bad in ("-1", "two", ""):
        with pytest.raises(typer.BadParameter, match="auto or a number"):
            _check_workers(bad)


def test_loaders_with_workers_persist_and_prefetch():
    numbers = torch.arange(10.0)
    with_workers = make_loader(numbers, 4, shuffle=False, drop_last=False, workers=2, seed=0, pin_memory=False)
    assert with_workers.persistent_workers and with_workers.prefetch_factor == PREFETCH_BATCHES
    in_process = make_loader(numbers, 4, shuffle=False, drop_last=False, workers=0, seed=0, pin_memory=False)
    assert not in_process.persistent_workers
    assert [batch.tolist() for batch in in_process] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_the_trainers_loader_on_cuda_is_fed_by_pinned_persistent_prefetching_workers(tiny_data, tmp_path, monkeypatch):
    """#18 point 3 end to end: the loader train_batches builds for a CUDA run (built only, nothing runs on a GPU)."""
    from test_speed_equivalence import fold_options, tiny_recipe

    from core.data.metadata import load_source
    from core.runtime import Runtime
    from core.train.data import prepare_data
    from core.train.fold import train_batches

    recipe = tiny_recipe(augment=dict(wave_prob=0.5, noise_max=0.01, gain_min=0.8, gain_max=1.2))
    options = fold_options(tmp_path, tmp_path / "cache", workers=None)
    prepared = prepare_data(recipe, load_source(tiny_data), options)
    rows = prepared.fold_rows(1)[0]
    monkeypatch.setattr(data.os, "sched_getaffinity", lambda pid: set(range(6)))
    on_cuda = train_batches(prepared, rows, recipe, 4, Runtime(torch.device("cuda"), "bf16", True), options, 1, None)
    assert on_cuda.num_workers == 5 and on_cuda.pin_memory and on_cuda.persistent_workers
    assert on_cuda.prefetch_factor == PREFETCH_BATCHES
    assert on_cuda.dataset.transform is None  # the step augments on the GPU (core/train/device_augment.py)
    on_cpu = train_batches(prepared, rows, recipe, 4, Runtime(torch.device("cpu"), "fp32", False), options, 1, None)
    assert on_cpu.num_workers == 0 and not on_cpu.pin_memory and on_cpu.dataset.transform is not None
