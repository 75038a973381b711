"""Train a solution over its folds and write every output: per-fold CSVs, summary, plots, submission.

Protocols (core/folds.py): "kaggle" writes per fold the test-split probabilities
(best_model_fold<k>.csv), the OOF predictions of validation fold k and a fold-average submission;
"us8k-10fold" writes per test fold k the probabilities of fold k's clips (test_fold<k>.csv), predicted
by the checkpoint that fold k + 1 chose, and a summary of the mean +- std over the test folds.

Several runs may share one output folder, each training other folds (`--folds k` on several
machines or GPUs): a run locks its folds for its whole duration (a run asking for a fold another
run holds is refused at once), and the solution summary is rewritten by every run until no fold
finished meanwhile, so the last run to finish leaves it covering every fold.
Under torchrun all ranks run this together and rank 0 alone writes.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from core.atomic import TEMP_SUFFIX, check_writable, write_csv, write_json
from core.data.fold_assignment import store_folds
from core.data.metadata import DataSource
from core.errors import UserError
from core.folds import HELD_OUT_PROTOCOLS, fold_roles, protocol_folds
from core.metrics import confusion, score
from core.predictions import probability_columns
from core.progress import TrainProgress
from core.recipe import Recipe
from core.solution_folder import SolutionFolder
from core.train import checkpoint, distributed
from core.train.data import PreparedData, check_protocol, prepare_data, protocol_data_folds
from core.train.fold import FoldResult, Runtime, build_on_device, fold_identity, predict, train_fold
from core.train.lock import FolderBusy, folder_lock
from core.train.options import TrainOptions
from core.train.own_data import recipe_for_data
from core.train.run_identity import IDENTITY_KEY, check_identity


@dataclass
class SolutionSummary:
    solution: str
    folds: dict[int, dict]
    cv_mean: dict[str, float]       # kaggle: validation scores; us8k-10fold: test-fold scores
    test: dict[str, float] | None
    submission: Path | None
    protocol: str = "kaggle"
    cv_std: dict[str, float] | None = None
    out: Path | None = None          # the solution folder
    test_clips: int = 0              # clips the test scores cover
    skipped_clips: int = 0           # of the test clips asked for, dropped by --skip-bad-audio (skipped_audio.csv)
    folds_total: int = 0             # us8k-10fold / kfold: the protocol's fold trainings on this data (the K of "n of K")


def train_solution(recipe: Recipe, source: DataSource, options: TrainOptions,
                   progress: TrainProgress | None = None) -> SolutionSummary:
    """Train every requested fold not yet finished in `options.out`, then write the solution outputs.

    The recipe takes the data set's classes first (a fusion recipe on data without salience is refused).
    """
    recipe = recipe_for_data(recipe, source)
    out = Path(options.out)
    folder = SolutionFolder(out)
    main = distributed.current().is_main
    check_protocol(source, options.protocol)
    data_folds = protocol_data_folds(source, options.protocol)
    folds = options.folds or (tuple(f for f in recipe.training.folds if f in protocol_folds("kaggle", data_folds))
                              if options.protocol == "kaggle" else protocol_folds(options.protocol, data_folds))
    for fold in folds:  # an impossible fold is refused before any audio is cached or any file written
        fold_roles(options.protocol, fold, data_folds)
    if main:
        check_writable(out)
        if options.write_outputs:
            check_writable(options.submissions)
        if source.unstored_folds is not None:  # folds assigned by this run: every later run reads them back
            store_folds(source.unstored_folds, folder.assigned_folds)
    progress = progress or (TrainProgress(options.progress) if main else quiet_progress())
    with fold_locks(out, folds), progress.running():
        data = prepare_data(recipe, source, options)
        progress.start("folds", len(folds), "folds")
        for fold in folds:
            result_path = folder.result(fold)
            if distributed.broadcast_object(result_path.exists() if main else None):
                if main:
                    check_finished_fold(recipe, data, options, fold)
                progress.log(f"fold {fold}: finished earlier ({result_path.name}), skipped")
                if main:
                    folder.resume(fold).unlink(missing_ok=True)  # a kill can land between the two
            else:
                result = train_logged_fold(recipe, data, fold, options, progress)
                if main and options.write_outputs:  # before the result file marks the fold done
                    plot_fold_curves(recipe, folder, [fold], folder.curves(fold))
                write_fold_outputs(recipe, data, result, options)
            progress.advance("folds")
        summary = write_solution_outputs(recipe, data, options) if main else None
        return distributed.broadcast_object(summary)


def train_logged_fold(recipe: Recipe, data: PreparedData, fold: int, options: TrainOptions,
                      progress: TrainProgress) -> FoldResult:
    """train_fold, with the epochs also written for TensorBoard when --tensorboard is given (rank 0)."""
    if options.tensorboard is None or not distributed.current().is_main:
        return train_fold(recipe, data, fold, options, progress=progress)
    from core.train.fold import FoldSettings
    from core.train.tensorboard import FoldScalars, hparams_of

    scalars = FoldScalars(options.tensorboard, recipe, options.protocol, fold)
    result = train_fold(recipe, data, fold, options, on_epoch=scalars.add_epoch, progress=progress)
    settings = FoldSettings.resolve(recipe, options)
    scalars.close(hparams_of(recipe, settings.epochs, settings.seed, options.protocol),
                  getattr(result.best, recipe.training.select_metric), recipe.training.select_metric)
    return result


def plot_fold_curves(recipe: Recipe, folder: SolutionFolder, folds: list[int], path: Path) -> None:
    """Training curves of `folds` from their history files (one fold, or all overlaid)."""
    from core.plots import plot_curves

    histories = {fold: pd.read_csv(folder.history(fold)).to_dict("records") for fold in folds
                 if folder.history(fold).exists()}
    if histories:
        what = f"fold {folds[0]}" if len(folds) == 1 else f"folds {','.join(map(str, histories))}"
        plot_curves(histories, f"{recipe.name}: training curves, {what}", path)


def quiet_progress() -> TrainProgress:
    """No bars and no log lines (ranks other than 0 under torchrun)."""
    from rich.console import Console

    return TrainProgress(False, Console(stderr=True, quiet=True))


@contextlib.contextmanager
def fold_locks(out: Path, folds: tuple[int, ...]) -> Iterator[None]:
    """Hold `folds` of `out` (out/.locks/fold<k>) on rank 0; clear the temp files killed runs left for them.

    Only these folds' files are cleaned: other runs may be writing other folds into the same folder.
    """
    if not distributed.current().is_main:
        yield
        return
    folder = SolutionFolder(out)
    with contextlib.ExitStack() as held:
        for fold in folds:
            try:
                held.enter_context(folder_lock(folder.fold_lock(fold)))
            except FolderBusy as error:  # a file system without locks is reported as it is
                raise UserError(f"fold {fold} of {out} is being trained by another run: {error}") from error
            for path in folder.fold_files(fold):
                for leftover in out.glob(f".{path.name}.*{TEMP_SUFFIX}"):
                    leftover.unlink(missing_ok=True)
        yield


def write_fold_outputs(recipe: Recipe, data: PreparedData, result: FoldResult, options: TrainOptions) -> None:
    """The predictions of the fold's best checkpoint; the result file (written last) marks the fold done.

    kaggle: OOF of validation fold k and the test split; us8k-10fold: test fold k. Under torchrun
    every rank predicts its shard with rank 0's checkpoint; rank 0 writes.
    """
    folder = SolutionFolder(options.out)
    main = distributed.current().is_main
    runtime = Runtime.from_options(options)
    model = build_on_device(recipe, runtime, 0, result.fold)
    if main:
        checkpoint.load_best_into(folder.best_model(result.fold), model, recipe.name)
    distributed.broadcast_module(model)
    batch_size = distributed.per_replica_batch(recipe.training.batch_size, distributed.current())
    roles = data.roles(result.fold)
    fold_result = {"fold": result.fold, "protocol": data.protocol, "validation_fold": roles.validation,
                   "best_epoch": result.best_epoch, **result.best.as_dict(), "epochs": len(result.history),
                   IDENTITY_KEY: result.identity.fields}  # no wall-clock time: a resumed run writes the same file
    keys = ["slice_file_name", "fold", "classID"]
    test_rows = data.test_rows(result.fold)
    if test_rows is not None:  # us8k-10fold: the held-out fold, seen here for the first time
        test_probs, _ = predict(model, data.train, test_rows, batch_size, runtime, options)
        if not main:
            return
        table = data.train.table.iloc[test_rows][keys].reset_index(drop=True)
        write_csv(with_probabilities(table, test_probs, recipe.classes), folder.test(result.fold))
        fold_result["test_fold"] = roles.test
        fold_result["test"] = score(table["classID"].to_numpy(), test_probs.argmax(axis=1)).as_dict()
        write_json(fold_result, folder.result(result.fold))
        folder.resume(result.fold).unlink(missing_ok=True)
        return
    _, val_rows = data.fold_rows(result.fold)
    oof_probs, _ = predict(model, data.train, val_rows, batch_size, runtime, options)
    test_probs, _ = predict(model, data.test, np.arange(len(data.test.table)), batch_size, runtime, options)
    if not main:
        return
    oof = data.train.table.iloc[val_rows][keys].reset_index(drop=True)
    write_csv(with_probabilities(oof, oof_probs, recipe.classes), folder.oof(result.fold))
    test = data.test.table[["ID"]].reset_index(drop=True)
    write_csv(with_probabilities(test, test_probs, recipe.classes), folder.best_predictions(result.fold))
    if has_labels(data):
        fold_result["test"] = score(test_labels(data), test_probs.argmax(axis=1)).as_dict()
    write_json(fold_result, folder.result(result.fold))
    folder.resume(result.fold).unlink(missing_ok=True)  # the resume state is no longer needed


def check_finished_fold(recipe: Recipe, data: PreparedData, options: TrainOptions, fold: int) -> None:
    """A finished fold is reused (or merged) only if this run would compute it the same way."""
    folder = SolutionFolder(options.out)
    check_identity(fold_identity(recipe, data, fold, options), folder.read_result(fold).get(IDENTITY_KEY),
                   str(folder.result(fold)), fold, f"delete {folder.result(fold)} to train fold {fold} again")


def with_probabilities(frame: pd.DataFrame, probs: np.ndarray, class_names: tuple[str, ...]) -> pd.DataFrame:
    """frame + TARGET (argmax, the class index) + one column per class (predictions.probability_columns)."""
    frame = frame.copy()
    frame["TARGET"] = probs.argmax(axis=1)
    for column, values in zip(probability_columns(class_names), probs.T, strict=True):
        frame[column] = values
    return frame


def has_labels(data: PreparedData) -> bool:
    if data.test is None:
        return False
    labels = data.test.table["classID"]
    return len(labels) > 0 and not labels.isna().any()


def test_labels(data: PreparedData) -> np.ndarray:
    return data.test.table["classID"].to_numpy(dtype=np.int64)


def write_solution_outputs(recipe: Recipe, data: PreparedData, options: TrainOptions) -> SolutionSummary:
    """summary.json, the OOF confusion matrix and the fold-average submission, from every finished fold.

    Rewritten until no other run finished a fold in between (runs sharing the folder), so the run
    that writes last has read every fold finished before it wrote.
    """
    folder = SolutionFolder(options.out)
    while True:
        finished = folder.finished_folds()
        summary = write_summary_of(recipe, data, options, finished)
        if folder.finished_folds() == finished:
            return summary


def write_summary_of(recipe: Recipe, data: PreparedData, options: TrainOptions, folds: list[int]) -> SolutionSummary:
    """summary.json, oof_confusion.png and the submission from the finished `folds`.

    Every fold, trained by this run or not, must have this run's identity (but its fold number) and
    hold the same test clips; its probabilities are aligned on the clips' IDs, never on row positions.
    """
    folder = SolutionFolder(options.out)
    if not folds:
        raise UserError(f"no finished fold in {folder.root}")
    for fold in folds:
        check_finished_fold(recipe, data, options, fold)
    results = folder.read_results(folds)
    plot_fold_curves(recipe, folder, list(results), folder.all_curves)
    if data.protocol in HELD_OUT_PROTOCOLS:
        return write_ten_fold_summary(recipe, data, folder, results, options)
    cv_mean = {key: float(np.mean([r[key] for r in results.values()])) for key in ("accuracy", "macro_f1", "composite")}
    oof = pd.concat([pd.read_csv(folder.oof(fold)) for fold in results], ignore_index=True)
    oof_scores = score(oof["classID"].to_numpy(), oof["TARGET"].to_numpy())
    from core.plots import plot_confusion

    plot_confusion(confusion(oof["classID"].to_numpy(), oof["TARGET"].to_numpy(), recipe.num_classes), recipe.classes,
                   f"{recipe.name}: out-of-fold (folds {','.join(map(str, results))}), "
                   f"composite {oof_scores.composite:.4f}", folder.oof_confusion)
    ids = data.test.table["ID"]
    test_probs = np.mean([aligned_probabilities(folder, folder.best_predictions(fold), fold, "ID", ids, recipe.classes)
                          for fold in results], axis=0)
    submission = pd.DataFrame({"ID": ids.to_numpy(), "TARGET": test_probs.argmax(axis=1)})
    submission_path = write_csv(submission, Path(options.submissions) / f"{recipe.name}.csv")
    test_scores = score(test_labels(data), submission["TARGET"].to_numpy()).as_dict() if has_labels(data) else None
    skipped = int(data.source.test["path"].isin(data.bad_audio.keys()).sum())
    summary = SolutionSummary(recipe.name, results, cv_mean, test_scores, submission_path, out=folder.root,
                              test_clips=len(ids), skipped_clips=skipped)
    write_json({"solution": recipe.name, "protocol": "kaggle", "folds": {str(k): v for k, v in results.items()},
                "cv_mean": cv_mean, "oof": oof_scores.as_dict(), "test_fold_average": test_scores,
                "test_clips": len(ids), "skipped_test_clips": skipped, "recipe_changes": list(options.recipe_changes),
                "submission": str(submission_path), "fold_leakage": data.source.fold_leakage}, folder.summary)
    return summary


def aligned_probabilities(folder: SolutionFolder, path: Path, fold: int, key: str, expected: pd.Series,
                          class_names: tuple[str, ...]) -> np.ndarray:
    """The class probabilities in `path`, in the order of `expected` (its `key` column, e.g. ID).

    A fold whose file does not hold exactly the expected clips is refused, naming the fold and the
    missing and extra IDs: its probabilities cannot be merged with this run's.
    """
    frame = pd.read_csv(path, dtype={key: str})
    wanted = expected.astype(str)
    have, want = set(frame[key]), set(wanted)
    missing, extra = sorted(want - have), sorted(have - want)
    duplicated = sorted(set(frame[key][frame[key].duplicated()]))
    if missing or extra or duplicated:
        problems = [f"{len(found)} {what} {key}(s) ({', '.join(found[:5])}{', ...' if len(found) > 5 else ''})"
                    for what, found in (("missing", missing), ("extra", extra), ("repeated", duplicated)) if found]
        raise UserError(f"fold {fold}: {path} does not hold this run's test clips: {'; '.join(problems)}. It was "
                        f"made with other test settings (--max-test-clips, --skip-bad-audio, data); delete "
                        f"{folder.result(fold)} to train fold {fold} again.")
    return frame.set_index(key).loc[wanted.to_numpy(), probability_columns(class_names)].to_numpy()


SCORE_KEYS = ("accuracy", "macro_f1", "composite")


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for a single value) of fold scores."""
    array = np.asarray(values, dtype=float)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0


