"""Train one fold: the pieces around the loop (settings, identity, resume state, validation predictions).

The loop itself is the trainer object in core/train/trainer.py (its methods are the seams a
solution overrides); `train_fold` runs the trainer the recipe names.

Speed switches (TrainOptions; docs/gpu.md): bf16/fp16 autocast with SAM-aware loss scaling,
channels_last, pinned memory with non-blocking copies, --device-cache (the training split resident
on the device), --compile (the backbone through torch.compile), and DistributedDataParallel under
torchrun (core/train/distributed.py). None of them changes what is computed: tests compare each
against the plain path (tests/test_speed_equivalence.py, tests/test_ddp.py).
"""
from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from core import atomic
from core.errors import UserError
from core.metrics import Scores
from core.model.network import build_model
from core.progress import TrainProgress
from core.recipe import Recipe
from core.runtime import Runtime  # noqa: F401  (moved to core/runtime.py; kept importable here)
from core.solution_folder import SolutionFolder
from core.train import checkpoint, distributed, init_from
from core.train.data import (
    PreparedData,
    ResidentBatches,
    ResidentSplit,
    Split,
    WaveformDataset,
    make_epoch_loader,
    make_loader,
    resolve_workers,
    worker_augment,
)
from core.train.options import TrainOptions
from core.train.precision import LossScaler, autocast
from core.train.run_identity import IDENTITY_KEY, RunIdentity, check_identity, run_identity
from core.train.sam import SAM
from core.train.schedules import Schedule


@dataclass
class EpochRecord:
    fold: int
    epoch: int
    lr: float
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    val_macro_f1: float
    val_composite: float
    seconds: float
    skipped_steps: int
    best: bool


@dataclass
class FoldResult:
    fold: int
    best_epoch: int
    best: Scores
    history: list[dict] = field(default_factory=list)
    identity: RunIdentity | None = None


def epoch_seed(seed: int, fold: int, epoch: int) -> int:
    """Every epoch's randomness derives from (seed, fold, epoch): resuming replays it exactly."""
    return (seed * 1_000_003 + fold * 10_007 + epoch) % 2 ** 31


def build_on_device(recipe: Recipe, runtime: Runtime, seed: int = 0, fold: int = 0) -> torch.nn.Module:
    """The recipe's model on the run's device and memory format, initialised from (seed, fold).

    Training builds each fold's model from its own (seed, fold); inference builds one the same way
    and then loads a checkpoint over it.
    """
    torch.manual_seed(epoch_seed(seed, fold, 0))  # per-fold init, independent of earlier folds
    model = build_model(recipe).to(runtime.device)
    if runtime.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def compile_backbone(model: torch.nn.Module, backend: str = "inductor") -> None:
    """torch.compile the backbone in place (its state_dict keys, hence checkpoints, do not change).

    The backbone is nearly all of a step's work. The frontend stays eager: PCEN is a custom autograd
    Function writing into reused buffers and SpecAugment draws new masks on every call, and together
    they are a few percent of a step (benchmarks/step.py).
    """
    model.backbone.compile(backend=backend)


def train_batches(data: PreparedData, rows: np.ndarray, recipe: Recipe, batch_size: int, runtime: Runtime,
                  options: TrainOptions, seed: int, resident: ResidentSplit | None,
                  workers: int | None = None) -> DataLoader | ResidentBatches:
    """The shuffled training batches of the epoch drawn from `seed`: from the device cache if given, else
    a DataLoader (make_epoch_loader) that later epochs reuse after `set_epoch_seed`, keeping its workers.

    Both paths draw the same order from `seed` (and shard it the same way under torchrun).
    """
    replicas = distributed.current()
    drop_last = recipe.training.drop_last
    if resident is not None:
        return ResidentBatches(resident, rows, batch_size, shuffle=True, drop_last=drop_last, seed=seed,
                               replicas=replicas)
    augment = worker_augment(recipe.augment, runtime.device, options)  # None where the step augments on the device
    dataset = WaveformDataset(data.train, rows, augment, recipe.frontend.sample_rate)
    return make_epoch_loader(dataset, batch_size, drop_last=drop_last,
                             workers=resolve_workers(options.workers, runtime.device) if workers is None else workers,
                             seed=seed, pin_memory=runtime.device.type == "cuda", replicas=replicas)


