"""Learning-rate schedules of the lineage, built from a recipe's Training section."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.optim.lr_scheduler import (
    CosineAnnealingLR,
    CosineAnnealingWarmRestarts,
    LambdaLR,
    LinearLR,
    LRScheduler,
    OneCycleLR,
    SequentialLR,
)

from core.recipe import Training


@dataclass
class Schedule:
    scheduler: LRScheduler
    per_batch: bool  # step after every batch instead of after every epoch


def build_schedule(optimizer: torch.optim.Optimizer, training: Training, epochs: int,
                   steps_per_epoch: int) -> Schedule:
    """The recipe's schedule for `epochs` epochs (the scheduler drives the base optimiser)."""
    kind = training.schedule
    if kind == "cosine":
        return Schedule(CosineAnnealingLR(optimizer, T_max=epochs, eta_min=training.eta_min), False)
    if kind == "warmup_cosine":
        warmup = min(training.warmup_epochs, epochs - 1)
        cosine = CosineAnnealingLR(optimizer, T_max=max(1, epochs - warmup), eta_min=training.eta_min)
        if warmup <= 0:
            return Schedule(cosine, False)
        linear = LinearLR(optimizer, start_factor=0.01, end_factor=1.0, total_iters=warmup)
        return Schedule(SequentialLR(optimizer, [linear, cosine], milestones=[warmup]), False)
    if kind == "warm_restarts":
        return Schedule(CosineAnnealingWarmRestarts(optimizer, T_0=training.restart_period,
                                                    T_mult=training.restart_mult,
                                                    eta_min=training.eta_min), False)
    if kind == "onecycle_per_epoch":
        # The reference sized OneCycle in batches but stepped it once per epoch, so the LR only
        # ramps up during training; the fidelity rule keeps that schedule.
        return Schedule(OneCycleLR(optimizer, max_lr=training.lr, epochs=epochs,
                                   steps_per_epoch=steps_per_epoch, pct_start=training.pct_start), False)
    # "warmup_cosine_per_step" (the recipe checked the schedule name when it was made)
    warmup_steps = steps_per_epoch * training.warmup_epochs
    total_steps = steps_per_epoch * epochs
    return Schedule(LambdaLR(optimizer, _warmup_cosine_factor(warmup_steps, total_steps)), True)


def _warmup_cosine_factor(warmup_steps: int, total_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor
