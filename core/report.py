"""The results report: every solution's fold scores in lineage order, with each model's gain over its parent.

Reads only what training wrote (result_fold<k>.json, oof_fold<k>.csv, history_fold<k>.csv,
summary.json) under `solutions/<name>/` (kaggle protocol) and `solutions/<name>/us8k-10fold/`.
The fold score is the validation composite of each fold's best epoch under the kaggle protocol
(those folds also chose the epoch, so it is optimistic) and the held-out test-fold composite under
us8k-10fold. Gains compare a solution with its lineage parent on the same protocol.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from core.folds import HELD_OUT_PROTOCOLS, PROTOCOLS, protocol_folds
from core.metrics import score
from core.solution_folder import SolutionFolder


@dataclass
class ReportRow:
    solution: str
    parent: str | None
    protocol: str
    folds: list[int]                 # finished folds
    folds_total: int
    fold_scores: list[float]         # composite per finished fold (see the module docstring)
    oof_composite: float | None      # kaggle: pooled out-of-fold predictions
    test_composite: float | None     # kaggle: fold-average submission; us8k-10fold: pooled test folds
    params: int
    epochs: float | None             # mean epochs trained per fold
    train_seconds: float | None
    gain: float | None = None        # mean composite minus the parent's, same protocol
    gain_note: str = ""

    @property
    def folds_done(self) -> int:
        return len(self.folds)

    @property
    def mean(self) -> float | None:
        return float(np.mean(self.fold_scores)) if self.fold_scores else None

    @property
    def std(self) -> float | None:
        """Sample standard deviation over the folds (ddof 1; 0 for one fold)."""
        if not self.fold_scores:
            return None
        return float(np.std(self.fold_scores, ddof=1)) if len(self.fold_scores) > 1 else 0.0

    @property
    def status(self) -> str:
        if self.folds_done == 0:
            return "no results"
        return "complete" if self.folds_done == self.folds_total else "partial"


def protocol_folder(solutions: Path, name: str, protocol: str) -> Path:
    """Where `train` writes a solution's results for `protocol` (its default --out)."""
    return SolutionFolder.of(solutions, name, protocol).root


def read_results(folder: Path) -> dict[int, dict]:
    """fold -> result_fold<k>.json of the finished folds in `folder`."""
    return SolutionFolder(folder).read_results()


def fold_score(result: dict, protocol: str) -> float:
    return float(result["test"]["composite"] if protocol in HELD_OUT_PROTOCOLS else result["composite"])


def _time_and_epochs(folder: Path, results: dict[int, dict]) -> tuple[float | None, float | None]:
    """Training seconds of all folds (their histories' wall-clock column) and mean epochs per fold."""
    seconds, epochs = [], []
    for fold in results:
        history_path = SolutionFolder(folder).history(fold)
        if history_path.exists():
            history = pd.read_csv(history_path)
            seconds.append(float(history["seconds"].sum()))
            epochs.append(len(history))
    if not seconds:
        return None, None
    return float(np.sum(seconds)), float(np.mean(epochs))


def _pooled_composite(folder: Path, results: dict[int, dict], kind: str) -> float | None:
    """Composite of the pooled prediction files of `kind` ("oof" or "test") of the finished folds."""
    paths = [SolutionFolder(folder).fold_file(kind, fold) for fold in results]
    if not paths or not all(path.exists() for path in paths):
        return None
    frame = pd.concat([pd.read_csv(path, usecols=["classID", "TARGET"]) for path in paths], ignore_index=True)
    return score(frame["classID"].to_numpy(), frame["TARGET"].to_numpy()).composite


def _test_composite(folder: Path, results: dict[int, dict], protocol: str) -> float | None:
    if protocol in HELD_OUT_PROTOCOLS:
        return _pooled_composite(folder, results, "test")
    summary = SolutionFolder(folder).read_summary()
    if summary is None:
        return None
    test = summary.get("test_fold_average")
    return None if test is None else float(test["composite"])


def _folds_total(folder: Path, protocol: str) -> int:
    """The protocol's fold count: kfold's depends on the data (its summary says), the others' are UrbanSound8K's."""
    if protocol != "kfold":
        return len(protocol_folds(protocol))
    summary = SolutionFolder(folder).read_summary() if folder.is_dir() else None
    return int(summary.get("folds_total", 0)) if summary else 0