@dataclass(frozen=True)
class FoldSettings:
    """Recipe + run options resolved once: the settings one fold run actually uses."""

    epochs: int
    seed: int
    batch_size: int          # per process: the recipe's batch split over torchrun replicas
    out: Path
    writes: bool             # this process writes files (rank 0, outputs enabled)
    runtime: Runtime

    @classmethod
    def resolve(cls, recipe: Recipe, options: TrainOptions) -> FoldSettings:
        training, replicas = recipe.training, distributed.current()
        batch_size = distributed.per_replica_batch(training.batch_size, replicas)
        if options.accumulate > batch_size:
            raise UserError(f"--accumulate {options.accumulate} exceeds the batch of {batch_size} clips per process: "
                            f"use --accumulate {batch_size} or less")
        return cls(epochs=training.epochs if options.epochs is None else options.epochs,
                   seed=training.seed if options.seed is None else options.seed,
                   batch_size=distributed.per_replica_batch(training.batch_size, replicas),
                   out=Path(options.out), writes=options.write_outputs and replicas.is_main,
                   runtime=Runtime.from_options(options))


def fold_identity(recipe: Recipe, data: PreparedData, fold: int, options: TrainOptions) -> RunIdentity:
    """What must match for a fold's resume state or finished outputs to belong to this run.

    The precision is the one actually used (what `auto` resolved to here): machines of other kinds
    agree only when --precision is pinned (docs/gpu.md).
    """
    settings = FoldSettings.resolve(recipe, options)
    return run_identity(recipe, fold=fold, epochs=settings.epochs, seed=settings.seed, protocol=data.protocol,
                        processes=distributed.current().world_size, precision=settings.runtime.precision,
                        train_table=data.train.table, init_from=init_from.identity_value(options.init_from),
                        freeze_backbone_epochs=options.freeze_backbone_epochs, accumulate=options.accumulate)


class Stateful(Protocol):
    """What the resume state saves and restores besides its counters (TrainingParts, the trainer)."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


@dataclass
class TrainingParts:
    """The stateful objects of one fold's training (what a resume restores besides the counters)."""

    model: torch.nn.Module
    sam: SAM
    schedule: Schedule
    scaler: LossScaler

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.sam.state_dict(),
                "scheduler": self.schedule.scheduler.state_dict(), "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.sam.load_state_dict(state["optimizer"])
        self.schedule.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])


@dataclass
class ResumeState:
    """Where a fold stands after its last finished epoch; saved every epoch as last_fold<k>.pt.

    No RNG state: every epoch reseeds from (seed, fold, epoch) (`seed_all`), so none is needed.
    """

    epoch: int = 0
    best_value: float = -math.inf
    best_epoch: int = 0
    history: list[dict] = field(default_factory=list)

    def save(self, path: Path, solution: str, identity: RunIdentity, parts: Stateful) -> None:
        checkpoint.save_torch_state(path, {
            "solution": solution, IDENTITY_KEY: identity.fields, "epoch": self.epoch, **parts.state_dict(),
            "best_value": self.best_value, "best_epoch": self.best_epoch, "history": self.history,
        })

    @classmethod
    def restore(cls, folder: SolutionFolder, fold: int, identity: RunIdentity, parts: Stateful,
                enabled: bool) -> ResumeState:
        """The state saved for `fold` loaded into `parts` (rank 0 reads, every rank loads); fresh if none.

        Rank 0 also settles the best checkpoint the state records (see `settle_best_checkpoint`).
        """
        if not enabled:  # no files at all (hyper-parameter trials)
            return cls()
        replicas = distributed.current()
        state = None
        if replicas.is_main:
            state = read_resume_state(folder, fold, identity)
            settle_best_checkpoint(folder, fold, state["best_epoch"] if state else 0)
        state = distributed.broadcast_object(state)
        if state is None:
            return cls()
        parts.load_state_dict(state)
        return cls(state["epoch"], state["best_value"], state["best_epoch"], list(state["history"]))

    def record(self, epoch: int, value: float) -> bool:
        """Count epoch `epoch` with selection value `value`; True if it is the new best.

        Strict, as in the reference: ties keep the earlier epoch.
        """
        self.epoch = epoch
        if value > self.best_value:
            self.best_value, self.best_epoch = value, epoch
            return True
        return False


def train_fold(recipe: Recipe, data: PreparedData, fold: int, options: TrainOptions,
               on_epoch: Callable[[EpochRecord], None] | None = None,
               progress: TrainProgress | None = None) -> FoldResult:
    """Train fold training `fold` of the data's protocol; resume from `out/last_fold<k>.pt` if present.

    Trains on the protocol's train folds and picks the best epoch on its validation fold (the
    recipe's select_metric, strictly better only); a test fold is not touched here. Every epoch
    saves the resume state; a best epoch's checkpoint is staged first and published as
    best_model_fold<k>.pt only once the resume state records it, so after a kill anywhere the best
    checkpoint, history and result agree even if a replayed epoch scores differently. Under torchrun every
    rank calls this; rank 0 alone writes files (see core/train/distributed.py). The loop is the
    trainer that recipe.training.trainer names (core/train/trainer.py).
    """
    from core.train.trainer import trainer_class  # the trainer builds on this module's pieces

    return trainer_class(recipe)(recipe, data, fold, options, progress).fit(on_epoch)


