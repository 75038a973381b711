"""Run options: how to train (device, folds, output), as opposed to what to train (the recipe)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TrainOptions:
    out: Path                               # the solution folder (checkpoints, CSVs, summary)
    submissions: Path = Path("submissions") # where the fold-average submission goes
    folds: tuple[int, ...] | None = None    # None: the recipe's folds
    epochs: int | None = None               # None: the recipe's epochs
    device: str = "auto"
    precision: str = "auto"
    workers: int | None = None              # None: auto (core.train.data.resolve_workers)
    seed: int | None = None                 # None: the recipe's seed
    skip_bad_audio: bool = False
    progress: bool = True
    write_outputs: bool = True              # False: no files at all (hyper-parameter trials)
    max_clips_per_fold: int | None = None   # N clips of each train fold, round-robin over classes (quick runs)
    max_test_clips: int | None = None
    cache_dir: Path | None = None
    channels_last: bool | None = None       # None: on CUDA only
    compile: bool = False                   # torch.compile the backbone (in place: checkpoints unchanged)
    compile_backend: str = "inductor"       # torch.compile backend ("aot_eager" checks the wiring without a C++ build)
    device_cache: bool = False              # the training split's waveforms as one device tensor
    device_augment: bool | None = None      # waveform noise + gain on the batch's device; None: on CUDA only
    test_salience: int | None = None        # salience to assume for a test split without that column
    protocol: str = "kaggle"                # "kaggle" | "us8k-10fold" (core/folds.py)
    tensorboard: Path | None = None         # also write per-epoch scalars for TensorBoard under this folder
    accumulate: int = 1                     # --accumulate K: each SAM pass over K micro-batches of batch/K
    recipe_changes: tuple[str, ...] = ()    # recipe fields --params changed beyond its searched values (recorded)
    init_from: Path | None = None           # fine-tune: start each fold from this checkpoint (core/train/init_from.py)
    freeze_backbone_epochs: int = 0         # the first N epochs train only what follows the backbone
