"""From a validated DataSource to batches: cached waveforms, fold splits, waveform augmentation.

Two ways to batch a split, with the same clips in the same batches for the same seed:
- `make_loader`: a DataLoader over the float16 memmap (workers, waveform augmentation, pinned memory);
  `make_epoch_loader` is its training form, built once per fold and re-seeded each epoch (`set_epoch_seed`),
  so that its workers persist across epochs;
- `ResidentBatches` (--device-cache): the split held on the device as one tensor, batches gathered
  by index there, in the order of an identically seeded DataLoader over row positions.
"""
from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from core.atomic import write_csv
from core.data.cache import load_waveforms
from core.data.metadata import LAYOUT_NAMES, DataSource
from core.errors import UserError
from core.folds import HELD_OUT_PROTOCOLS, SALIENCE_VALUES, FoldRoles, fold_roles, protocol_folds
from core.recipe import Augment, Recipe
from core.solution_folder import SolutionFolder
from core.train import distributed
from core.train.device_augment import MIN_NOISE_AMPLITUDE, WaveAugment, gain_to_db, runs_on_device
from core.train.distributed import Replicas
from core.train.options import TrainOptions

MAX_AUTO_WORKERS = 8      # --workers auto on CUDA: min(this, CPUs - 1), one CPU left for the training process
PREFETCH_BATCHES = 4      # batches each worker keeps ready, so the GPU does not wait on a slow item
DEVICE_CACHE_SHARE = 0.5   # the resident split may fill at most half of the free device memory
RESIDENT_CHUNK_ROWS = 256  # rows copied to the device at a time: no full-size host copy of the memmap


@dataclass
class Split:
    """Rows of one split with their waveforms (row i of `table` is row i of `waveforms`)."""

    table: pd.DataFrame
    waveforms: np.ndarray  # float16 memmap [N, num_samples]

    def labels(self) -> np.ndarray:
        return self.table["classID"].to_numpy(dtype=np.int64)

    def salience(self) -> np.ndarray:
        return self.table["salience"].to_numpy(dtype=np.int64)


@dataclass
class PreparedData:
    """The labelled folds (`train`) and the separate test split, ready for every fold training.

    Under the kaggle protocol `train` holds folds 1-8 and `test` the test split; under us8k-10fold
    `train` holds all ten labelled folds (each fold training tests one of them) and `test` is None;
    under kfold the same with the data set's labelled folds.
    """

    source: DataSource
    train: Split
    test: Split | None
    bad_audio: dict[str, str]
    protocol: str = "kaggle"

    def roles(self, fold: int) -> FoldRoles:
        """The folds' roles in fold training `fold`; refused when a fold it needs has no clips."""
        roles = fold_roles(self.protocol, fold, self.folds)
        present = set(self.train.table["fold"].tolist())
        needed = [roles.validation] + ([roles.test] if roles.test is not None else [])
        missing = [k for k in needed if k not in present]
        if missing:
            raise UserError(f"fold {missing[0]} has no clips in {self.source.root} (needed by fold training {fold} "
                            f"of the {self.protocol} protocol); folds present: {sorted(present)}")
        return roles

    @property
    def folds(self) -> tuple[int, ...] | None:
        """The data's folds the protocol works on (see `protocol_data_folds`)."""
        return protocol_data_folds(self.source, self.protocol)

    def fold_keys(self) -> tuple[int, ...]:
        """Every fold training of the protocol on this data (the k of its output files)."""
        return protocol_folds(self.protocol, self.folds)

    def fold_rows(self, fold: int) -> tuple[np.ndarray, np.ndarray]:
        """Positions in `train` of the training rows and of the validation rows of fold training `fold`."""
        roles = self.roles(fold)
        folds = self.train.table["fold"].to_numpy()
        return np.flatnonzero(np.isin(folds, roles.train)), np.flatnonzero(folds == roles.validation)

    def test_rows(self, fold: int) -> np.ndarray | None:
        """Positions in `train` of the test fold of fold training `fold` (None: the separate test split)."""
        roles = self.roles(fold)
        if roles.test is None:
            return None
        return np.flatnonzero(self.train.table["fold"].to_numpy() == roles.test)


