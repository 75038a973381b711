"""Run identity: the named settings that change what a fold computes, and nothing else.

Stored as fields (not only a hash) in last_fold<k>.pt and result_fold<k>.json, so a resume or a
finished fold of other settings is refused with every differing field, both values and what to do.
Left out on purpose: the recipe's docstring summary, lineage parent and demo profile, which folds a
run trains, and where the data is mounted (the data enters by content: its rows and audio settings).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from core.errors import UserError
from core.folds import URBANSOUND8K_CLASSES
from core.recipe import Recipe

NOT_COMPUTATIONAL = ("name", "parent", "summary", "demo")  # recipe fields that change no number (name: "solution")
NOT_PER_FOLD = ("training.folds", "training.epochs")        # which folds to train; epochs is its own field
DATA_COLUMNS = ("slice_file_name", "fold", "classID", "salience")
IDENTITY_KEY = "identity"
# Fields added after outputs were first written: a stored identity without one had its default (the
# value every run before it had), so that folds finished then still resume and merge. Own data (#20)
# added classes (UrbanSound8K's until then), init_from and freeze_backbone_epochs; frontend.clip_seconds
# needs no entry: a recipe field, it is in every identity ever written.
ADDED_LATER: dict[str, Any] = {"training.trainer": "sam", "accumulate": 1, "classes": list(URBANSOUND8K_CLASSES),
                               "init_from": None, "freeze_backbone_epochs": 0}

# What to pass to get a stored value back, for the fields that a train option sets.
OPTION_OF = {"epochs": "--epochs", "seed": "--seed", "precision": "--precision", "training.lr": "--lr",
             "training.batch_size": "--batch-size", "protocol": "--protocol", "frontend.clip_seconds": "--clip-seconds",
             "init_from": "--init-from", "freeze_backbone_epochs": "--freeze-backbone-epochs",
             "accumulate": "--accumulate"}


@dataclass(frozen=True)
class RunIdentity:
    """Named fields (dotted recipe paths, epochs, seed, fold, ...) with plain JSON values."""

    fields: dict[str, Any]

    def without_fold(self) -> dict[str, Any]:
        return {name: value for name, value in self.fields.items() if name != "fold"}

    def differences(self, stored: dict[str, Any]) -> list[tuple[str, Any, Any]]:
        """(field, value here, value stored) of every field that differs, in name order."""
        stored = {**{name: value for name, value in ADDED_LATER.items() if name in self.fields}, **stored}
        names = sorted(set(self.fields) | set(stored))
        return [(name, self.fields.get(name, "absent"), stored.get(name, "absent")) for name in names
                if self.fields.get(name, "absent") != stored.get(name, "absent")]


def run_identity(recipe: Recipe, *, fold: int, epochs: int, seed: int, protocol: str, processes: int,
                 precision: str, train_table: pd.DataFrame, init_from: str | None = None,
                 freeze_backbone_epochs: int = 0, accumulate: int = 1) -> RunIdentity:
    """The identity of fold training `fold`: computational recipe fields and run settings, data by content.

    `init_from`: the fine-tuning start (its file name and content hash, core/train/init_from.py), or None.
    """
    fields = {name: value for name, value in flatten(recipe.to_dict()).items()
              if name.split(".")[0] not in NOT_COMPUTATIONAL and name not in NOT_PER_FOLD}
    fields.update(solution=recipe.name, epochs=epochs, seed=seed, fold=fold, protocol=protocol, processes=processes,
                  precision=precision, accumulate=accumulate, data=data_digest(train_table), init_from=init_from,
                  freeze_backbone_epochs=freeze_backbone_epochs)
    return RunIdentity(json.loads(json.dumps(fields, default=str)))  # tuples -> lists: as read back from JSON


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"training": {"lr": 1e-3}} -> {"training.lr": 1e-3}."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def data_digest(table: pd.DataFrame) -> str:
    """A hash of the rows a fold trains and validates on (file, fold, label, salience), not their paths."""
    rows = table[list(DATA_COLUMNS)].astype(str).to_csv(index=False)
    return f"{len(table)} clips, sha256 {hashlib.sha256(rows.encode()).hexdigest()[:16]}"


def check_identity(identity: RunIdentity, stored: dict | None, where: str, fold: int, retrain: str) -> None:
    """Refuse `stored` (read from `where`) unless it equals `identity`; name every differing field.

    A field `stored` predates reads its default (ADDED_LATER). `retrain`: what to do to start the
    fold over, e.g. "delete result_fold3.json to train fold 3 again".
    """
    if not isinstance(stored, dict):
        raise UserError(f"{where} has no run identity (written by an older version): it cannot be checked "
                        f"against this run. Use another --out, or {retrain}.")
    differences = identity.differences(stored)
    if differences:
        described = "; ".join(describe(name, here, there, where) for name, here, there in differences)
        raise UserError(f"fold {fold}: {where} was written by a run with other settings: {described}. "
                        f"Pass the same settings, use another --out, or {retrain}.")


def describe(name: str, here: Any, there: Any, where: str) -> str:
    """'precision: bf16 here, fp16 in last_fold3.pt (pass --precision fp16)'."""
    hint = f" (pass {OPTION_OF[name]} {there})" if name in OPTION_OF else ""
    if name == "data":
        hint = " (other clips: another data set, --max-clips-per-fold or --skip-bad-audio dropping others)"
    return f"{name}: {here} here, {there} in {Path(where).name}{hint}"
