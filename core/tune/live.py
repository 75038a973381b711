"""The live view of a running search: a table of the study's trials (all workers), refreshed as
folds and trials finish. On a terminal it redraws in place (rich Live); in a log it prints one
line per event instead.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import optuna
from optuna.trial import FrozenTrial
from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from core.tune.objective import FoldDone
from core.tune.report import trial_rows, trials_table

SHOWN_TRIALS = 15


class TrialBoard:
    """Shows number, state, value and best-so-far of the study's latest trials, plus this worker's fold."""

    def __init__(self, study: optuna.Study, console: Console, total_steps: int, header: str) -> None:
        self.study = study
        self.console = console
        self.total_steps = total_steps
        self.header = header
        self.status = "starting the first trial"
        self._live: Live | None = None

    @contextlib.contextmanager
    def showing(self) -> Iterator[TrialBoard]:
        """Keep the board on screen while the search runs (a plain log when not on a terminal)."""
        if not self.console.is_terminal:
            self.console.print(self.header, highlight=False)
            yield self
            return
        with Live(self._render(), console=self.console, refresh_per_second=2, transient=False) as live:
            self._live = live
            try:
                yield self
            finally:
                live.update(self._render())
                self._live = None

    def fold_done(self, event: FoldDone) -> None:
        """Called by the objective after each fold of this worker's trial."""
        self.status = (f"trial {event.trial_number}: fold {event.fold} done ({event.step}/{event.total_steps}), "
                       f"fold score {event.fold_score:.4f}, running mean {event.running_mean:.4f}")
        self._show()

    def trial_done(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """An optuna callback: called after each of this worker's trials ends."""
        value = f"{trial.value:.4f}" if trial.value is not None else "-"
        if self._live is None:
            self.console.print(f"trial {trial.number} {trial.state.name} value {value} "
                               f"best so far {_best_value(study)}", highlight=False)
            return
        self.status = f"trial {trial.number} {trial.state.name.lower()} (value {value})"
        self._show()

    def _show(self) -> None:
        if self._live is not None:
            self._live.update(self._render())
        else:
            self.console.print(self.status, highlight=False)

    def _render(self) -> Group:
        rows = trial_rows(self.study.get_trials(deepcopy=False))
        table = trials_table(rows[-SHOWN_TRIALS:], self.header, self.total_steps)
        return Group(table, Text(self.status, style="bold"))


def _best_value(study: optuna.Study) -> str:
    rows = trial_rows(study.get_trials(deepcopy=False))
    best = rows[-1].best_so_far if rows else None
    return "-" if best is None else f"{best:.4f}"