def prepare_data(recipe: Recipe, source: DataSource, options: TrainOptions) -> PreparedData:
    """Cache (or reuse) the audio of the protocol's splits at the recipe's rate and length."""
    if options.protocol in HELD_OUT_PROTOCOLS:
        folds = all_labelled_folds(source) if options.protocol == "us8k-10fold" else _train_salience(recipe, source.labelled)
        train, bad = prepare_split(_limit_train(folds, options.max_clips_per_fold), recipe, options)
        _write_bad_audio(bad, options)
        return PreparedData(source, train, None, bad, options.protocol)
    train, train_bad = prepare_split(_train_salience(recipe, _limit_train(source.train, options.max_clips_per_fold)),
                                     recipe, options)
    test, test_bad = prepare_test(recipe, source, options)
    bad = {**train_bad, **test_bad}
    _write_bad_audio(bad, options)
    return PreparedData(source, train, test, bad)


def protocol_data_folds(source: DataSource, protocol: str) -> tuple[int, ...] | None:
    """The folds `protocol` works on: kaggle, those beside the test split; kfold, every labelled fold;
    us8k-10fold, None (UrbanSound8K's ten)."""
    if protocol == "kfold":
        return source.folds
    return source.cross_validation_folds if protocol == "kaggle" else None


def check_protocol(source: DataSource, protocol: str) -> None:
    """`train --protocol kaggle` predicts a separate test split: refused on data that defines none.

    (`tune` validates on fold k and predicts no test split: it may use any data's folds.)
    """
    if protocol == "kaggle" and len(source.test) == 0:
        raise UserError(f"--protocol kaggle predicts a separate test split, and the {LAYOUT_NAMES[source.layout]} "
                        f"data in {source.root} defines none; use --protocol kfold (test fold k, validate on k+1, "
                        "train on the rest)")


def all_labelled_folds(source: DataSource) -> pd.DataFrame:
    """Folds 1-10 with labels and salience, for the us8k-10fold protocol (the official layout only)."""
    if source.all_folds is None:
        raise UserError(f"--protocol us8k-10fold needs the official UrbanSound8K layout (metadata/UrbanSound8K.csv "
                        f"with folds 1-10 labelled); {source.root} is in the {source.layout} layout, whose test "
                        "clips have no folds. Use --protocol kaggle there, or point --data at the official layout.")
    return source.all_folds


def _write_bad_audio(bad: dict[str, str], options: TrainOptions) -> None:
    """skipped_audio.csv lists the clips --skip-bad-audio dropped."""
    if bad and options.write_outputs and distributed.current().is_main:
        report = pd.DataFrame(sorted(bad.items()), columns=["path", "reason"])
        write_csv(report, SolutionFolder(options.out).skipped_audio)


def prepare_test(recipe: Recipe, source: DataSource, options: TrainOptions) -> tuple[Split, dict[str, str]]:
    """The test split (salience checked for models that need it) with its cached audio."""
    table = source.test if options.max_test_clips is None else source.test.head(options.max_test_clips)
    return prepare_split(_test_salience(recipe, table, options), recipe, options)


def prepare_split(table: pd.DataFrame, recipe: Recipe, options: TrainOptions) -> tuple[Split, dict[str, str]]:
    """Load the rows' waveforms through the cache; rows of skipped bad files are dropped."""
    frontend = recipe.frontend
    cache = load_waveforms(list(table["path"]), frontend.sample_rate, frontend.num_samples,
                           cache_dir=options.cache_dir, skip_bad=options.skip_bad_audio,
                           progress=options.progress)
    keep = ~table["path"].isin(cache.bad.keys()).to_numpy()
    rows = np.flatnonzero(keep)
    waveforms = cache.waveforms if keep.all() else cache.waveforms[rows]
    return Split(table.iloc[rows].reset_index(drop=True), waveforms), dict(cache.bad)


