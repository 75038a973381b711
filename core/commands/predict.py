"""`predict`: run a data folder's test split through every fold checkpoint of a trained solution."""
from __future__ import annotations

from pathlib import Path

import typer

from core.commands.options import (
    CacheDir,
    Device,
    Precision,
    Progress,
    SkipBadAudio,
    TestSalience,
    Workers,
    workers_count,
)


def register(app: typer.Typer) -> None:
    app.command("predict")(predict)


def predict(
    solution: str = typer.Argument(..., help="A trained solution (its checkpoints are in --solutions/<solution>)."),
    data: Path = typer.Option(..., help="Data folder whose test split is predicted."),
    test_salience: TestSalience = None,          # how to read the data's test split ...
    skip_bad_audio: SkipBadAudio = False,
    solutions: Path = typer.Option(Path("solutions"), help="Folder holding the solution folders."),
    out: Path | None = typer.Option(None, help="Where the per-fold CSVs go [default: <solution dir>/predict-<data folder name>]."),
    submission: Path | None = typer.Option(None, help="Fold-average submission [default: submissions/<solution>-<data folder name>.csv]."),
    batch_size: int = typer.Option(64, min=1, help="Clips per batch."),
    device: Device = "auto",                     # ... and where to run the fold models
    precision: Precision = "auto",
    workers: Workers = "auto",
    cache_dir: CacheDir = None,
    progress: Progress = True,
) -> None:
    """Predict the test split with every fold model in one pass over the audio; write CSVs and a submission."""
    from rich.console import Console

    from core.atomic import check_writable
    from core.data.metadata import load_source
    from core.errors import UserError
    from core.progress import TrainProgress
    from core.train import distributed
    from core.train.fold import Runtime
    from core.train.options import TrainOptions
    from core.train.predict import load_fold_models, predict_folds, write_predictions

    if distributed.launched_by_torchrun():
        raise UserError("predict runs in one process (it already reads the audio once for every fold model); "
                        "start it with python -m core predict, not torchrun")
    from core.solution_folder import SolutionFolder

    solution_dir = SolutionFolder.of(solutions, solution).root
    name = Path(data).resolve().name
    out = out or SolutionFolder(solution_dir).predictions_of(name)
    submission = submission or Path("submissions") / f"{solution}-{name}.csv"
    check_writable(out)  # fail now, not after predicting every clip
    check_writable(submission.parent)
    options = TrainOptions(out=out, device=device, precision=precision, workers=workers_count(workers), progress=progress,
                           test_salience=test_salience, skip_bad_audio=skip_bad_audio, write_outputs=False,
                           cache_dir=cache_dir)
    models = load_fold_models(solution_dir, solution, Runtime.from_options(options))
    source = load_source(data)
    tracker = TrainProgress(progress)
    with tracker.running():
        fold_probs, test, skipped = predict_folds(models, source, options, batch_size, tracker)
    frame = write_predictions(fold_probs, test, out, submission, skipped, models[0].recipe.classes)
    console = Console(stderr=True)
    console.print(f"{len(models)} fold models x {len(frame)} clips -> {out}/best_model_fold<k>.csv and {submission}")
    if skipped:
        console.print(f"{len(skipped)} unreadable clip(s) skipped (--skip-bad-audio), listed in "
                      f"{SolutionFolder(out).skipped_audio}; they are not in the CSVs nor the submission")
    model_classes = models[0].recipe.classes
    if test["classID"].notna().all() and len(test) and tuple(source.class_names) != tuple(model_classes):
        # The labels index the data's classes, the predictions the models': comparing them would be noise.
        console.print(f"not scored: the data's classes ({', '.join(source.class_names)}) are not the models' "
                      f"({', '.join(model_classes)}); the CSVs hold the models' classes", highlight=False,
                      markup=False, soft_wrap=True)
    elif test["classID"].notna().all() and len(test):
        from core.metrics import score

        result = score(test["classID"].to_numpy(dtype=int), frame["TARGET"].to_numpy())
        covered = f" ({len(frame)} of {len(frame) + len(skipped)} clips)" if skipped else ""
        console.print(f"test accuracy {result.accuracy:.4f}, macro-F1 {result.macro_f1:.4f}, "
                      f"composite {result.composite:.4f}{covered}")
