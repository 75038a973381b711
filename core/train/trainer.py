"""The fold trainer: one fold's training loop as an object whose methods are its seams.

In the spirit of SpeechBrain's `Brain` (compute_forward / compute_objectives / fit_batch /
on_stage_end) and Lightning's `training_step`, kept small. A solution changes one piece by
overriding one method in a registered subclass and naming it in its recipe, never by editing the
loop:

    @register_trainer("focal")
    class FocalTrainer(FoldTrainer):
        def compute_loss(self, logits, labels, mix):
            ...                                       # a mean over the (micro-)batch

    @register(parent="resnet34_pcen_sam_8fold")
    def resnet34_focal(parent: Recipe) -> Recipe:
        return parent.derive(training=dict(trainer="focal"))

The seams, in the order a fold uses them:

    build_parts()          model, SAM around AdamW, schedule, loss scaler   (loading initial weights: here)
    epoch_batches(seed)    the shuffled batches of an epoch, on the device  (device-side augmentation: here)
    compute_loss(...)      the objective of one forward pass                 (a solution's objective: here)
    training_step(batch)   both SAM passes, --accumulate micro-batches, the device-side skip
    validate()             validation probabilities, loss and scores
    state_dict() / load_state_dict()   what the resume state holds besides the counters

No host synchronisation inside a step (docs/gpu.md names the ones left): the epoch's loss sum,
correct count, seen clips and skipped steps accumulate as device tensors and are read once per
epoch (and by the progress bar at most every REFRESH_SECONDS); a non-finite loss or gradient
skips the update by selecting the old weights, buffers and optimiser state on the device.
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from typing import ClassVar, NamedTuple

import numpy as np
import pandas as pd
import torch
from torch.nn.utils import clip_grad_norm_
from torch.utils.data import DataLoader

from core import atomic
from core.atomic import write_csv
from core.errors import UserError
from core.metrics import Scores, score
from core.progress import TrainProgress
from core.recipe import Recipe
from core.runtime import Runtime
from core.solution_folder import SolutionFolder
from core.train import checkpoint, distributed, init_from
from core.train.data import (
    PreparedData,
    ResidentBatches,
    ResidentSplit,
    check_device_cache_allowed,
    make_resident,
    set_epoch_seed,
)
from core.train.device_augment import epoch_augmenter, runs_on_device
from core.train.fold import (
    EpochRecord,
    FoldResult,
    FoldSettings,
    ResumeState,
    TrainingParts,
    build_on_device,
    compile_backbone,
    epoch_seed,
    fold_identity,
    predict,
    predicted_rows,
    prediction_batches,
    seed_all,
    train_batches,
)
from core.train.mixup import Mix, draw_mix, mix_batch, mixed_correct, mixed_cross_entropy
from core.train.options import TrainOptions
from core.train.precision import LossScaler, autocast, configure_backends
from core.train.sam import SAM
from core.train.schedules import build_schedule

DEFAULT_TRAINER = "sam"
REFRESH_SECONDS = 0.5  # the progress bar reads the epoch's running totals at most this often

Objective = Callable[[torch.Tensor, torch.Tensor, "Mix | None"], torch.Tensor]


class Batch(NamedTuple):
    """One training batch on the device."""

    waveforms: torch.Tensor
    labels: torch.Tensor
    salience: torch.Tensor


class MicroBatch(NamedTuple):
    """One forward/backward's share of a step (the whole batch unless --accumulate K > 1), mixed."""

    inputs: torch.Tensor
    labels: torch.Tensor
    salience: torch.Tensor
    mix: Mix | None


class StepOutcome(NamedTuple):
    """What one SAM step reports, all 0-dim tensors on the device (nothing read back)."""

    loss: torch.Tensor      # the first pass's loss (non-finite when that pass was)
    correct: torch.Tensor   # mixup-weighted correct predictions of the first pass, float64
    counted: torch.Tensor   # bool: the first pass was finite, so its loss and accuracy count
    taken: torch.Tensor     # bool: both passes were finite and the update was applied


