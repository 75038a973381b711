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


# ------------------------------------------------------------------ the fold's one loader (#18 point 3)

def test_the_epoch_loader_draws_make_loaders_order_for_each_seed_and_shards_like_it():
    """Same clips in the same batches as make_loader (hence as ResidentBatches), alone and per rank."""
    from core.runtime import Replicas
    from core.train.data import make_epoch_loader, set_epoch_seed

    positions = _Positions(23)
    for replicas in (None, Replicas(rank=1, local_rank=1, world_size=3)):
        epoch_loader = make_epoch_loader(positions, 4, drop_last=True, workers=0, seed=5, pin_memory=False,
                                         replicas=replicas)
        for seed in (5, 6, 5):
            set_epoch_seed(epoch_loader, seed)
            reference = make_loader(positions, 4, shuffle=True, drop_last=True, workers=0, seed=seed, pin_memory=False,
                                    replicas=replicas)
            assert [batch[0].tolist() for batch in epoch_loader] == [batch.tolist() for batch in reference]


def test_item_seeds_differ_across_ranks_and_places():
    from core.runtime import Replicas
    from core.train.data import EpochSampler

    ranks = [list(EpochSampler(10, 3, Replicas(rank=rank, local_rank=rank, world_size=2))) for rank in (0, 1)]
    seeds = [seed for pairs in ranks for _, seed in pairs]
    assert len(set(seeds)) == len(seeds) == 10
    assert list(EpochSampler(10, 3)) == list(EpochSampler(10, 3))  # from the seed alone
    assert [seed for _, seed in EpochSampler(10, 3)] != [seed for _, seed in EpochSampler(10, 4)]


def _epoch_batches(loader, seed: int) -> list[tuple]:
    from core.train.data import set_epoch_seed

    set_epoch_seed(loader, seed)
    return [tuple(part.clone() for part in batch) for batch in loader]


def _same(batches, others) -> bool:
    return len(batches) == len(others) and all(
        all(torch.equal(part, other) for part, other in zip(batch, other_batch, strict=True))
        for batch, other_batch in zip(batches, others, strict=True))


def test_one_loader_serves_every_epoch_with_the_same_batches_whatever_the_workers(tiny_data, tmp_path):
    """Workers 0 and 2 give identical augmented epochs from one loader; a fresh loader replays an epoch
    (resume); the workers are started once and serve both epochs."""
    from test_speed_equivalence import fold_options, tiny_recipe

    from core.data.metadata import load_source
    from core.runtime import Runtime
    from core.train.data import WaveformDataset, make_epoch_loader, prepare_data
    from core.train.fold import train_batches

    recipe = tiny_recipe(augment=dict(wave_prob=0.7, noise_max=0.05, gain_min=0.5, gain_max=1.5))
    options = fold_options(tmp_path, tmp_path / "cache")
    prepared = prepare_data(recipe, load_source(tiny_data), options)
    rows = prepared.fold_rows(1)[0]
    runtime = Runtime(torch.device("cpu"), "fp32", False)

    def loader(workers: int):
        return train_batches(prepared, rows, recipe, 4, runtime, options, 11, None, workers=workers)

    in_process, with_workers = loader(0), loader(2)
    assert with_workers.dataset.transform is not None
    epochs = [_epoch_batches(in_process, seed) for seed in (11, 12)]
    first = _epoch_batches(with_workers, 11)
    worker_pids = [worker.pid for worker in with_workers._iterator._workers]
    second = _epoch_batches(with_workers, 12)
    assert [worker.pid for worker in with_workers._iterator._workers] == worker_pids  # not restarted
    assert all(worker.is_alive() for worker in with_workers._iterator._workers)
    assert _same(first, epochs[0]) and _same(second, epochs[1])
    assert not _same(epochs[0], epochs[1])
    raw = make_epoch_loader(WaveformDataset(prepared.train, rows), 4, drop_last=True, workers=0, seed=11,
                            pin_memory=False)
    raw_first = next(iter(raw))
    assert torch.equal(raw_first[1], epochs[0][0][1])  # the same clips ...
    assert not torch.equal(raw_first[0], epochs[0][0][0])  # ... augmented: the batches compared are not raw clips
    assert _same(_epoch_batches(loader(0), 12), epochs[1])  # a resumed epoch 2 from a fresh loader


class _Positions(torch.utils.data.Dataset):
    """0..n-1 as a dataset; an EpochSampler's loader hands it (position, item seed) pairs, batched as two tensors."""

    def __init__(self, count: int) -> None:
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, item):
        return item