def _limit_train(train: pd.DataFrame, per_fold: int | None) -> pd.DataFrame:
    """`per_fold` clips of each fold, taken round-robin over its classes (the first clip of every class,
    then the second, ...), in metadata order: a quick subset that still holds every class."""
    if per_fold is None:
        return train
    turn = train.groupby(["fold", "classID"], sort=False).cumcount()
    by_turn = train.assign(turn=turn.to_numpy()).sort_values("turn", kind="stable")
    keep = by_turn.groupby("fold", sort=False).head(per_fold).index
    return train.loc[sorted(keep)].reset_index(drop=True)


def _train_salience(recipe: Recipe, train: pd.DataFrame) -> pd.DataFrame:
    """Training rows whose salience is unknown (data without it) get 1, unused by a model that does not fuse it.

    A fusion recipe never gets here on such data (core/train/own_data.py refuses it first).
    """
    if recipe.fusion.uses_salience or not train["salience"].isna().any():
        return train
    return train.assign(salience=train["salience"].fillna(1).astype(np.int64))


def _test_salience(recipe: Recipe, test: pd.DataFrame, options: TrainOptions) -> pd.DataFrame:
    """A salience model needs test salience from the metadata, or an explicit --test-salience."""
    test = test.copy()
    if options.test_salience is not None:
        if options.test_salience not in SALIENCE_VALUES:
            raise UserError(f"--test-salience must be 1 (foreground) or 2 (background), got {options.test_salience}")
        test["salience"] = test["salience"].fillna(options.test_salience)
    if recipe.fusion.uses_salience and test["salience"].isna().any():
        missing = int(test["salience"].isna().sum())
        raise UserError(
            f"{recipe.name} uses salience, but {missing} test rows have none (the test metadata has no "
            "'salience' column or empty cells). Add the column, or pass --test-salience 1|2 to assume one."
        )
    if not recipe.fusion.uses_salience:
        test["salience"] = test["salience"].fillna(1)  # unused by this model; keeps batches integer
    test["salience"] = test["salience"].astype(np.int64)
    return test


class WaveformDataset(Dataset):
    """Items (waveform float32 [L], label, salience) from a cached split, optionally augmented."""

    def __init__(self, split: Split, rows: np.ndarray, augment: Augment | None = None,
                 sample_rate: int = 32000) -> None:
        self.waveforms = split.waveforms
        self.rows = np.asarray(rows)
        labels = split.table["classID"]
        self.labels = labels.fillna(-1).to_numpy(dtype=np.int64)  # test labels may be unknown
        self.salience = split.salience()
        self.transform = build_waveform_augmentation(augment) if augment is not None else None
        self.sample_rate = sample_rate

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, item: int | tuple[int, int]):
        """Item `item`, or (position, item seed) from an EpochSampler: the clip's augmentation then comes
        from its item seed alone, whichever process (worker or not) and how many workers load it."""
        item, item_seed = item if isinstance(item, tuple) else (item, None)
        row = self.rows[item]
        # Copy the float16 row out of the read-only memmap, then let torch widen it: its vectorised
        # cast is ~3x numpy's astype here (benchmarks/input.py). Exact either way.
        waveform = torch.from_numpy(np.array(self.waveforms[row])).float()
        if self.transform is not None:
            rngs = contextlib.nullcontext() if item_seed is None else _seeded_global_rngs(item_seed)
            with rngs:
                waveform = torch.from_numpy(self.transform(samples=waveform.numpy(), sample_rate=self.sample_rate))
        return waveform, int(self.labels[row]), int(self.salience[row])


