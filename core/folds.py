"""UrbanSound8K's folds and salience values, and the evaluation protocols built on the folds.

One source for these facts: the metadata layer, the synthetic set, the model and the fold loop
all read them from here.

Protocols (`train --protocol`):
- "kaggle" (the competition): folds 1-8 train, folds 9-10 are the test split. Fold model k
  validates (and picks its best epoch) on fold k and trains on the other seven; the test split is
  predicted by every fold model. One number for a leaderboard.
- "us8k-10fold" (the dataset authors' protocol, for the literature): for each test fold k in 1..10
  the validation fold is v = k + 1 (1 for k = 10), which picks the best epoch; the other eight
  train; the chosen checkpoint predicts fold k, which nothing saw before. Report the mean over
  the 10 test folds.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from core.errors import UserError

TRAIN_FOLDS = tuple(range(1, 9))    # the competition's train split
TEST_FOLDS = (9, 10)                # the competition's test split
ALL_FOLDS = TRAIN_FOLDS + TEST_FOLDS
SALIENCE_VALUES = (1, 2)            # 1 = foreground, 2 = background (a human annotation)
SALIENCE_NAMES = {1: "foreground", 2: "background"}

Protocol = Literal["kaggle", "us8k-10fold"]
PROTOCOLS: tuple[str, ...] = ("kaggle", "us8k-10fold")


@dataclass(frozen=True)
class FoldRoles:
    """What each fold does in one fold training, named by `key` (the k of its output files)."""

    key: int
    train: tuple[int, ...]
    validation: int
    test: int | None                # None: the data's separate test split (kaggle protocol)


def fold_roles(protocol: str, key: int) -> FoldRoles:
    """The roles of the folds in fold training `key` under `protocol`."""
    if protocol == "kaggle":
        if key not in TRAIN_FOLDS:
            raise UserError(f"the kaggle protocol trains folds 1-8 (fold model k validates on fold k; 9-10 are the test split); got fold {key}. Use --protocol us8k-10fold to test on every fold")
        return FoldRoles(key, tuple(f for f in TRAIN_FOLDS if f != key), key, None)
    if protocol == "us8k-10fold":
        if key not in ALL_FOLDS:
            raise UserError(f"the us8k-10fold protocol tests folds 1-10; got fold {key}")
        validation = key % len(ALL_FOLDS) + 1
        return FoldRoles(key, tuple(f for f in ALL_FOLDS if f not in (key, validation)), validation, key)
    raise UserError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")


def protocol_folds(protocol: str) -> tuple[int, ...]:
    """Every fold training of a protocol (its keys)."""
    return TRAIN_FOLDS if protocol == "kaggle" else ALL_FOLDS
