"""The demo profile: with no --data, train on the embedded synthetic set with shrunken settings."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from core.recipe import Recipe
from core.train.options import TrainOptions

DEMO_DATA = Path("data/demo")
DEMO_SEED = 0
DEMO_CLIPS_PER_CLASS_FOLD = 5   # 10 classes x 8 folds x 5 = 400 training clips
DEMO_TEST_CLIPS_PER_CLASS = 20  # 200 test clips, labelled


def ensure_demo_data(root: Path = DEMO_DATA) -> Path:
    """Build the synthetic demo set once (the builder writes it atomically); reuse it afterwards."""
    from core.demo.synth import write_synthetic_dataset

    if not (root / "metadata" / "kaggle_train.csv").exists():
        write_synthetic_dataset(root, seed=DEMO_SEED, clips_per_class_fold=DEMO_CLIPS_PER_CLASS_FOLD,
                                test_clips_per_class=DEMO_TEST_CLIPS_PER_CLASS)
    return root


def apply_demo_profile(recipe: Recipe, options: TrainOptions, explicit: set[str]) -> tuple[Recipe, TrainOptions, list[str]]:
    """Shrink what the user did not set explicitly; return the changes as readable lines."""
    demo = recipe.demo
    changes: list[str] = []
    training_changes = {}
    if "batch_size" not in explicit and demo.batch_size != recipe.training.batch_size:
        training_changes["batch_size"] = demo.batch_size
        changes.append(f"batch size {recipe.training.batch_size} -> {demo.batch_size}")
    if demo.mixup_alpha != recipe.augment.mixup_alpha:
        changes.append(f"mixup alpha {recipe.augment.mixup_alpha:g} -> {demo.mixup_alpha:g}")
        recipe = recipe.derive(augment=dict(mixup_alpha=demo.mixup_alpha))
    if training_changes:
        recipe = recipe.derive(training=training_changes)
    option_changes = {}
    if "folds" not in explicit:
        option_changes["folds"] = demo.folds
        changes.append(f"folds {','.join(map(str, recipe.training.folds))} -> {','.join(map(str, demo.folds))}")
    if "epochs" not in explicit:
        option_changes["epochs"] = demo.epochs
        changes.append(f"epochs {recipe.training.epochs} -> {demo.epochs}")
    if "precision" not in explicit and options.precision == "auto" and demo.precision != "auto":
        option_changes["precision"] = demo.precision
        changes.append(f"precision auto -> {demo.precision} autocast")
    if demo.max_clips_per_fold is not None and "max_clips_per_fold" not in explicit:
        option_changes["max_clips_per_fold"] = demo.max_clips_per_fold
        changes.append(f"clips per train fold -> {demo.max_clips_per_fold}")
    if demo.max_test_clips is not None:
        option_changes["max_test_clips"] = demo.max_test_clips
        changes.append(f"test clips -> {demo.max_test_clips}")
    return recipe, dataclasses.replace(options, **option_changes), changes