@contextlib.contextmanager
def _seeded_global_rngs(seed: int) -> Iterator[None]:
    """Python's and numpy's global RNGs (audiomentations draws from both) seeded with `seed`, and put back
    after: with --workers 0 the training process's own streams are left as they were."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed)
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def build_waveform_augmentation(augment: Augment):
    """Gaussian noise then gain on the raw waveform (audiomentations), with probability wave_prob."""
    if WaveAugment.from_augment(augment) is None:  # also says which recipe field audiomentations would assert on
        return None
    from audiomentations import AddGaussianNoise, Compose, Gain

    return Compose([
        AddGaussianNoise(min_amplitude=MIN_NOISE_AMPLITUDE, max_amplitude=augment.noise_max, p=1.0),
        Gain(min_gain_db=gain_to_db(augment.gain_min), max_gain_db=gain_to_db(augment.gain_max), p=1.0),
    ], p=augment.wave_prob)


def worker_augment(augment: Augment, device: torch.device, options: TrainOptions) -> Augment | None:
    """The augmentation the DataLoader workers apply per clip: the recipe's, unless the training step
    applies it to the batch on the device (core/train/device_augment.py: on CUDA by default)."""
    return None if runs_on_device(augment, device, options) else augment


def resolve_workers(workers: int | None, device: torch.device) -> int:
    """--workers: a count is kept; None (auto) is min(8, CPUs - 1) on CUDA, so the GPU is fed while it
    computes, and 0 on the CPU, where workers would take cores from the step itself."""
    if workers is not None:
        return workers
    if device.type != "cuda":
        return 0
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(MAX_AUTO_WORKERS, cpus - 1))


def make_loader(dataset: Dataset, batch_size: int, *, shuffle: bool, drop_last: bool,
                workers: int, seed: int, pin_memory: bool, replicas: Replicas | None = None) -> DataLoader:
    """A DataLoader whose order and worker RNG depend only on `seed` (resumable, reproducible).

    With `replicas` of more than one process, a DistributedSampler shards the (padded) epoch: every
    rank shuffles with the same seed and takes every world_size-th clip, so all ranks run the same
    number of batches; worker RNGs differ per rank so waveform augmentation does not repeat.
    """
    generator = torch.Generator()
    if replicas is None or not replicas.enabled:
        generator.manual_seed(seed)
        drop_last = drop_last and len(dataset) > batch_size  # tiny sets still yield a batch
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
                          num_workers=workers, pin_memory=pin_memory, generator=generator,
                          worker_init_fn=_seed_worker, **_worker_settings(workers))
    from torch.utils.data.distributed import DistributedSampler

    sampler = DistributedSampler(dataset, num_replicas=replicas.world_size, rank=replicas.rank, shuffle=shuffle,
                                 seed=seed, drop_last=False)
    generator.manual_seed(seed * replicas.world_size + replicas.rank)
    drop_last = drop_last and sampler.num_samples > batch_size
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last,
                      num_workers=workers, pin_memory=pin_memory, generator=generator,
                      worker_init_fn=_seed_worker, **_worker_settings(workers))


class EpochSampler(Sampler):
    """Training order of one epoch, re-drawn from the seed `set_epoch_seed` gives, as (position, item seed) pairs.

    The order is exactly make_loader's for that seed (so ResidentBatches, which takes make_loader's,
    yields the same clips in the same batches): a shuffled DataLoader draws its workers' base seed from
    the generator, then the permutation; with `replicas` of more than one process, DistributedSampler's
    padded shard of the epoch. Each clip's item seed is drawn from the epoch seed by its place in the
    (whole, padded) epoch, so its augmentation depends on neither the worker count nor the worker.
    """

    def __init__(self, count: int, seed: int, replicas: Replicas | None = None) -> None:
        self.count, self.seed = count, seed
        self.replicas = replicas if replicas is not None and replicas.enabled else None

    def set_epoch_seed(self, seed: int) -> None:
        """Draw the next pass from `seed` (the epoch seed): the loader and its workers stay as they are."""
        self.seed = seed

    def __len__(self) -> int:
        if self.replicas is None:
            return self.count
        return -(-self.count // self.replicas.world_size)  # DistributedSampler's num_samples (drop_last=False)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.replicas is None:
            generator = torch.Generator().manual_seed(self.seed)
            torch.empty((), dtype=torch.int64).random_(generator=generator)  # the DataLoader's base-seed draw
            order = torch.randperm(self.count, generator=generator).tolist()
            seeds = _item_seeds(self.seed, len(order))
            return iter(zip(order, seeds, strict=True))
        from torch.utils.data.distributed import DistributedSampler

        world, rank = self.replicas.world_size, self.replicas.rank
        sampler = DistributedSampler(range(self.count), num_replicas=world, rank=rank, shuffle=True, seed=self.seed,
                                     drop_last=False)
        seeds = _item_seeds(self.seed, len(sampler) * world)[rank::world]  # by place in the padded epoch
        return iter(zip(list(sampler), seeds, strict=True))


def _item_seeds(seed: int, count: int) -> list[int]:
    """`count` seeds for the clips of the epoch drawn from `seed`, one per place in the epoch."""
    return np.random.default_rng([seed, 0x5EED]).integers(0, 2 ** 32, size=count).tolist()


def make_epoch_loader(dataset: Dataset, batch_size: int, *, drop_last: bool, workers: int, seed: int,
                      pin_memory: bool, replicas: Replicas | None = None) -> DataLoader:
    """The training DataLoader of a fold: the batches of make_loader(shuffle=True) for `seed`, and for
    each later epoch's seed after `set_epoch_seed(loader, seed)`, from the same loader, whose workers
    (persistent) then live for the whole fold. Waveform augmentation is seeded per clip (EpochSampler),
    so the batches are the same with any number of workers, and a resumed epoch replays exactly.
    """
    sampler = EpochSampler(len(dataset), seed, replicas)
    drop_last = drop_last and len(sampler) > batch_size  # tiny sets still yield a batch
    # Its own generator: the loader's base-seed draw must not consume torch's global RNG (dropout draws from it).
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last, num_workers=workers,
                      pin_memory=pin_memory, generator=generator, **_worker_settings(workers))


def set_epoch_seed(loader: DataLoader, seed: int) -> None:
    """Point a make_epoch_loader loader at the epoch drawn from `seed` (before iterating it)."""
    loader.sampler.set_epoch_seed(seed)


def _worker_settings(workers: int) -> dict:
    """With workers: they live as long as the loader (no restart per pass) and each prefetches batches."""
    if workers == 0:
        return {"persistent_workers": False}
    return {"persistent_workers": True, "prefetch_factor": PREFETCH_BATCHES}


def _seed_worker(worker_id: int) -> None:
    # audiomentations draws from numpy's and python's global RNGs: derive them from torch's per-worker seed.
    import random

    seed = torch.initial_seed() % 2 ** 32
    np.random.seed(seed)
    random.seed(seed)


# ------------------------------------------------------------------------------ the device cache

@dataclass
class ResidentSplit:
    """A split held on one device (--device-cache): waveforms as stored in the cache, labels and salience."""

    waveforms: torch.Tensor  # float16 [N, num_samples], row i = row i of the split
    labels: torch.Tensor     # int64 [N], -1 where unknown
    salience: torch.Tensor   # int64 [N]

    @property
    def device(self) -> torch.device:
        return self.waveforms.device

    def gather(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(float32 waveforms, labels, salience) of `rows` (an int64 tensor on the device)."""
        return self.waveforms[rows].float(), self.labels[rows], self.salience[rows]


