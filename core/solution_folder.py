"""The one owner of a solution's output folder: every file name in it is built and parsed here.

A solution folder (`solutions/<name>/`, `solutions/<name>/us8k-10fold/`, or the demo's
`solutions/demo/<name>/`) holds, per fold training k:
  best_model_fold<k>.pt    the best epoch's weights (with recipe, epoch and scores)
  best_model_fold<k>.csv   kaggle: the test split's probabilities from that checkpoint
  oof_fold<k>.csv          kaggle: the validation fold's probabilities (out of fold)
  test_fold<k>.csv         us8k-10fold, kfold: test fold k's probabilities
  history_fold<k>.csv      one row per epoch
  result_fold<k>.json      the fold's scores and run identity; written last, it marks the fold done
  last_fold<k>.pt          the resume state (deleted once the fold is done)
  best_model_fold<k>.staged.pt  a best candidate not yet recorded by the resume state
  curves_fold<k>.png       training curves
and for the whole solution: summary.json, curves.png, oof_confusion.png or test_confusion.png,
skipped_audio.csv, folds.csv (folds assigned to data without folds), detect_thresholds.csv (`tune-detect`), the lock
files under .locks/ and predict-<data>/ folders of `predict`.
Inference and training both import this module; it imports nothing of either.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from core.errors import UserError

DEMO_FOLDER = "demo"  # runs on the synthetic demo set write under solutions/demo/ and submissions/demo/

_PER_FOLD = {
    "best_model": "best_model_fold{k}.pt",
    "best_predictions": "best_model_fold{k}.csv",
    "staged_best": "best_model_fold{k}.staged.pt",
    "oof": "oof_fold{k}.csv",
    "test": "test_fold{k}.csv",
    "history": "history_fold{k}.csv",
    "result": "result_fold{k}.json",
    "resume": "last_fold{k}.pt",
    "curves": "curves_fold{k}.png",
}


def fold_file_name(kind: str, fold: int | str) -> str:
    """The name of fold `fold`'s file of `kind` (a key of the per-fold table above); fold "*": a glob."""
    return _PER_FOLD[kind].format(k=fold)


def fold_of(kind: str, name: str) -> int | None:
    """The fold number in file name `name` if it is a file of `kind`, else None."""
    prefix, suffix = _PER_FOLD[kind].split("{k}")
    found = re.fullmatch(re.escape(prefix) + r"(\d+)" + re.escape(suffix), name)
    return int(found.group(1)) if found else None


@dataclass(frozen=True)
class SolutionFolder:
    """Names, lists and reads the files of one solution folder (`root`)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @classmethod
    def of(cls, solutions: Path, name: str, protocol: str = "kaggle") -> SolutionFolder:
        """Where `train` writes solution `name`'s results for `protocol` under `solutions` (its default --out)."""
        return cls(Path(solutions) / name if protocol == "kaggle" else Path(solutions) / name / protocol)

    # per-fold files
    def fold_file(self, kind: str, fold: int) -> Path:
        """Fold `fold`'s file of `kind` ("oof", "test", "best_predictions", ...)."""
        return self.root / fold_file_name(kind, fold)

    def best_model(self, fold: int) -> Path:
        return self.root / fold_file_name("best_model", fold)

    def best_predictions(self, fold: int) -> Path:
        return self.root / fold_file_name("best_predictions", fold)

    def staged_best(self, fold: int) -> Path:
        return self.root / fold_file_name("staged_best", fold)

    def oof(self, fold: int) -> Path:
        return self.root / fold_file_name("oof", fold)

    def test(self, fold: int) -> Path:
        return self.root / fold_file_name("test", fold)

    def history(self, fold: int) -> Path:
        return self.root / fold_file_name("history", fold)

    def result(self, fold: int) -> Path:
        return self.root / fold_file_name("result", fold)

    def resume(self, fold: int) -> Path:
        return self.root / fold_file_name("resume", fold)

    def curves(self, fold: int) -> Path:
        return self.root / fold_file_name("curves", fold)

    def fold_files(self, fold: int) -> list[Path]:
        """Every file fold `fold` may own here (what a killed run may have left a temporary of)."""
        return [self.root / fold_file_name(kind, fold) for kind in _PER_FOLD]

    def fold_lock(self, fold: int) -> Path:
        return self.root / ".locks" / f"fold{fold}"

    # whole-solution files
    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def all_curves(self) -> Path:
        return self.root / "curves.png"

    @property
    def oof_confusion(self) -> Path:
        return self.root / "oof_confusion.png"

    @property
    def test_confusion(self) -> Path:
        return self.root / "test_confusion.png"

    @property
    def skipped_audio(self) -> Path:
        return self.root / "skipped_audio.csv"

    @property
    def assigned_folds(self) -> Path:
        """folds.csv: the folds assigned to data that gives none (its format: core/data/fold_assignment.py)."""
        return self.root / "folds.csv"

    @property
    def detect_thresholds(self) -> Path:
        """Per-class detection thresholds tuned out of fold (`tune-detect`); detect and monitor use them by default."""
        return self.root / "detect_thresholds.csv"

    def predictions_of(self, data_name: str) -> Path:
        """Where `predict` writes the per-fold CSVs for the data folder called `data_name`."""
        return self.root / f"predict-{data_name}"

    # listing and reading
    def folds_with(self, kind: str) -> list[int]:
        """The folds that have a file of `kind` here, in order."""
        if not self.root.is_dir():
            return []
        found = (fold_of(kind, path.name) for path in self.root.iterdir())
        return sorted(fold for fold in found if fold is not None)

    def finished_folds(self) -> list[int]:
        """Folds with a result file (finished), in order."""
        return self.folds_with("result")

    def read_result(self, fold: int) -> dict:
        """result_fold<k>.json as a dict; a file that is not a JSON object is a UserError naming it."""
        path = self.result(fold)
        try:
            result = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            result = error
        if not isinstance(result, dict):
            problem = f"not valid JSON ({result})" if isinstance(result, Exception) else "not a JSON object"
            raise UserError(f"{path}: {problem}. Restore it, or delete it to train fold {fold} again.")
        return result

    def read_results(self, folds: list[int] | None = None) -> dict[int, dict]:
        """fold -> result_fold<k>.json of `folds` (default: every finished fold)."""
        return {fold: self.read_result(fold) for fold in (self.finished_folds() if folds is None else folds)}

    def read_summary(self) -> dict | None:
        return json.loads(self.summary.read_text()) if self.summary.exists() else None


def solutions_root(base: Path, demo: bool) -> Path:
    """The folder holding solution folders: `base`, or `base/demo` for runs on the synthetic demo set."""
    return Path(base) / DEMO_FOLDER if demo else Path(base)
