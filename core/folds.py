"""UrbanSound8K's classes, folds and salience values, and the evaluation protocols built on the folds.

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
- "kfold" (any data set's folds, e.g. ESC-50's five): the same rule on the data's folds 1..K: test
  fold k, validation fold k + 1 (the first after the last), the rest train. "us8k-10fold" is this
  protocol on UrbanSound8K's ten folds, under the name the literature uses.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from core.errors import UserError

URBANSOUND8K_CLASSES = (            # UrbanSound8K's classes (classID = index); other data sets name their own
    "air_conditioner", "car_horn", "children_playing", "dog_bark", "drilling",
    "engine_idling", "gun_shot", "jackhammer", "siren", "street_music",
)
TRAIN_FOLDS = tuple(range(1, 9))    # the competition's train split
TEST_FOLDS = (9, 10)                # the competition's test split
ALL_FOLDS = TRAIN_FOLDS + TEST_FOLDS
SALIENCE_VALUES = (1, 2)            # 1 = foreground, 2 = background (a human annotation)
SALIENCE_NAMES = {1: "foreground", 2: "background"}

Protocol = Literal["kaggle", "us8k-10fold", "kfold"]
PROTOCOLS: tuple[str, ...] = ("kaggle", "us8k-10fold", "kfold")
HELD_OUT_PROTOCOLS = ("us8k-10fold", "kfold")  # each fold training tests one labelled fold (no separate test split)


@dataclass(frozen=True)
class FoldRoles:
    """What each fold does in one fold training, named by `key` (the k of its output files)."""

    key: int
    train: tuple[int, ...]
    validation: int
    test: int | None                # None: the data's separate test split (kaggle protocol)


def fold_roles(protocol: str, key: int, folds: tuple[int, ...] | None = None) -> FoldRoles:
    """The roles of the folds in fold training `key` under `protocol`.

    `folds`: the data's cross-validation folds (kaggle: those beside the test split; kfold: every
    labelled fold); None means UrbanSound8K's (kaggle: 1-8). kfold needs them.
    """
    if protocol == "kaggle":
        folds = TRAIN_FOLDS if folds is None else folds
        if key not in folds:
            if folds == TRAIN_FOLDS:
                raise UserError(f"the kaggle protocol trains folds 1-8 (fold model k validates on fold k; 9-10 are the test split); got fold {key}. Use --protocol us8k-10fold to test on every fold")
            raise UserError(f"the kaggle protocol trains the data's folds {fold_span(folds)} (fold model k validates on "
                            f"fold k); got fold {key}")
        return FoldRoles(key, tuple(f for f in folds if f != key), key, None)
    if protocol == "kfold":
        if not folds or len(folds) < 3:
            raise UserError(f"--protocol kfold needs at least 3 folds (test, validation, train); the data has "
                            f"{len(folds or ())}")
        ordered = tuple(sorted(folds))
        if key not in ordered:
            raise UserError(f"the kfold protocol tests the data's folds {fold_span(ordered)}; got fold {key}")
        validation = ordered[(ordered.index(key) + 1) % len(ordered)]
        return FoldRoles(key, tuple(f for f in ordered if f not in (key, validation)), validation, key)
    if protocol == "us8k-10fold":
        if key not in ALL_FOLDS:
            raise UserError(f"the us8k-10fold protocol tests folds 1-10; got fold {key}")
        validation = key % len(ALL_FOLDS) + 1
        return FoldRoles(key, tuple(f for f in ALL_FOLDS if f not in (key, validation)), validation, key)
    raise UserError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")


def protocol_folds(protocol: str, folds: tuple[int, ...] | None = None) -> tuple[int, ...]:
    """Every fold training of a protocol (its keys); `folds` as in fold_roles (kfold: the data's, else ())."""
    if protocol == "kfold":
        return tuple(sorted(folds or ()))
    if protocol == "kaggle":
        return TRAIN_FOLDS if folds is None else tuple(folds)
    return ALL_FOLDS


def fold_span(folds: tuple[int, ...]) -> str:
    """(1, 2, 3, 4, 5) -> '1-5'; other sets listed."""
    ordered = sorted(folds)
    if ordered == list(range(ordered[0], ordered[-1] + 1)):
        return f"{ordered[0]}-{ordered[-1]}"
    return ",".join(map(str, ordered))
