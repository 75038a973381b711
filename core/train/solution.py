"""Train a solution over its folds and write every output: per-fold CSVs, summary, plot, submission.

Several runs may share one output folder, each training other folds (`--folds k` on several
machines or GPUs): a run locks its folds for its whole duration (a run asking for a fold another
run holds is refused at once), and the solution summary is rewritten by every run until no fold
finished meanwhile, so the last run to finish leaves it covering every fold.
Under torchrun all ranks run this together and rank 0 alone writes.
"""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from core import CLASS_NAMES, PROB_COLUMNS
from core.atomic import TEMP_SUFFIX, check_writable, write_csv, write_json
from core.data.metadata import DataSource
from core.errors import UserError
from core.metrics import Scores, confusion, score
from core.recipe import Recipe
from core.train import checkpoint, distributed
from core.train.data import PreparedData, prepare_data
from core.train.fold import fold_fingerprint, FoldResult, Runtime, build_for_training, predict, train_fold
from core.train.lock import folder_lock
from core.train.options import TrainOptions
from core.train.progress import TrainProgress


@dataclass
class SolutionSummary:
    solution: str
    folds: dict[int, dict]
    cv_mean: dict[str, float]
    test: dict[str, float] | None
    submission: Path | None


def train_solution(recipe: Recipe, source: DataSource, options: TrainOptions,
                   progress: TrainProgress | None = None) -> SolutionSummary:
    """Train every requested fold not yet finished in `options.out`, then write the solution outputs."""
    out = Path(options.out)
    main = distributed.current().is_main
    if main:
        check_writable(out)
        if options.write_outputs:
            check_writable(options.submissions)
    progress = progress or (TrainProgress(options.progress) if main else quiet_progress())
    folds = options.folds or recipe.training.folds
    with fold_locks(out, folds), progress.running():
        data = prepare_data(recipe, source, options)
        progress.start("folds", len(folds), "folds")
        for fold in folds:
            result_path = out / f"result_fold{fold}.json"
            if distributed.broadcast_object(result_path.exists() if main else None):
                if main:
                    check_same_run(result_path, fold_fingerprint(recipe, data, fold, options))
                progress.log(f"fold {fold}: finished earlier ({result_path.name}), skipped")
                if main:
                    (out / f"last_fold{fold}.pt").unlink(missing_ok=True)  # a kill can land between the two
            else:
                result = train_fold(recipe, data, fold, options, progress=progress)
                write_fold_outputs(recipe, data, result, options)
            progress.advance("folds")
        summary = write_solution_outputs(recipe, data, options) if main else None
        return distributed.broadcast_object(summary)


def quiet_progress() -> TrainProgress:
    """No bars and no log lines (ranks other than 0 under torchrun)."""
    from rich.console import Console

    return TrainProgress(False, Console(stderr=True, quiet=True))


FOLD_FILES = ("best_model_fold{k}.pt", "best_model_fold{k}.csv", "oof_fold{k}.csv", "history_fold{k}.csv",
              "result_fold{k}.json", "last_fold{k}.pt")


@contextlib.contextmanager
def fold_locks(out: Path, folds: tuple[int, ...]) -> Iterator[None]:
    """Hold `folds` of `out` (out/.locks/fold<k>) on rank 0; clear the temp files killed runs left for them.

    Only these folds' files are cleaned: other runs may be writing other folds into the same folder.
    """
    if not distributed.current().is_main:
        yield
        return
    with contextlib.ExitStack() as held:
        for fold in folds:
            try:
                held.enter_context(folder_lock(out / ".locks" / f"fold{fold}"))
            except UserError as error:
                raise UserError(f"fold {fold} of {out} is being trained by another run: {error}") from error
            for name in FOLD_FILES:
                for leftover in out.glob(f".{name.format(k=fold)}.*{TEMP_SUFFIX}"):
                    leftover.unlink(missing_ok=True)
        yield