# ------------------------------------------------------------------------------------------ the step

class _Mirror:
    """Flat buffers mirroring a list of same-device, same-dtype tensors: `saved` (before a step) and `scratch`."""

    def __init__(self, tensors: list[torch.Tensor]) -> None:
        self.tensors = tensors
        total = sum(tensor.numel() for tensor in tensors)
        self.saved = torch.empty(total, dtype=tensors[0].dtype, device=tensors[0].device)
        self.scratch = torch.empty_like(self.saved)
        sizes = [tensor.numel() for tensor in tensors]
        self.saved_views = [part.view(tensor.shape) for part, tensor in zip(self.saved.split(sizes), tensors, strict=True)]
        self.scratch_views = [part.view(tensor.shape) for part, tensor in
                              zip(self.scratch.split(sizes), tensors, strict=True)]

    def save(self) -> None:
        torch._foreach_copy_(self.saved_views, self.tensors)

    def keep_if(self, taken: torch.Tensor) -> None:
        torch._foreach_copy_(self.scratch_views, self.tensors)
        torch.where(taken.to(self.saved.device), self.scratch, self.saved, out=self.scratch)
        torch._foreach_copy_(self.tensors, self.scratch_views)


class SkipGuard:
    """Undoes a step on the device when its flag says it was not finite; no host read.

    Before the step it copies every parameter, module buffer (BatchNorm statistics) and optimiser
    state tensor into flat buffers allocated once per kind (device, dtype); afterwards each of them
    becomes torch.where(taken, new, old): exactly the new value when the step is taken, exactly the
    old one when it is not. A handful of kernels per kind (copy in, where, copy back), not a few
    per tensor. A state the optimiser creates lazily in a skipped first step is set to zeros,
    which is AdamW's initial state.
    """

    def __init__(self, model: torch.nn.Module, sam: SAM) -> None:
        self.model, self.sam = model, sam
        self.mirrors: list[_Mirror] = []
        self.key: tuple[int, ...] = ()

    def tracked(self) -> list[torch.Tensor]:
        params = [param for group in self.sam.param_groups for param in group["params"]]
        state = [value for param in params for value in self.sam.base_optimizer.state.get(param, {}).values()
                 if isinstance(value, torch.Tensor)]
        return [*params, *self.model.buffers(), *state]

    @torch.no_grad()
    def save(self) -> None:
        tensors = self.tracked()
        key = tuple(id(tensor) for tensor in tensors)
        if key != self.key:  # the first step, or a state the optimiser created since: new mirrors
            kinds: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
            for tensor in tensors:
                kinds.setdefault((tensor.device, tensor.dtype), []).append(tensor)
            self.mirrors, self.key = [_Mirror(group) for group in kinds.values()], key
        for mirror in self.mirrors:
            mirror.save()

    @torch.no_grad()
    def keep_if(self, taken: torch.Tensor) -> None:
        for mirror in self.mirrors:
            mirror.keep_if(taken)
        known = set(self.key)
        for tensor in self.tracked():
            if id(tensor) not in known:  # created by this step (AdamW's lazy state): zeros unless taken
                tensor.copy_(torch.where(taken.to(tensor.device), tensor, torch.zeros_like(tensor)))


def default_objective(label_smoothing: float) -> Objective:
    """The recipes' objective (FoldTrainer.compute_loss): mixup-weighted cross-entropy with label smoothing."""
    return lambda logits, labels, mix: mixed_cross_entropy(logits, labels, mix, label_smoothing)


def micro_batches(waveforms: torch.Tensor, labels: torch.Tensor, salience: torch.Tensor,
                  mixes: list[Mix | None]) -> list[MicroBatch]:
    """The batch cut into len(mixes) micro-batches (torch.tensor_split), each mixed within itself."""
    parts = zip(waveforms.tensor_split(len(mixes)), labels.tensor_split(len(mixes)),
                salience.tensor_split(len(mixes)), mixes, strict=True)
    batches = []
    for part_waveforms, part_labels, part_salience, mix in parts:
        if mix is not None:  # one non-blocking copy instead of a blocking one in every use
            mix = Mix(mix.lam, mix.index.to(part_waveforms.device, non_blocking=True))
        batches.append(MicroBatch(mix_batch(part_waveforms, mix), part_labels, part_salience, mix))
    return [batch for batch in batches if len(batch.labels)]