def read_resume_state(folder: SolutionFolder, fold: int, identity: RunIdentity) -> dict | None:
    """The resume state of `fold` if there is one; refuse a state of another run's settings."""
    path = folder.resume(fold)
    if not path.exists():
        return None
    state = checkpoint.load(path)
    check_identity(identity, state.get(IDENTITY_KEY), str(path), fold,
                   f"delete {path} to train fold {fold} from its first epoch")
    return state


def settle_best_checkpoint(folder: SolutionFolder, fold: int, best_epoch: int) -> None:
    """Make best_model_fold<k>.pt the checkpoint of `best_epoch`, the best epoch the resume state records.

    A staged candidate of that epoch was killed before its publication: publish it. A staged
    candidate of a later epoch was never recorded (that epoch is replayed): drop it. Without a
    resume state (`best_epoch` 0) the fold starts over and no earlier best checkpoint may survive.
    """
    staged, best = folder.staged_best(fold), folder.best_model(fold)
    if staged.exists():
        if best_epoch and checkpoint.load(staged).get("epoch") == best_epoch:
            atomic.publish(staged, best)
        else:
            staged.unlink()
    if not best_epoch:
        best.unlink(missing_ok=True)
        return
    if not best.exists() or checkpoint.load(best).get("epoch") != best_epoch:
        raise UserError(f"{best} does not hold epoch {best_epoch}, the best epoch {folder.resume(fold)} records "
                        f"(it was changed by hand?). Delete {folder.resume(fold)} to train fold {fold} again.")


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def prediction_batches(split: Split, rows: np.ndarray, batch_size: int, runtime: Runtime, options: TrainOptions,
                       resident: ResidentSplit | None = None) -> DataLoader | ResidentBatches:
    """The batches `predict` reads for `rows` (this process's share under torchrun: `predicted_rows`), in
    order: from the device-resident split, or a DataLoader whose workers persist, so a fold's validation can
    build it once and read it every epoch without starting workers again."""
    if resident is not None:
        return ResidentBatches(resident, rows, batch_size, shuffle=False, drop_last=False, seed=0)
    return make_loader(WaveformDataset(split, rows), batch_size, shuffle=False, drop_last=False,
                       workers=resolve_workers(options.workers, runtime.device), seed=0,
                       pin_memory=runtime.device.type == "cuda")


def predicted_rows(rows: np.ndarray) -> np.ndarray:
    """The rows this process predicts: all of them, or its shard under torchrun."""
    return distributed.shard(np.asarray(rows)) if distributed.current().enabled else rows


@torch.no_grad()
def predict(model: torch.nn.Module, split: Split, rows: np.ndarray, batch_size: int, runtime: Runtime,
            options: TrainOptions, resident: ResidentSplit | None = None,
            batches: DataLoader | ResidentBatches | None = None) -> tuple[np.ndarray, float]:
    """Softmax probabilities [len(rows), classes] in eval mode; also the mean CE loss where labels are known.

    `resident`: `split` held on the device (--device-cache), read instead of the memmap. Under
    torchrun each rank predicts every world_size-th row and all ranks get every row back. `batches`:
    prediction_batches of predicted_rows(rows), kept by the caller to be read again (else built here).
    """
    if batches is None:
        batches = prediction_batches(split, predicted_rows(rows), batch_size, runtime, options, resident)
    if not distributed.current().enabled:
        probs, loss_sum, counted = _predict_rows(model, batches, runtime)
        return probs, loss_sum / max(counted, 1)
    parts = distributed.gather_shards(_predict_rows(model, batches, runtime))
    probs = distributed.unshard([part[0] for part in parts])
    return probs, sum(part[1] for part in parts) / max(sum(part[2] for part in parts), 1)


def _predict_rows(model: torch.nn.Module, batches: DataLoader | ResidentBatches,
                  runtime: Runtime) -> tuple[np.ndarray, float, int]:
    """(probabilities, summed CE loss over the labelled rows, number of labelled rows) of `batches`, in order."""
    model.eval()
    chunks, losses, counted = [], 0.0, 0
    for waveforms, labels, salience in batches:
        waveforms = waveforms.to(runtime.device, non_blocking=True)
        salience = salience.to(runtime.device, non_blocking=True)
        with autocast(runtime.device, runtime.precision):
            logits = model(waveforms, salience).float()
        labels = labels.cpu()
        known = labels >= 0
        if known.any():
            losses += F.cross_entropy(logits.cpu()[known], labels[known], reduction="sum").item()
            counted += int(known.sum())
        chunks.append(torch.softmax(logits, dim=1).cpu().numpy())
    probs = np.concatenate(chunks) if chunks else np.zeros((0, 10), dtype=np.float32)
    return probs.astype(np.float32), losses, counted