def write_fold_outputs(recipe: Recipe, data: PreparedData, result: FoldResult, options: TrainOptions) -> None:
    """OOF and test probabilities of the fold's best checkpoint; the result file marks the fold done.

    Under torchrun every rank predicts its shard with rank 0's checkpoint; rank 0 writes.
    """
    out = Path(options.out)
    main = distributed.current().is_main
    runtime = Runtime.from_options(options)
    model = build_for_training(recipe, runtime, 0, result.fold)
    if main:
        checkpoint.load_best_into(out / f"best_model_fold{result.fold}.pt", model, recipe.name)
    distributed.broadcast_module(model)
    batch_size = distributed.per_replica_batch(recipe.training.batch_size, distributed.current())
    _, val_rows = data.fold_rows(result.fold)
    oof_probs, _ = predict(model, data.train, val_rows, batch_size, runtime, options)
    test_probs, _ = predict(model, data.test, np.arange(len(data.test.table)), batch_size, runtime, options)
    if not main:
        return
    oof = data.train.table.iloc[val_rows][["slice_file_name", "fold", "classID"]].reset_index(drop=True)
    write_csv(with_probabilities(oof, oof_probs), out / f"oof_fold{result.fold}.csv")
    test = data.test.table[["ID"]].reset_index(drop=True)
    write_csv(with_probabilities(test, test_probs), out / f"best_model_fold{result.fold}.csv")
    fold_result = {"fold": result.fold, "best_epoch": result.best_epoch, **result.best.as_dict(),
                   "fingerprint": result.fingerprint}
    if has_labels(data):
        fold_result["test"] = score(test_labels(data), test_probs.argmax(axis=1)).as_dict()
    write_json(fold_result, out / f"result_fold{result.fold}.json")
    (out / f"last_fold{result.fold}.pt").unlink(missing_ok=True)  # the resume state is no longer needed


def check_same_run(result_path: Path, fingerprint: str) -> None:
    """A finished fold is reused only if it was trained with these settings (recipe, epochs, seed, data)."""
    stored = json.loads(result_path.read_text()).get("fingerprint")
    if stored != fingerprint:
        raise UserError(f"{result_path} was finished by a run with other settings (recipe, epochs, seed, data or "
                        f"precision). Use another --out, or delete {result_path.parent} to train again.")


def with_probabilities(frame: pd.DataFrame, probs: np.ndarray) -> pd.DataFrame:
    """frame + TARGET (argmax) + one column per class."""
    frame = frame.copy()
    frame["TARGET"] = probs.argmax(axis=1)
    for column, values in zip(PROB_COLUMNS, probs.T):
        frame[column] = values
    return frame


def has_labels(data: PreparedData) -> bool:
    labels = data.test.table["classID"]
    return len(labels) > 0 and not labels.isna().any()


def test_labels(data: PreparedData) -> np.ndarray:
    return data.test.table["classID"].to_numpy(dtype=np.int64)


def write_solution_outputs(recipe: Recipe, data: PreparedData, options: TrainOptions) -> SolutionSummary:
    """summary.json, the OOF confusion matrix and the fold-average submission, from every finished fold.

    Rewritten until no other run finished a fold in between (runs sharing the folder), so the run
    that writes last has read every fold finished before it wrote.
    """
    out = Path(options.out)
    while True:
        finished = finished_folds(out)
        summary = write_summary_of(recipe, data, options, finished)
        if finished_folds(out) == finished:
            return summary


def finished_folds(out: Path) -> list[int]:
    """Folds with a result file in `out`, in order."""
    return sorted(int(path.stem.removeprefix("result_fold")) for path in out.glob("result_fold*.json"))


def write_summary_of(recipe: Recipe, data: PreparedData, options: TrainOptions, folds: list[int]) -> SolutionSummary:
    """summary.json, oof_confusion.png and the submission from the finished `folds`."""
    out = Path(options.out)
    results = {fold: json.loads((out / f"result_fold{fold}.json").read_text()) for fold in folds}
    if not results:
        raise UserError(f"no finished fold in {out}")
    cv_mean = {key: float(np.mean([r[key] for r in results.values()])) for key in ("accuracy", "macro_f1", "composite")}
    oof = pd.concat([pd.read_csv(out / f"oof_fold{fold}.csv") for fold in results], ignore_index=True)
    oof_scores = score(oof["classID"].to_numpy(), oof["TARGET"].to_numpy())
    from core.plots import plot_confusion

    plot_confusion(confusion(oof["classID"].to_numpy(), oof["TARGET"].to_numpy()), CLASS_NAMES,
                   f"{recipe.name}: out-of-fold (folds {','.join(map(str, results))}), "
                   f"composite {oof_scores.composite:.4f}", out / "oof_confusion.png")
    test_probs = np.mean([pd.read_csv(out / f"best_model_fold{fold}.csv")[PROB_COLUMNS].to_numpy()
                          for fold in results], axis=0)
    ids = pd.read_csv(out / f"best_model_fold{next(iter(results))}.csv")["ID"]
    submission = pd.DataFrame({"ID": ids, "TARGET": test_probs.argmax(axis=1)})
    submission_path = write_csv(submission, Path(options.submissions) / f"{recipe.name}.csv")
    test_scores = score(test_labels(data), submission["TARGET"].to_numpy()).as_dict() if has_labels(data) else None
    summary = SolutionSummary(recipe.name, results, cv_mean, test_scores, submission_path)
    write_json({"solution": recipe.name, "folds": {str(k): v for k, v in results.items()}, "cv_mean": cv_mean,
                "oof": oof_scores.as_dict(), "test_fold_average": test_scores,
                "submission": str(submission_path)}, out / "summary.json")
    return summary
