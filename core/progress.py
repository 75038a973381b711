"""Progress bars, one place: `progress_bar` for one count (caching, synthesis, classification) and
`TrainProgress` for the nested folds / epochs / batches of training (both silent when disabled)."""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


@contextlib.contextmanager
def progress_bar(total: int, description: str, *, console: Console | None = None,
                 enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """Yield advance(n): a transient bar on `console` (default: stderr); a no-op when not `enabled`.

    Nests inside a live display already running on the same console.
    """
    if not enabled:
        yield lambda count: None
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console or Console(stderr=True), transient=True) as bar:
        task_id = bar.add_task(description, total=total)
        yield lambda count: bar.advance(task_id, count)


class TrainProgress:
    """Three bars: folds, epochs of the current fold, batches of the current epoch."""

    def __init__(self, enabled: bool, console: Console | None = None) -> None:
        self.enabled = enabled
        self.console = console or Console(stderr=True)
        self._progress = Progress(
            TextColumn("{task.description:<14}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[stats]}"),
            console=self.console, disable=not enabled, transient=False,
        )
        self._tasks: dict[str, int] = {}

    @contextlib.contextmanager
    def running(self) -> Iterator[TrainProgress]:
        with self._progress:
            yield self

    def start(self, name: str, total: int, description: str) -> None:
        if name in self._tasks:
            self._progress.reset(self._tasks[name], total=total, description=description, stats="")
        else:
            self._tasks[name] = self._progress.add_task(description, total=total, stats="")

    def advance(self, name: str, stats: str | None = None, completed: int | None = None) -> None:
        task = self._tasks[name]
        if completed is not None:
            self._progress.update(task, completed=completed)
        else:
            self._progress.advance(task)
        if stats is not None:
            self._progress.update(task, stats=stats)

    def log(self, message: str) -> None:
        self._progress.console.print(message, highlight=False)
