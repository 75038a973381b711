"""`train --tensorboard DIR`: the per-epoch scalars of each fold, and the run's settings as hparams."""
from __future__ import annotations

from pathlib import Path

from core.recipe import Recipe

SCALARS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_macro_f1", "val_composite", "lr")


def run_folder(root: Path, solution: str, protocol: str, fold: int) -> Path:
    """One TensorBoard run per fold training: DIR/<solution>/<protocol>/fold<k>."""
    return Path(root) / solution / protocol / f"fold{fold}"


def hparams_of(recipe: Recipe, epochs: int, seed: int, protocol: str) -> dict[str, float | int | str | bool]:
    """The settings TensorBoard's HParams view compares runs by (scalars and strings only)."""
    training, augment, frontend = recipe.training, recipe.augment, recipe.frontend
    return {"solution": recipe.name, "protocol": protocol, "epochs": epochs, "seed": seed,
            "batch_size": training.batch_size, "lr": training.lr, "weight_decay": training.weight_decay,
            "rho": training.rho, "schedule": training.schedule, "label_smoothing": training.label_smoothing,
            "mixup_alpha": augment.mixup_alpha, "freq_mask": augment.freq_mask, "time_mask": augment.time_mask,
            "n_mels": frontend.n_mels, "n_ffts": "+".join(map(str, frontend.n_ffts)),
            "select_metric": training.select_metric}


class FoldScalars:
    """Writes one fold's epoch records as scalars (tag = history column, step = epoch)."""

    def __init__(self, root: Path, recipe: Recipe, protocol: str, fold: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_folder(root, recipe.name, protocol, fold)))

    def add_epoch(self, record) -> None:
        for tag in SCALARS:
            self.writer.add_scalar(tag, getattr(record, tag), record.epoch)
        self.writer.flush()

    def close(self, hparams: dict, best_value: float, metric: str) -> None:
        self.writer.add_hparams(hparams, {f"best/val_{metric}": best_value}, run_name=".")
        self.writer.close()
