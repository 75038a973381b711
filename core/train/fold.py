"""Train one fold: SAM steps, per-epoch validation, best checkpoint, resumable every epoch.

Speed switches (TrainOptions; docs/gpu.md): bf16/fp16 autocast with SAM-aware loss scaling,
channels_last, pinned memory with non-blocking copies, --device-cache (the training split resident
on the device), --compile (the backbone through torch.compile), and DistributedDataParallel under
torchrun (core/train/distributed.py). None of them changes what is computed: tests compare each
against the plain path (tests/test_speed_equivalence.py, tests/test_ddp.py).
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from core.atomic import write_csv
from core.errors import UserError
from core.metrics import Scores, score
from core.model.network import build_model
from core.recipe import Recipe
from core.train import checkpoint, distributed
from core.train.data import (PreparedData, ResidentBatches, ResidentSplit, Split, WaveformDataset,
                             check_device_cache_allowed, make_loader, make_resident)
from core.train.mixup import Mix, draw_mix, mix_batch, mixed_correct, mixed_cross_entropy
from core.train.options import TrainOptions
from core.train.precision import LossScaler, autocast, configure_backends, resolve_device, resolve_precision
from core.train.progress import TrainProgress
from core.train.sam import SAM
from core.train.schedules import build_schedule

import pandas as pd


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
    fingerprint: str = ""


@dataclass
class Runtime:
    """Resolved device and precision for a run."""

    device: torch.device
    precision: str
    channels_last: bool

    @classmethod
    def from_options(cls, options: TrainOptions) -> "Runtime":
        device = distributed.replica_device(resolve_device(options.device), distributed.current())
        precision = resolve_precision(options.precision, device)
        channels_last = device.type == "cuda" if options.channels_last is None else options.channels_last
        return cls(device, precision, channels_last)


def epoch_seed(seed: int, fold: int, epoch: int) -> int:
    """Every epoch's randomness derives from (seed, fold, epoch): resuming replays it exactly."""
    return (seed * 1_000_003 + fold * 10_007 + epoch) % 2 ** 31


def build_for_training(recipe: Recipe, runtime: Runtime, seed: int, fold: int) -> torch.nn.Module:
    """The recipe's model, freshly initialised from (seed, fold), on the run's device and memory format."""
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
    """The shuffled training batches of one epoch: from the device cache if given, else a DataLoader.

    Both paths draw the same order from `seed` (and shard it the same way under torchrun).
    """
    replicas = distributed.current()
    drop_last = recipe.training.drop_last
    if resident is not None:
        return ResidentBatches(resident, rows, batch_size, shuffle=True, drop_last=drop_last, seed=seed,
                               replicas=replicas)
    dataset = WaveformDataset(data.train, rows, recipe.augment, recipe.frontend.sample_rate)
    return make_loader(dataset, batch_size, shuffle=True, drop_last=drop_last,
                       workers=options.workers if workers is None else workers, seed=seed,
                       pin_memory=runtime.device.type == "cuda", replicas=replicas)


def fold_fingerprint(recipe: Recipe, data: PreparedData, fold: int, options: TrainOptions) -> str:
    """What must match for a fold's resume state or finished outputs to belong to this run."""
    training = recipe.training
    replicas = distributed.current()
    # Another process count changes every batch, so it is part of the run (one process keeps the old key).
    world = {"world_size": replicas.world_size} if replicas.enabled else {}
    return checkpoint.fingerprint(recipe, epochs=options.epochs or training.epochs,
                                  seed=training.seed if options.seed is None else options.seed, fold=fold,
                                  data=str(data.source.root), clips=len(data.train.table),
                                  precision=Runtime.from_options(options).precision, **world)