def sam_step(model: torch.nn.Module, sam: SAM, scaler: LossScaler, waveforms: torch.Tensor, labels: torch.Tensor,
             salience: torch.Tensor, mix: Mix | None, recipe: Recipe, runtime: Runtime, *,
             objective: Objective | None = None, guard: SkipGuard | None = None) -> StepOutcome:
    """Both SAM passes on one mixed batch (one micro-batch): see `sam_micro_step`."""
    return sam_micro_step(model, sam, scaler, micro_batches(waveforms, labels, salience, [mix]), recipe, runtime,
                          objective=objective, guard=guard)


def sam_micro_step(model: torch.nn.Module, sam: SAM, scaler: LossScaler, micro: list[MicroBatch], recipe: Recipe,
                   runtime: Runtime, *, objective: Objective | None = None,
                   guard: SkipGuard | None = None) -> StepOutcome:
    """Both SAM passes over the micro-batches of one step, without a host read.

    Each pass accumulates the gradient of every micro-batch's loss weighted by its share of the
    batch (--accumulate K: the recipe's effective batch in K forward/backward calls), then unscales
    and checks it. If either pass has a non-finite loss or gradient (an fp16 overflow, a NaN), the
    step still runs to its end and `guard` puts the weights, buffers and optimiser state back on the
    device; the scaler backs off. Under DDP both backward passes all-reduce (the perturbation is the
    global one, see core/train/distributed.py), and so does the finite flag, on the device.
    Pass the same `guard` to every step (the trainer keeps one per fold): a new one allocates its
    buffers again.
    """
    objective = objective or default_objective(recipe.training.label_smoothing)
    guard = guard or SkipGuard(model, sam)
    params = [p for group in sam.param_groups for p in group["params"]]
    clips = sum(len(batch.labels) for batch in micro)
    guard.save()

    def forward_backward() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        losses, correct = [], []
        for number, batch in enumerate(micro):
            last = number == len(micro) - 1
            syncing = contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
            with syncing:
                with autocast(runtime.device, runtime.precision):
                    logits = model(batch.inputs, batch.salience, batch.mix.as_tuple() if batch.mix else None)
                loss = objective(logits, batch.labels, batch.mix)
                share = len(batch.labels) / clips
                scaler.backward(loss if len(micro) == 1 else loss * share)
            losses.append(loss.detach() if len(micro) == 1 else loss.detach() * share)
            correct.append(mixed_correct(logits.detach(), batch.labels, batch.mix))
        loss = losses[0] if len(losses) == 1 else torch.stack(losses).sum()
        finite = scaler.unscale_and_check(params) * torch.isfinite(loss).to(torch.float32)
        return loss, correct[0] if len(correct) == 1 else torch.stack(correct).sum(), distributed.all_finite(finite)

    loss, correct, counted = forward_backward()
    # Clipping before first_step would not change the perturbation (it is normalised by ||g||).
    sam.first_step(zero_grad=True)
    _, _, second_finite = forward_backward()
    taken = counted & second_finite
    if recipe.training.grad_clip > 0:
        clip_grad_norm_(params, recipe.training.grad_clip)
    sam.second_step(zero_grad=True)
    guard.keep_if(taken)
    scaler.update(taken)
    return StepOutcome(loss, correct, counted, taken)