def write_ten_fold_summary(recipe: Recipe, data: PreparedData, folder: SolutionFolder,
                           results: dict[int, dict], options: TrainOptions) -> SolutionSummary:
    """summary.json (per test fold, mean +- std over the folds present), pooled test confusion PNG.

    For us8k-10fold and kfold alike ("n of K": K is the protocol's fold count on this data). Each test fold's probabilities are aligned on slice_file_name with the clips of that fold in this run.
    """
    from core.plots import plot_confusion

    stats = {key: mean_std([r["test"][key] for r in results.values()]) for key in SCORE_KEYS}
    mean, std = {k: v[0] for k, v in stats.items()}, {k: v[1] for k, v in stats.items()}
    truth, predicted = [], []
    for fold in results:
        clips = data.train.table.iloc[data.test_rows(fold)]
        probs = aligned_probabilities(folder, folder.test(fold), fold, "slice_file_name", clips["slice_file_name"],
                                      recipe.classes)
        truth.append(clips["classID"].to_numpy())
        predicted.append(probs.argmax(axis=1))
    truth, predicted = np.concatenate(truth), np.concatenate(predicted)
    pooled_scores = score(truth, predicted)
    leakage, total = data.source.fold_leakage, len(data.fold_keys())
    plot_confusion(confusion(truth, predicted, recipe.num_classes), recipe.classes,
                   f"{recipe.name}: {data.protocol}, test folds {','.join(map(str, results))} pooled "
                   f"({len(results)} of {total}), accuracy {pooled_scores.accuracy:.4f}"
                   + (" - FOLD LEAKAGE ALLOWED" if leakage else ""), folder.test_confusion)
    write_json({"solution": recipe.name, "protocol": data.protocol, "folds_done": len(results),
                "folds_total": total, "folds": {str(k): v for k, v in results.items()},
                "mean": mean, "std": std, "std_kind": "sample standard deviation over the test folds (ddof 1)",
                "pooled": pooled_scores.as_dict(), "test_clips": len(truth), "skipped_clips": len(data.bad_audio),
                "recipe_changes": list(options.recipe_changes), "fold_leakage": leakage}, folder.summary)
    return SolutionSummary(recipe.name, results, mean, None, None, data.protocol, std, out=folder.root,
                           test_clips=len(truth), skipped_clips=len(data.bad_audio), folds_total=total)