def train_fold(recipe: Recipe, data: PreparedData, fold: int, options: TrainOptions,
               on_epoch: Callable[[EpochRecord], None] | None = None,
               progress: TrainProgress | None = None) -> FoldResult:
    """Train `recipe` with fold `fold` held out; resume from `out/last_fold<k>.pt` if present.

    Under torchrun every rank calls this; rank 0 alone writes files (see core/train/distributed.py).
    """
    training = recipe.training
    runtime = Runtime.from_options(options)
    configure_backends(runtime.device)
    replicas = distributed.current()
    writes = options.write_outputs and replicas.is_main
    progress = progress or TrainProgress(False)
    epochs = options.epochs or training.epochs
    seed = training.seed if options.seed is None else options.seed
    out = Path(options.out)
    batch_size = distributed.per_replica_batch(training.batch_size, replicas)
    if options.device_cache:
        check_device_cache_allowed(recipe.augment)

    model = build_for_training(recipe, runtime, seed, fold)
    if options.compile:
        compile_backbone(model, options.compile_backend)
    train_model = distributed.wrap_model(model, runtime.device) if replicas.enabled else model
    sam = SAM(model.parameters(), torch.optim.AdamW, rho=training.rho, adaptive=training.adaptive,
              lr=training.lr, weight_decay=training.weight_decay)
    train_rows, val_rows = data.fold_rows(fold)
    resident = make_resident(data.train, runtime.device) if options.device_cache else None
    steps_per_epoch = len(train_batches(data, train_rows, recipe, batch_size, runtime, options, 0, resident,
                                        workers=0))
    schedule = build_schedule(sam.base_optimizer, training, epochs, steps_per_epoch)
    scaler = LossScaler(enabled=runtime.precision == "fp16")

    run_key = fold_fingerprint(recipe, data, fold, options)
    last_path = out / f"last_fold{fold}.pt"
    best_path = out / f"best_model_fold{fold}.pt"
    start_epoch, best_value, best_epoch, history = 1, -math.inf, 0, []
    state = None
    if options.write_outputs:
        state = distributed.broadcast_object(read_resume_state(last_path, run_key) if replicas.is_main else None)
    if state is not None:
        model.load_state_dict(state["model"])
        sam.load_state_dict(state["optimizer"])
        schedule.scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        checkpoint.set_rng_state(state["rng"])
        start_epoch, best_value, best_epoch = state["epoch"] + 1, state["best_value"], state["best_epoch"]
        history = list(state["history"])
        progress.log(f"fold {fold}: resuming after epoch {state['epoch']} (best {best_value:.4f} at epoch {best_epoch})")

    progress.start("epochs", epochs, f"fold {fold} epochs")
    progress.advance("epochs", completed=start_epoch - 1)
    for epoch in range(start_epoch, epochs + 1):
        started = time.perf_counter()
        seed_all(epoch_seed(seed, fold, epoch))
        loader = train_batches(data, train_rows, recipe, batch_size, runtime, options, epoch_seed(seed, fold, epoch),
                               resident)
        lr = sam.param_groups[0]["lr"]
        train_loss, train_accuracy, skipped = run_epoch(train_model, sam, scaler, schedule, loader, recipe,
                                                        runtime, epoch_seed(seed, fold, epoch), progress)
        distributed.broadcast_buffers(model)  # every rank validates (and rank 0 saves) rank 0's BN statistics
        val_probs, val_loss = predict(model, data.train, val_rows, batch_size, runtime, options, resident)
        val_scores = score(data.train.labels()[val_rows], val_probs.argmax(axis=1))
        if not schedule.per_batch:
            schedule.scheduler.step()
        value = val_scores.composite if training.select_metric == "composite" else val_scores.accuracy
        improved = value > best_value  # strict, as in the reference: ties keep the earlier epoch
        if improved:
            best_value, best_epoch = value, epoch
            if writes:
                checkpoint.save_best(best_path, recipe, fold, epoch, val_scores.as_dict(), model)
        record = EpochRecord(fold, epoch, lr, train_loss, train_accuracy, val_loss, val_scores.accuracy,
                             val_scores.macro_f1, val_scores.composite, time.perf_counter() - started,
                             skipped, improved)
        history.append(asdict(record))
        if writes:
            write_csv(pd.DataFrame(history), out / f"history_fold{fold}.csv")
            checkpoint.save_torch_state(last_path, {
                "solution": recipe.name, "fingerprint": run_key, "epoch": epoch, "model": model.state_dict(),
                "optimizer": sam.state_dict(), "scheduler": schedule.scheduler.state_dict(),
                "scaler": scaler.state_dict(), "rng": checkpoint.rng_state(), "best_value": best_value,
                "best_epoch": best_epoch, "history": history,
            })
        progress.advance("epochs", stats=f"val acc {val_scores.accuracy:.3f} comp {val_scores.composite:.3f} "
                                         f"best {best_value:.3f}@{best_epoch}")
        progress.log(f"fold {fold} epoch {epoch}/{epochs}: lr {lr:.2e}, train loss {train_loss:.4f}, "
                     f"val acc {val_scores.accuracy:.4f}, F1 {val_scores.macro_f1:.4f}, "
                     f"composite {val_scores.composite:.4f}{' (best)' if improved else ''}, "
                     f"{record.seconds:.0f}s")
        if on_epoch is not None:
            on_epoch(record)
    best_row = next(row for row in history if row["epoch"] == best_epoch)
    best = Scores(best_row["val_accuracy"], best_row["val_macro_f1"], best_row["val_composite"])
    return FoldResult(fold, best_epoch, best, history, run_key)


