"""The final table of fold scores printed after training."""
from __future__ import annotations

from rich.console import Console
from rich.table import Table

from core.solution_folder import SolutionFolder
from core.train.solution import SolutionSummary


def print_summary(summary: SolutionSummary, console: Console) -> None:
    """The protocol's fold table (see print_kaggle_summary and print_ten_fold_summary), then where it all is."""
    if summary.protocol != "kaggle":  # us8k-10fold, kfold: scores on held-out folds
        print_ten_fold_summary(summary, console)
    else:
        print_kaggle_summary(summary, console)
    if summary.skipped_clips:
        skipped = (f"{summary.skipped_clips} unreadable clip(s) were skipped (--skip-bad-audio), listed in "
                   f"{SolutionFolder(summary.out).skipped_audio}")
        if has_test_scores(summary):
            console.print(f"[bold]Test scores cover {summary.test_clips} clips:[/] {skipped}")
        else:  # unlabelled test split: no score to qualify, only the submission's missing rows
            console.print(f"[bold]The submission has {summary.test_clips} rows:[/] {skipped}")
    if summary.out is not None:
        console.print(f"Outputs: {summary.out}")


def has_test_scores(summary: SolutionSummary) -> bool:
    """Whether the summary prints a test score: every held-out fold has one; kaggle only with test labels."""
    return summary.protocol != "kaggle" or summary.test is not None


def print_ten_fold_summary(summary: SolutionSummary, console: Console) -> None:
    """Per test fold: the validation fold that chose the epoch and the test scores; mean +- std."""
    table = Table(title=f"{summary.solution}: {summary.protocol}, scores on each held-out test fold")
    for column in ("test fold", "validation fold", "best epoch", "accuracy", "macro-F1", "composite"):
        table.add_column(column, justify="right")
    for fold, result in sorted(summary.folds.items()):
        test = result["test"]
        table.add_row(str(fold), str(result["validation_fold"]), str(result["best_epoch"]), f"{test['accuracy']:.4f}",
                      f"{test['macro_f1']:.4f}", f"{test['composite']:.4f}")
    mean, std = summary.cv_mean, summary.cv_std or {}
    table.add_row(f"mean +- std ({len(summary.folds)} of {summary.folds_total})", "", "",
                  *(f"{mean[key]:.4f} +- {std.get(key, 0.0):.4f}" for key in ("accuracy", "macro_f1", "composite")),
                  style="bold")
    console.print(table)


def print_kaggle_summary(summary: SolutionSummary, console: Console) -> None:
    """Fold scores (validation), their mean, and the fold-average test score when labels exist."""
    table = Table(title=f"{summary.solution}: validation scores of the best epoch per fold")
    for column in ("fold", "best epoch", "accuracy", "macro-F1", "composite", "test composite"):
        table.add_column(column, justify="right")
    for fold, result in sorted(summary.folds.items()):
        test = result.get("test", {}).get("composite")
        table.add_row(str(fold), str(result["best_epoch"]), f"{result['accuracy']:.4f}",
                      f"{result['macro_f1']:.4f}", f"{result['composite']:.4f}",
                      "-" if test is None else f"{test:.4f}")
    mean = summary.cv_mean
    table.add_row("mean", "", f"{mean['accuracy']:.4f}", f"{mean['macro_f1']:.4f}", f"{mean['composite']:.4f}", "",
                  style="bold")
    console.print(table)
    if summary.test is not None:
        console.print(f"[bold]Test (fold-average submission, scored with the test labels, {summary.test_clips} "
                      f"clips):[/] accuracy {summary.test['accuracy']:.4f}, macro-F1 {summary.test['macro_f1']:.4f}, "
                      f"composite {summary.test['composite']:.4f}")
    console.print(f"Submission: {summary.submission}")