class EpochTotals:
    """An epoch's loss sum, correct count, seen clips and skipped steps, accumulated on the device.

    float64, so the sums are those Python floats gave when each step's loss was read back.
    """

    def __init__(self, device: torch.device) -> None:
        zero = torch.zeros((), dtype=torch.float64, device=device)
        self.loss, self.correct, self.seen, self.skipped = zero, zero.clone(), zero.clone(), zero.clone()

    def add(self, outcome: StepOutcome, clips: int) -> None:
        """Count a step: its loss and accuracy only if its first pass was finite (a skipped pass 1 has neither)."""
        self.loss = self.loss + torch.where(outcome.counted, outcome.loss.to(torch.float64) * clips, 0.0)
        self.correct = self.correct + torch.where(outcome.counted, outcome.correct, 0.0)
        self.seen = self.seen + torch.where(outcome.counted, float(clips), 0.0)
        self.skipped = self.skipped + (~outcome.taken).to(torch.float64)

    def read(self) -> tuple[float, float, int]:
        """(mean loss, mean accuracy, skipped steps) over all ranks: one all-reduce, one host read."""
        summed = distributed.sum_over_replicas(torch.stack([self.loss, self.correct, self.seen]))
        loss, correct, seen, skipped = torch.cat([summed, self.skipped.reshape(1)]).tolist()
        return loss / max(seen, 1), correct / max(seen, 1), int(skipped)

    def running(self) -> str:
        """The progress bar's text (one host read)."""
        loss, correct, seen = torch.stack([self.loss, self.correct, self.seen]).tolist()
        return f"loss {loss / max(seen, 1):.3f} acc {correct / max(seen, 1):.3f}"


# ------------------------------------------------------------------------------------------ the trainer

_TRAINERS: dict[str, type[FoldTrainer]] = {}


def register_trainer(name: str) -> Callable[[type[FoldTrainer]], type[FoldTrainer]]:
    """Class decorator: make a FoldTrainer subclass available to recipes as training.trainer = `name`."""

    def decorate(cls: type[FoldTrainer]) -> type[FoldTrainer]:
        if name in _TRAINERS and _TRAINERS[name] is not cls:
            raise ValueError(f"trainer {name!r} is registered twice")
        _TRAINERS[name] = cls
        cls.name = name
        return cls

    return decorate


def trainer_class(recipe: Recipe) -> type[FoldTrainer]:
    """The trainer that recipe.training.trainer names (plugins register theirs when they are imported)."""
    name = recipe.training.trainer
    if name not in _TRAINERS:
        raise UserError(f"solution {recipe.name!r} asks for trainer {name!r}, which no plugin registered; "
                        f"registered trainers: {', '.join(sorted(_TRAINERS))}")
    return _TRAINERS[name]