def read_resume_state(last_path: Path, run_key: str) -> dict | None:
    """The resume state in `last_path` if there is one; refuse a state of another run's settings."""
    if not last_path.exists():
        return None
    state = checkpoint.load(last_path)
    if state.get("fingerprint") != run_key:
        raise UserError(f"{last_path} was written by a run with other settings (recipe, epochs, seed, data, "
                        f"precision or number of processes). Use another --out, or delete {last_path.parent} "
                        "to start over.")
    return state


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run_epoch(model, sam: SAM, scaler: LossScaler, schedule, loader, recipe: Recipe, runtime: Runtime,
              seed: int, progress: TrainProgress) -> tuple[float, float, int]:
    """One epoch of SAM steps; returns (mean pass-1 loss, mixup-weighted accuracy, skipped steps).

    Under torchrun the returned loss and accuracy are over the clips of all ranks.
    """
    model.train()
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    total_loss = total_correct = 0.0
    seen = skipped = 0
    progress.start("batches", len(loader), "  batches")
    for waveforms, labels, salience in loader:
        waveforms = waveforms.to(runtime.device, non_blocking=True)
        labels = labels.to(runtime.device, non_blocking=True)
        salience = salience.to(runtime.device, non_blocking=True)
        mix = draw_mix(len(labels), recipe.augment.mixup_alpha, recipe.augment.mixup_prob, rng, generator)
        loss, correct, ok = sam_step(model, sam, scaler, waveforms, labels, salience, mix, recipe, runtime)
        if schedule.per_batch:
            schedule.scheduler.step()
        skipped += not ok
        if math.isfinite(loss):  # a step skipped in pass 1 has no loss to report
            total_loss += loss * len(labels)
            total_correct += correct
            seen += len(labels)
        shown = max(seen, 1)
        progress.advance("batches", stats=f"loss {total_loss / shown:.3f} acc {total_correct / shown:.3f}")
    total_loss, total_correct, seen = distributed.sum_over_replicas([total_loss, total_correct, seen])
    return total_loss / max(seen, 1), total_correct / max(seen, 1), skipped