def report_row(solutions: Path, name: str, parent: str | None, protocol: str, params: int) -> ReportRow:
    folder = protocol_folder(solutions, name, protocol)
    results = read_results(folder) if folder.is_dir() else {}
    seconds, epochs = _time_and_epochs(folder, results)
    return ReportRow(
        solution=name, parent=parent, protocol=protocol, folds=list(results),
        folds_total=_folds_total(folder, protocol), fold_scores=[fold_score(r, protocol) for r in results.values()],
        oof_composite=_pooled_composite(folder, results, "oof") if protocol == "kaggle" else None,
        test_composite=_test_composite(folder, results, protocol) if results else None,
        params=params, epochs=epochs, train_seconds=seconds)


def build_report(solutions: Path, names: list[str] | None = None) -> list[ReportRow]:
    """Rows in lineage order, one per solution and protocol with results (or every protocol of a named
    solution, results or not), each with its gain over its lineage parent on the same protocol."""
    from core import registry
    from core.model.network import count_parameters

    chosen = names or registry.names()
    for name in chosen:
        registry.get(name)  # an unknown name: the registry's error lists the known ones
    order = [name for name in registry.names() if name in chosen]
    rows: list[ReportRow] = []
    for name in order:
        recipe = registry.get(name)
        candidates = [report_row(solutions, name, recipe.parent, protocol, 0) for protocol in PROTOCOLS]
        kept = [row for row in candidates if row.folds_done or names]
        for row in kept:
            row.params = count_parameters(recipe)
        rows.extend(kept)
    by_key = {(row.solution, row.protocol): row for row in rows}
    for row in rows:
        add_gain(row, by_key, solutions)
    return rows


def add_gain(row: ReportRow, by_key: dict[tuple[str, str], ReportRow], solutions: Path) -> None:
    """row.gain = its mean composite minus its lineage parent's on the same protocol, where both exist."""
    if row.parent is None:
        row.gain_note = "root of the lineage"
        return
    parent = by_key.get((row.parent, row.protocol))
    if parent is None:
        parent = report_row(solutions, row.parent, None, row.protocol, 0)
    if row.mean is None or parent.mean is None:
        row.gain_note = f"{'this solution' if row.mean is None else row.parent} has no {row.protocol} results"
        return
    row.gain = row.mean - parent.mean
    if parent.folds != row.folds:
        row.gain_note = "folds differ from the parent's"


def _number(value: float | None, digits: int = 4, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    hours, rest = divmod(int(round(seconds)), 3600)
    return f"{hours} h {rest // 60:02d} min" if hours else f"{rest // 60} min {rest % 60:02d} s"


COLUMNS = ("solution", "protocol", "folds", "mean +- std", "OOF composite", "test composite", "gain vs parent",
           "params", "epochs", "training time")


def table_cells(row: ReportRow) -> list[str]:
    folds = f"{row.folds_done} of {row.folds_total}" + ("" if row.status == "complete" else f" ({row.status})")
    spread = "-" if row.mean is None else f"{row.mean:.4f} +- {row.std:.4f}"
    gain = _number(row.gain, signed=True) + (f" ({row.gain_note})" if row.gain_note else "")
    epochs = "-" if row.epochs is None else f"{row.epochs:g}"
    return [row.solution, row.protocol, folds, spread, _number(row.oof_composite), _number(row.test_composite),
            gain, f"{row.params:,}", epochs, _duration(row.train_seconds)]


def report_markdown(rows: list[ReportRow]) -> str:
    lines = ["# Results report", "",
             "Composite = 0.8 x accuracy + 0.2 x macro-F1. Fold scores: the best epoch's validation composite "
             "(kaggle protocol: the same fold chose the epoch, so it is optimistic) or the held-out test fold's "
             "composite (us8k-10fold: comparable with the literature's 10-fold numbers). The two protocols are "
             "not comparable with each other. +- is the sample standard deviation over the folds present; gains "
             "compare mean composites with the lineage parent on the same protocol.", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(table_cells(row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_report(rows: list[ReportRow], solutions: Path) -> tuple[Path, Path]:
    """solutions/report.md and solutions/report.png (mean composite per solution and protocol, +- std)."""
    from core.atomic import write_text
    from core.plots import plot_bars

    markdown = write_text(report_markdown(rows), solutions / "report.md")
    labels = [f"{row.solution} [{row.protocol}]" for row in rows]
    chart = plot_bars(labels, [row.mean for row in rows], [row.std for row in rows], "mean composite over folds",
                      "Solutions in lineage order (error bars: +- std over folds)", solutions / "report.png")
    return markdown, chart
