"""From a validated DataSource to batches: cached waveforms, fold splits, waveform augmentation."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from core.atomic import write_csv
from core.data.cache import load_waveforms
from core.data.metadata import DataSource
from core.errors import UserError
from core.recipe import Augment, Recipe
from core.train.options import TrainOptions


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
    """Train and test splits ready for every fold."""

    source: DataSource
    train: Split
    test: Split
    bad_audio: dict[str, str]

    def fold_rows(self, fold: int) -> tuple[np.ndarray, np.ndarray]:
        """Positions of the training rows and of the held-out rows for validation fold `fold`."""
        folds = self.train.table["fold"].to_numpy()
        if fold not in set(folds.tolist()):
            raise UserError(f"fold {fold} has no clips in {self.source.root}; folds present: {sorted(set(folds.tolist()))}")
        return np.flatnonzero(folds != fold), np.flatnonzero(folds == fold)


def prepare_data(recipe: Recipe, source: DataSource, options: TrainOptions) -> PreparedData:
    """Cache (or reuse) the audio of both splits at the recipe's rate and length."""
    train_table = _limit_train(source.train, options.max_clips_per_fold)
    test_table = source.test if options.max_test_clips is None else source.test.head(options.max_test_clips)
    test_table = _test_salience(recipe, test_table, options)
    frontend = recipe.frontend
    bad: dict[str, str] = {}
    splits = []
    for table in (train_table, test_table):
        cache = load_waveforms(list(table["path"]), frontend.sample_rate, frontend.num_samples,
                               cache_dir=options.cache_dir, skip_bad=options.skip_bad_audio,
                               progress=options.progress)
        keep = ~table["path"].isin(cache.bad.keys()).to_numpy()
        bad.update(cache.bad)
        rows = np.flatnonzero(keep)
        waveforms = cache.waveforms if keep.all() else cache.waveforms[rows]
        splits.append(Split(table.iloc[rows].reset_index(drop=True), waveforms))
    if bad and options.write_outputs:
        report = pd.DataFrame(sorted(bad.items()), columns=["path", "reason"])
        write_csv(report, Path(options.out) / "skipped_audio.csv")
    return PreparedData(source, splits[0], splits[1], bad)


def _limit_train(train: pd.DataFrame, per_fold: int | None) -> pd.DataFrame:
    if per_fold is None:
        return train
    return train.groupby("fold", sort=False, group_keys=False).head(per_fold).reset_index(drop=True)


def _test_salience(recipe: Recipe, test: pd.DataFrame, options: TrainOptions) -> pd.DataFrame:
    """A salience model needs test salience from the metadata, or an explicit --test-salience."""
    test = test.copy()
    if options.test_salience is not None:
        if options.test_salience not in (1, 2):
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

    def __getitem__(self, item: int):
        row = self.rows[item]
        waveform = np.asarray(self.waveforms[row], dtype=np.float32)
        if self.transform is not None:
            waveform = self.transform(samples=waveform, sample_rate=self.sample_rate)
        return torch.from_numpy(waveform), int(self.labels[row]), int(self.salience[row])


def build_waveform_augmentation(augment: Augment):
    """Gaussian noise then gain on the raw waveform (audiomentations), with probability wave_prob."""
    if augment.wave_prob <= 0:
        return None
    from audiomentations import AddGaussianNoise, Compose, Gain

    to_db = lambda gain: float(20.0 * np.log10(gain))  # noqa: E731 - linear gain range -> dB
    return Compose([
        AddGaussianNoise(min_amplitude=1e-6, max_amplitude=augment.noise_max, p=1.0),
        Gain(min_gain_db=to_db(augment.gain_min), max_gain_db=to_db(augment.gain_max), p=1.0),
    ], p=augment.wave_prob)


def make_loader(dataset: WaveformDataset, batch_size: int, *, shuffle: bool, drop_last: bool,
                workers: int, seed: int, pin_memory: bool) -> DataLoader:
    """A DataLoader whose order and worker RNG depend only on `seed` (resumable, reproducible)."""
    generator = torch.Generator()
    generator.manual_seed(seed)
    drop_last = drop_last and len(dataset) > batch_size  # tiny sets still yield a batch
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
                      num_workers=workers, pin_memory=pin_memory, generator=generator,
                      worker_init_fn=_seed_worker, persistent_workers=False)


def _seed_worker(worker_id: int) -> None:
    # audiomentations draws from numpy's and python's global RNGs: derive them from torch's per-worker seed.
    import random

    seed = torch.initial_seed() % 2 ** 32
    np.random.seed(seed)
    random.seed(seed)