def make_resident(split: Split, device: torch.device) -> ResidentSplit:
    """Copy a split's cached waveforms to `device` once, chunk by chunk; refuse clearly if they do not fit."""
    check_device_cache_fits(split.waveforms.nbytes, device)
    waveforms = torch.empty(split.waveforms.shape, dtype=_torch_dtype(split.waveforms.dtype), device=device)
    for start in range(0, len(waveforms), RESIDENT_CHUNK_ROWS):
        chunk = torch.from_numpy(np.array(split.waveforms[start:start + RESIDENT_CHUNK_ROWS]))  # a writable copy
        waveforms[start:start + len(chunk)].copy_(chunk)
    labels = split.table["classID"].fillna(-1).to_numpy(dtype=np.int64)  # as WaveformDataset reads them
    return ResidentSplit(waveforms, torch.tensor(labels, device=device), torch.tensor(split.salience(), device=device))


def check_device_cache_fits(nbytes: int, device: torch.device) -> None:
    """Raise a UserError unless `nbytes` is at most DEVICE_CACHE_SHARE of the device's free memory.

    On CUDA, memory PyTorch has cached but not allocated counts as free (ours to reuse): from fold 2
    on the previous fold's freed blocks are still reserved.

    CPU memory is known on Linux only; elsewhere the copy is attempted without this check.
    """
    free = _free_memory(device)
    if free is None or nbytes <= DEVICE_CACHE_SHARE * free:
        return
    raise UserError(f"--device-cache needs {nbytes / 2 ** 30:.2f} GiB on {device} for the training waveforms, but "
                    f"only {free / 2 ** 30:.2f} GiB are free there (counting PyTorch's reusable cache; at most "
                    f"{DEVICE_CACHE_SHARE:.0%} may be used, the rest is for training). Drop --device-cache "
                    "(the DataLoader path gives the same results), or use a device with more memory.")


