"""The objective of one trial: mean over folds of the best validation composite, pruned fold by fold.

The fold training is passed in as a `FoldRunner`, so the objective's reporting and pruning do not
depend on how a fold is trained; `trainer_fold_runner` is the real one (core.train).
"""
from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna

from core.params import apply_params
from core.recipe import Recipe
from core.tune.search import raise_if_interrupted
from core.tune.space import Dimension, lowest_point, suggest_params

# Trains `recipe` with `fold` held out and returns that fold's best validation composite (fraction).
FoldRunner = Callable[[Recipe, int], float]

FOLD_SCORES_ATTR = "fold_best_composite"
WORKER_ATTR = "worker"


@dataclass(frozen=True)
class SearchPlan:
    """What every trial of a study trains: the solution's recipe, the space, the folds and epochs."""

    base: Recipe
    space: tuple[Dimension, ...]
    folds: tuple[int, ...]
    epochs: int


@dataclass(frozen=True)
class FoldDone:
    """A fold of a trial has finished (for the live view)."""

    trial_number: int
    step: int          # 1-based position of the fold in the plan (the step reported to the pruner)
    fold: int
    fold_score: float
    running_mean: float
    total_steps: int


def worker_name() -> str:
    """host:pid, recorded on every trial so a shared study shows which worker ran it."""
    return f"{socket.gethostname()}:{os.getpid()}"


def trial_recipe(base: Recipe, params: dict[str, Any], epochs: int) -> Recipe:
    """The recipe a trial trains: the sampled params (and search context) on the base, for `epochs`."""
    return apply_params(base, params, origin="trial params").derive(training={"epochs": epochs})


def check_plan(plan: SearchPlan) -> None:
    """Fail before any training if the space's parameters cannot be applied to the base recipe."""
    apply_params(plan.base, lowest_point(plan.space), origin="the search space")


def make_objective(plan: SearchPlan, run_fold: FoldRunner, worker: str | None = None,
                   on_fold: Callable[[FoldDone], None] | None = None) -> Callable[[optuna.Trial], float]:
    """An optuna objective for `plan`, training folds with `run_fold`.

    After each fold it reports the running mean of the fold scores (step = folds done) and stops
    the trial if the pruner says so.
    """
    worker = worker or worker_name()

    def objective(trial: optuna.Trial) -> float:
        params = suggest_params(trial, plan.space)
        recipe = trial_recipe(plan.base, params, plan.epochs)
        trial.set_user_attr(WORKER_ATTR, worker)
        trial.set_user_attr("freq_mask_param", recipe.augment.freq_mask)
        fold_scores: dict[str, float] = {}
        running_mean = float("nan")
        for step, fold in enumerate(plan.folds, start=1):
            fold_scores[str(fold)] = float(run_fold(recipe, fold))
            raise_if_interrupted()  # a Ctrl-C whose first raise was lost fails the trial here (search.py)
            running_mean = float(np.mean(list(fold_scores.values())))
            trial.set_user_attr(FOLD_SCORES_ATTR, fold_scores)
            trial.report(running_mean, step)
            if on_fold is not None:
                on_fold(FoldDone(trial.number, step, fold, fold_scores[str(fold)], running_mean, len(plan.folds)))
            if trial.should_prune():
                raise optuna.TrialPruned(f"after fold {fold} ({step} of {len(plan.folds)}): "
                                         f"running mean {running_mean:.4f} is below the median")
        return running_mean

    return objective


def trainer_fold_runner(prepared, options) -> FoldRunner:
    """The real fold training (core.train.fold.train_fold) on data prepared once for all trials.

    `prepared` is a core.train.data.PreparedData, `options` a TrainOptions with write_outputs=False.
    Each trial's recipe takes the data set's classes (core/train/own_data.py).
    """
    from core.train.fold import train_fold
    from core.train.own_data import recipe_for_data

    def run_fold(recipe: Recipe, fold: int) -> float:
        # Checked after every epoch too: a lost Ctrl-C ends the fold there, not a whole fold later.
        return train_fold(recipe_for_data(recipe, prepared.source), prepared, fold, options,
                          on_epoch=lambda _record: raise_if_interrupted()).best.composite

    return run_fold