@register_trainer(DEFAULT_TRAINER)
class FoldTrainer:
    """Trains one fold: SAM steps, per-epoch validation, best checkpoint, resumable every epoch."""

    name: ClassVar[str]

    def __init__(self, recipe: Recipe, data: PreparedData, fold: int, options: TrainOptions,
                 progress: TrainProgress | None = None) -> None:
        self.recipe, self.data, self.fold, self.options = recipe, data, fold, options
        self.settings = FoldSettings.resolve(recipe, options)
        self.runtime = self.settings.runtime
        self.progress = progress or TrainProgress(False)
        self.train_rows, self.val_rows = data.fold_rows(fold)
        self.folder = SolutionFolder(self.settings.out)
        self.resident: ResidentSplit | None = None
        self.loader: DataLoader | None = None  # the training DataLoader, built at the first epoch, kept for the fold
        self.val_batches: DataLoader | ResidentBatches | None = None  # the validation batches, likewise
        self.parts: TrainingParts | None = None
        self.train_model: torch.nn.Module | None = None
        self.guard: SkipGuard | None = None

    # ------------------------------------------------------------------ seams

    def build_parts(self) -> TrainingParts:
        """A fresh model (compiled if asked), SAM around AdamW, the schedule and the loss scaler of the fold."""
        training, runtime = self.recipe.training, self.runtime
        model = build_on_device(self.recipe, runtime, self.settings.seed, self.fold)
        if self.options.compile:
            compile_backbone(model, self.options.compile_backend)
        # capturable on CUDA: AdamW's step count lives on the GPU, so a skipped step is undone there too.
        capturable = {"capturable": True} if runtime.device.type == "cuda" else {}
        sam = SAM(model.parameters(), torch.optim.AdamW, rho=training.rho, adaptive=training.adaptive,
                  lr=training.lr, weight_decay=training.weight_decay, **capturable)
        # The device cache yields exactly the DataLoader's batches, so the loader's length is the step count.
        steps_per_epoch = len(train_batches(self.data, self.train_rows, self.recipe, self.settings.batch_size,
                                            runtime, self.options, 0, None, workers=0))
        schedule = build_schedule(sam.base_optimizer, training, self.settings.epochs, steps_per_epoch)
        return TrainingParts(model, sam, schedule, LossScaler(enabled=runtime.precision == "fp16"))

    def epoch_batches(self, seed: int) -> Iterator[Batch]:
        """The shuffled training batches of the epoch drawn from `seed`, moved to the device."""
        loader = self.epoch_loader(seed)
        device = self.runtime.device
        # Waveform noise and gain on the device (CUDA), where the workers then skip them (core/train/device_augment.py).
        augment = epoch_augmenter(self.recipe.augment, device, self.options, seed, distributed.current().rank)
        self.progress.start("batches", len(loader), "  batches")
        for waveforms, labels, salience in loader:
            waveforms = waveforms.to(device, non_blocking=True)
            yield Batch(waveforms if augment is None else augment(waveforms), labels.to(device, non_blocking=True),
                        salience.to(device, non_blocking=True))

    def epoch_loader(self, seed: int) -> DataLoader | ResidentBatches:
        """The batches of the epoch drawn from `seed`: the fold's one DataLoader, re-seeded, so its workers
        persist across epochs (the device cache's batches are index tensors on the device, built anew)."""
        if self.resident is not None:
            return train_batches(self.data, self.train_rows, self.recipe, self.settings.batch_size, self.runtime,
                                 self.options, seed, self.resident)
        if self.loader is None:
            self.loader = train_batches(self.data, self.train_rows, self.recipe, self.settings.batch_size,
                                        self.runtime, self.options, seed, None)
        set_epoch_seed(self.loader, seed)
        return self.loader

    def compute_loss(self, logits: torch.Tensor, labels: torch.Tensor, mix: Mix | None) -> torch.Tensor:
        """The objective of one forward pass, a mean over its clips: what a solution overrides.

        `mix` is the micro-batch's mixup (None when it is not mixed): the inputs were
        mix.lam * x + (1 - mix.lam) * x[mix.index].
        """
        return mixed_cross_entropy(logits, labels, mix, self.recipe.training.label_smoothing)

    def draw_mixes(self, clips: int, rng: np.random.Generator, generator: torch.Generator) -> list[Mix | None]:
        """The mixup of each micro-batch of a step (one per batch unless --accumulate K > 1)."""
        augment, parts = self.recipe.augment, self.options.accumulate
        sizes = [len(part) for part in torch.arange(clips).tensor_split(parts)] if parts > 1 else [clips]
        return [draw_mix(size, augment.mixup_alpha, augment.mixup_prob, rng, generator) for size in sizes if size]

    def training_step(self, batch: Batch, rng: np.random.Generator, generator: torch.Generator) -> StepOutcome:
        """One SAM step on `batch` with this trainer's objective; nothing is read back to the host."""
        mixes = self.draw_mixes(len(batch.labels), rng, generator)
        micro = micro_batches(batch.waveforms, batch.labels, batch.salience, mixes)
        return sam_micro_step(self.train_model, self.parts.sam, self.parts.scaler, micro, self.recipe, self.runtime,
                              objective=self.compute_loss, guard=self.guard)

    def validate(self) -> tuple[np.ndarray, float, Scores]:
        """(probabilities, mean CE loss, scores) of the validation rows, in eval mode."""
        distributed.broadcast_buffers(self.parts.model)  # every rank validates (and rank 0 saves) rank 0's BN statistics
        if self.val_batches is None:  # built once per fold: its DataLoader workers persist across epochs
            self.val_batches = prediction_batches(self.data.train, predicted_rows(self.val_rows),
                                                  self.settings.batch_size, self.runtime, self.options, self.resident)
        probs, loss = predict(self.parts.model, self.data.train, self.val_rows, self.settings.batch_size, self.runtime,
                              self.options, self.resident, self.val_batches)
        return probs, loss, score(self.data.train.labels()[self.val_rows], probs.argmax(axis=1))

    def state_dict(self) -> dict:
        """What the resume state holds besides the counters: model, optimiser, schedule, scaler."""
        return self.parts.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.parts.load_state_dict(state)

    # ------------------------------------------------------------------ the loop

    def fit(self, on_epoch: Callable[[EpochRecord], None] | None = None) -> FoldResult:
        """Train the fold, resuming from `out/last_fold<k>.pt` if present; see core.train.fold.train_fold."""
        settings, options, progress, fold = self.settings, self.options, self.progress, self.fold
        self.setup()
        identity = fold_identity(self.recipe, self.data, fold, options)
        state = ResumeState.restore(self.folder, fold, identity, self, options.write_outputs)
        if state.epoch:
            progress.log(f"fold {fold}: resuming after epoch {state.epoch} (best {state.best_value:.4f} at epoch "
                         f"{state.best_epoch})")
        progress.start("epochs", settings.epochs, f"fold {fold} epochs")
        progress.advance("epochs", completed=state.epoch)
        try:
            for epoch in range(state.epoch + 1, settings.epochs + 1):
                try:
                    record = self.run_epoch(epoch, state)
                except torch.OutOfMemoryError:
                    raise self.out_of_memory(epoch, state.epoch) from None  # the resume state still holds state.epoch
                if settings.writes:  # the best candidate (staged) -> history -> resume state -> the best published
                    write_csv(pd.DataFrame(state.history), self.folder.history(fold))
                    state.save(self.folder.resume(fold), self.recipe.name, identity, self)
                    if record.best:
                        atomic.publish(self.folder.staged_best(fold), self.folder.best_model(fold))
                if on_epoch is not None:
                    on_epoch(record)
        finally:
            self.loader = self.val_batches = None  # their persistent workers end with the fold
        best_row = next(row for row in state.history if row["epoch"] == state.best_epoch)
        best = Scores(best_row["val_accuracy"], best_row["val_macro_f1"], best_row["val_composite"])
        return FoldResult(fold, state.best_epoch, best, state.history, identity)

    def out_of_memory(self, epoch: int, resumable_epoch: int) -> UserError:
        """The one-line answer to running out of device memory in `epoch`: what was asked, what helps."""
        device, options = self.runtime.device, self.options
        batch = self.settings.batch_size
        peak = (f"{torch.cuda.max_memory_allocated(device) / 2 ** 30:.1f} GiB" if device.type == "cuda" else "unknown")
        helps = []
        if 2 * options.accumulate <= batch:  # more parts than clips is refused (FoldSettings)
            helps.append(f"--accumulate {2 * options.accumulate} (the same effective batch in less memory; "
                         f"BatchNorm then sees {batch // (2 * options.accumulate)} clips)")
        if batch > 1:
            helps.append(f"--batch-size {batch // 2}")
        if self.runtime.precision == "fp32":
            helps.append("--precision bf16 (or fp16 on GPUs before Ampere)")
        if options.device_cache:
            helps.append("--no-device-cache")
        if not helps:
            helps.append("a device with more memory")
        resume = (f"rerunning resumes after epoch {resumable_epoch}" if resumable_epoch else "no epoch finished yet")
        parts = f" in {options.accumulate} parts" if options.accumulate > 1 else ""
        return UserError(f"fold {self.fold}, epoch {epoch}: out of memory on {device} at batch size {batch}{parts} "
                         f"(peak {peak} allocated by PyTorch). What helps: {', '.join(helps)}; {resume} "
                         f"(--no-device-cache keeps the run's identity, the others change it: use another --out or "
                         f"delete {self.folder.resume(self.fold).name})")

    def setup(self) -> None:
        """The fold's parts, its (DDP-wrapped) training model, the skip guard and the device cache."""
        options = self.options
        configure_backends(self.runtime.device)
        if options.device_cache:
            check_device_cache_allowed(self.recipe.augment, runs_on_device(self.recipe.augment, self.runtime.device, options))
        self.parts = self.build_parts()
        if options.init_from is not None:  # before the resume state, which then overrides it
            self.progress.log(f"fold {self.fold}: "
                              + init_from.initialise(self.parts.model, self.recipe, options.init_from).describe())
        self.train_model = (distributed.wrap_model(self.parts.model, self.runtime.device)
                            if distributed.current().enabled else self.parts.model)
        self.guard = SkipGuard(self.parts.model, self.parts.sam)
        self.resident = make_resident(self.data.train, self.runtime.device) if options.device_cache else None

    def train_epoch(self, epoch: int) -> tuple[float, float, int]:
        """One epoch of SAM steps: (mean pass-1 loss, mixup-weighted accuracy, skipped steps).

        Under torchrun the loss and accuracy are over the clips of all ranks. The totals are read
        once, here; the progress bar reads them at most every REFRESH_SECONDS.
        """
        seed = epoch_seed(self.settings.seed, self.fold, epoch)
        seed_all(seed)
        init_from.set_backbone_trainable(self.parts.model, epoch, self.options.freeze_backbone_epochs)
        self.train_model.train()
        rng = np.random.default_rng(seed)
        generator = torch.Generator().manual_seed(seed)
        totals = EpochTotals(self.runtime.device)
        schedule, shown = self.parts.schedule, time.monotonic()
        for batch in self.epoch_batches(seed):
            outcome = self.training_step(batch, rng, generator)
            if schedule.per_batch:
                schedule.scheduler.step()
            totals.add(outcome, len(batch.labels))
            stats = None
            if self.progress.enabled and time.monotonic() - shown >= REFRESH_SECONDS:
                stats, shown = totals.running(), time.monotonic()
            self.progress.advance("batches", stats=stats)
        return totals.read()

    def run_epoch(self, epoch: int, state: ResumeState) -> EpochRecord:
        """Train one epoch, validate, stage the best checkpoint; the epoch's record (also in state.history)."""
        started = time.perf_counter()
        lr = self.parts.sam.param_groups[0]["lr"]
        train_loss, train_accuracy, skipped = self.train_epoch(epoch)
        _, val_loss, val_scores = self.validate()
        if not self.parts.schedule.per_batch:
            self.parts.schedule.scheduler.step()
        improved = state.record(epoch, getattr(val_scores, self.recipe.training.select_metric))
        if improved and self.settings.writes:  # published by fit() once the resume state records it
            checkpoint.save_best(self.folder.staged_best(self.fold), self.recipe, self.fold, epoch,
                                 val_scores.as_dict(), self.parts.model)
        record = EpochRecord(self.fold, epoch, lr, train_loss, train_accuracy, val_loss, val_scores.accuracy,
                             val_scores.macro_f1, val_scores.composite, time.perf_counter() - started, skipped,
                             improved)
        state.history.append(asdict(record))
        self.progress.advance("epochs", stats=f"val acc {val_scores.accuracy:.3f} comp {val_scores.composite:.3f} "
                                              f"best {state.best_value:.3f}@{state.best_epoch}")
        self.progress.log(f"fold {self.fold} epoch {epoch}/{self.settings.epochs}: lr {lr:.2e}, train loss "
                          f"{train_loss:.4f}, val acc {val_scores.accuracy:.4f}, F1 {val_scores.macro_f1:.4f}, "
                          f"composite {val_scores.composite:.4f}{' (best)' if improved else ''}, "
                          f"{record.seconds:.0f}s")
        return record