def check_device_cache_allowed(augment: Augment, on_device: bool = False) -> None:
    """The device cache skips the CPU workers, so the waveform augmentation must run on the device (`on_device`)."""
    if not on_device and build_waveform_augmentation(augment) is not None:
        raise UserError(f"--device-cache cannot be used with this recipe: its waveform noise/gain augmentation "
                        f"(wave_prob={augment.wave_prob:g}) runs in the DataLoader workers on the CPU (on CUDA it runs on "
                        "the device, where --device-cache takes it). Drop --device-cache for this solution here.")


class ResidentBatches:
    """Batches of `rows` gathered on the device from a ResidentSplit.

    The order comes from `make_loader` over row positions with the same arguments as the waveform
    DataLoader (same sampler, generator and seed), so both yield the same clips in the same batches.
    """

    def __init__(self, resident: ResidentSplit, rows: np.ndarray, batch_size: int, *, shuffle: bool,
                 drop_last: bool, seed: int, replicas: Replicas | None = None) -> None:
        self.resident = resident
        self.rows = torch.as_tensor(np.asarray(rows), dtype=torch.int64).to(resident.device)
        self.positions = make_loader(_Positions(len(rows)), batch_size, shuffle=shuffle, drop_last=drop_last,
                                     workers=0, seed=seed, pin_memory=False, replicas=replicas)

    def __len__(self) -> int:
        return len(self.positions)

    def __iter__(self):
        for positions in self.positions:
            yield self.resident.gather(self.rows[positions.to(self.resident.device, non_blocking=True)])


class _Positions(Dataset):
    """0..n-1 as a dataset: a DataLoader over it yields the row positions of each batch."""

    def __init__(self, count: int) -> None:
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, item: int) -> int:
        return item


def cuda_usable_bytes(driver_free: int, reserved: int, allocated: int) -> int:
    """Memory this process can still fill: what the driver calls free plus PyTorch's cached, unused blocks.

    The driver counts every block PyTorch's caching allocator holds as used, including blocks freed by
    an earlier fold (reserved - allocated); the allocator hands those out again before asking for more.
    """
    return int(driver_free) + max(int(reserved) - int(allocated), 0)


def _torch_dtype(dtype: np.dtype) -> torch.dtype:
    return torch.from_numpy(np.zeros(0, dtype=dtype)).dtype


def _free_memory(device: torch.device) -> int | None:
    """Bytes we may still fill on `device` (CUDA: cuda_usable_bytes; CPU: MemAvailable on Linux; None: unknown)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return cuda_usable_bytes(free, torch.cuda.memory_reserved(device), torch.cuda.memory_allocated(device))
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None
