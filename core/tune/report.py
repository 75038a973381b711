"""What a person reads from a study: the trials table, the best trial, top trials, importances, plots."""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
from rich.table import Table

from core.atomic import save_figure
from core.params import with_derived
from core.tune.objective import FOLD_SCORES_ATTR, WORKER_ATTR

MIN_TRIALS_FOR_IMPORTANCE = 2


@dataclass(frozen=True)
class TrialRow:
    """One trial as shown in tables: its state, value, and the best completed value up to it."""

    number: int
    state: str
    value: float | None
    best_so_far: float | None
    folds_done: int
    worker: str


def trial_rows(trials: list[FrozenTrial]) -> list[TrialRow]:
    """Rows in trial-number order; best_so_far is the best COMPLETE value among trials 0..number."""
    rows: list[TrialRow] = []
    best: float | None = None
    for trial in sorted(trials, key=lambda t: t.number):
        if trial.state == TrialState.COMPLETE and trial.value is not None:
            best = trial.value if best is None else max(best, trial.value)
        value = trial.value if trial.state == TrialState.COMPLETE else _last_intermediate(trial)
        rows.append(TrialRow(trial.number, trial.state.name, value, best, len(trial.intermediate_values),
                             str(trial.user_attrs.get(WORKER_ATTR, "-"))))
    return rows


def _last_intermediate(trial: FrozenTrial) -> float | None:
    # A pruned or running trial has no value; its last running mean says how it was doing.
    if not trial.intermediate_values:
        return None
    return trial.intermediate_values[max(trial.intermediate_values)]


def trials_table(rows: list[TrialRow], title: str, total_steps: int | None = None) -> Table:
    """A rich table of trial rows (value of a pruned/running trial = its last running mean, dimmed)."""
    table = Table(title=title, title_justify="left")
    for column in ("trial", "state", "value", "best so far", "folds", "worker"):
        table.add_column(column, justify="left" if column in ("state", "worker") else "right")
    styles = {"COMPLETE": "green", "PRUNED": "yellow", "FAIL": "red", "RUNNING": "cyan", "WAITING": "dim"}
    for row in rows:
        value = _fmt(row.value)
        if row.state != "COMPLETE" and row.value is not None:
            value = f"[dim]{value}[/dim]"
        folds = f"{row.folds_done}/{total_steps}" if total_steps else str(row.folds_done)
        table.add_row(str(row.number), f"[{styles.get(row.state, '')}]{row.state}[/]", value,
                      _fmt(row.best_so_far), folds, row.worker)
    return table


def _fmt(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def state_counts(trials: list[FrozenTrial]) -> dict[str, int]:
    """How many trials are in each state (only the states present)."""
    counts: dict[str, int] = {}
    for trial in trials:
        counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
    return counts


def completed(study: optuna.Study) -> list[FrozenTrial]:
    """The COMPLETE trials, best first."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return sorted(trials, key=lambda t: (-t.value, t.number))


def importances(study: optuna.Study) -> tuple[dict[str, float], list[str]]:
    """Parameter importances (optuna's default evaluator) and notes on how reliable they are.

    Empty with a note when fewer than MIN_TRIALS_FOR_IMPORTANCE trials have completed.
    """
    count = len(completed(study))
    if count < MIN_TRIALS_FOR_IMPORTANCE:
        return {}, [f"importances need at least {MIN_TRIALS_FOR_IMPORTANCE} completed trials; {count} so far"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        values = optuna.importance.get_param_importances(study)
    notes = [str(w.message) for w in caught if not issubclass(w.category, optuna.exceptions.ExperimentalWarning)]
    return values, notes


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The best COMPLETE trial, or None if none has completed."""
    ranked = completed(study)
    return ranked[0] if ranked else None


def export_params(study: optuna.Study) -> tuple[dict[str, Any], str]:
    """The best trial's params (for save_params) and a comment saying where they come from."""
    best = best_trial(study)
    if best is None:
        from core.errors import UserError

        raise UserError(f"study {study.study_name!r} has no completed trial yet, so there is nothing to export; "
                        "run more trials first")
    comment = (f"Best parameters of Optuna study {study.study_name!r}: trial {best.number}, "
               f"objective {best.value:.6f} (mean over folds of the best validation composite).\n"
               "Apply with: train SOLUTION --params THIS_FILE")
    return dict(best.params), comment


def print_report(study: optuna.Study, console: Console, top: int = 10) -> None:
    """Best trial (params, fold scores), top trials, state counts and parameter importances."""
    trials = study.get_trials(deepcopy=False)
    counts = ", ".join(f"{count} {state.lower()}" for state, count in sorted(state_counts(trials).items()))
    console.print(f"[bold]Study {study.study_name}[/]: {len(trials)} trials ({counts or 'none'})")
    best = best_trial(study)
    if best is None:
        console.print("No trial has completed yet.")
        return
    console.print(best_trial_table(best))
    ranked = completed(study)[:top]
    ranked_rows = {row.number: row for row in trial_rows(trials)}
    console.print(trials_table([ranked_rows[t.number] for t in ranked], f"Top {len(ranked)} completed trials"))
    values, notes = importances(study)
    for note in notes:
        console.print(f"[yellow]note:[/] {note}")
    if values:
        table = Table(title="Parameter importances", title_justify="left")
        table.add_column("parameter")
        table.add_column("importance", justify="right")
        for name, importance in values.items():
            table.add_row(name, f"{importance:.3f}")
        console.print(table)


def best_trial_table(best: FrozenTrial) -> Table:
    """The best trial's params (with the derived mask width) and per-fold best composites."""
    table = Table(title=f"Best trial {best.number}: objective {best.value:.4f}", title_justify="left")
    table.add_column("parameter")
    table.add_column("value", justify="right")
    for name, value in with_derived(best.params).items():
        table.add_row(name, f"{value:.6g}" if isinstance(value, float) else str(value))
    for fold, fold_score in best.user_attrs.get(FOLD_SCORES_ATTR, {}).items():
        table.add_row(f"fold {fold} best composite", f"{fold_score:.4f}")
    return table


def write_plots(study: optuna.Study, out_dir: str | Path) -> list[Path]:
    """PNG plots (matplotlib): optimisation history, per-fold running means, and importances.

    None (an empty list) until a trial has completed: there is nothing to draw yet.
    """
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as optuna_plots

    out_dir = Path(out_dir)
    written: list[Path] = []
    if not completed(study):
        return written
    plots = [("optimization_history.png", optuna_plots.plot_optimization_history),
             ("intermediate_values.png", optuna_plots.plot_intermediate_values)]
    if len(completed(study)) >= MIN_TRIALS_FOR_IMPORTANCE:
        plots.append(("param_importances.png", optuna_plots.plot_param_importances))
    for file_name, plot in plots:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # experimental-API and few-trials warnings; notes are printed elsewhere
            axes = plot(study)
        figure = axes.figure
        try:
            written.append(save_figure(figure, out_dir / file_name))
        finally:
            plt.close(figure)
    return written