def sam_step(model, sam: SAM, scaler: LossScaler, waveforms: torch.Tensor, labels: torch.Tensor,
             salience: torch.Tensor, mix: Mix | None, recipe: Recipe, runtime: Runtime) -> tuple[float, float, bool]:
    """Both SAM passes on one mixed batch. Returns (pass-1 loss, weighted correct, step taken).

    Gradients are unscaled before each use; if either pass has a non-finite loss or gradient (an
    fp16 overflow) the step is skipped and the weights stay where they were. Each pass costs one
    host synchronisation (that decision), agreed by all ranks under DDP.

    Under DDP (`model` wrapped in DistributedDataParallel) both backward passes all-reduce: the
    perturbation of the first step is the global one, not per replica (see core/train/distributed.py).
    """
    params = [p for group in sam.param_groups for p in group["params"]]
    if mix is not None:  # one non-blocking copy instead of a blocking one in every use
        mix = Mix(mix.lam, mix.index.to(waveforms.device, non_blocking=True))
    inputs = mix_batch(waveforms, mix)
    mix_arg = mix.as_tuple() if mix is not None else None
    smoothing = recipe.training.label_smoothing

    def forward_backward() -> tuple[torch.Tensor, torch.Tensor, bool]:
        with autocast(runtime.device, runtime.precision):
            logits = model(inputs, salience, mix_arg)
        loss = mixed_cross_entropy(logits, labels, mix, smoothing)
        scaler.backward(loss)
        finite = scaler.unscale_and_check(params) * torch.isfinite(loss.detach()).to(torch.float32)
        return loss.detach(), logits.detach(), distributed.all_true(finite)

    loss, logits, finite = forward_backward()
    if not finite:
        sam.zero_grad(set_to_none=True)
        scaler.update(False)
        return float("nan"), 0.0, False
    # Clipping before first_step would not change the perturbation (it is normalised by ||g||).
    sam.first_step(zero_grad=True)
    _, _, finite = forward_backward()
    if not finite:
        sam.restore()
        sam.zero_grad(set_to_none=True)
        scaler.update(False)
        return loss.item(), mixed_correct(logits, labels, mix), False
    if recipe.training.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(params, recipe.training.grad_clip)
    sam.second_step(zero_grad=True)
    scaler.update(True)
    return loss.item(), mixed_correct(logits, labels, mix), True


@torch.no_grad()
def predict(model: torch.nn.Module, split: Split, rows: np.ndarray, batch_size: int, runtime: Runtime,
            options: TrainOptions, resident: ResidentSplit | None = None) -> tuple[np.ndarray, float]:
    """Softmax probabilities [len(rows), 10] in eval mode; also the mean CE loss where labels are known.

    `resident`: `split` held on the device (--device-cache), read instead of the memmap. Under
    torchrun each rank predicts every world_size-th row and all ranks get every row back.
    """
    if not distributed.current().enabled:
        probs, loss_sum, counted = _predict_rows(model, split, rows, batch_size, runtime, options, resident)
        return probs, loss_sum / max(counted, 1)
    parts = distributed.gather_shards(_predict_rows(model, split, distributed.shard(np.asarray(rows)), batch_size,
                                                    runtime, options, resident))
    probs = distributed.unshard([part[0] for part in parts])
    return probs, sum(part[1] for part in parts) / max(sum(part[2] for part in parts), 1)


def _predict_rows(model: torch.nn.Module, split: Split, rows: np.ndarray, batch_size: int, runtime: Runtime,
                  options: TrainOptions, resident: ResidentSplit | None) -> tuple[np.ndarray, float, int]:
    """(probabilities, summed CE loss over the labelled rows, number of labelled rows) of `rows`, in order."""
    model.eval()
    if resident is not None:
        loader = ResidentBatches(resident, rows, batch_size, shuffle=False, drop_last=False, seed=0)
    else:
        loader = make_loader(WaveformDataset(split, rows), batch_size, shuffle=False, drop_last=False,
                             workers=options.workers, seed=0, pin_memory=runtime.device.type == "cuda")
    chunks, losses, counted = [], 0.0, 0
    for waveforms, labels, salience in loader:
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
