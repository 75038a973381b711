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
