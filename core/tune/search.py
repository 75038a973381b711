"""One worker's search loop: run trials of a shared study until the budget, the timeout or Ctrl-C."""
from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

STARTED_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


@dataclass(frozen=True)
class Budget:
    """When this worker stops: the study reaching `trials` trials (all workers), or `timeout` seconds."""

    trials: int | None = None
    timeout: float | None = None


def counted_trials(study: optuna.Study) -> int:
    """Trials that count towards the budget: finished (complete or pruned) or running somewhere."""
    return len(study.get_trials(deepcopy=False, states=STARTED_STATES))


class StopAtBudget:
    """Optuna callback: stop this worker once the study's counted trials reach the budget.

    Running trials of other workers count, so several workers together run about `trials` trials
    (not `trials` each); failed trials do not count, so a rerun replaces an interrupted trial.
    """

    def __init__(self, trials: int) -> None:
        self.trials = trials

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if counted_trials(study) >= self.trials:
            study.stop()


_RECEIVED: list[int] = []  # the interrupting signals received while a search runs (this process)


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Ctrl-C and SIGTERM raise KeyboardInterrupt, and are remembered: a KeyboardInterrupt that lands in a
    garbage-collection callback (a weakref finaliser of sqlalchemy, say) is printed as "Exception ignored"
    and lost, so the trial would run on; `raise_if_interrupted` at the objective's checkpoints raises it
    again. SIGTERM is treated like Ctrl-C, so `kill` also ends the running trial cleanly (marked failed)."""

    def interrupt(signum: int, frame: Any) -> None:
        _RECEIVED.append(signum)
        raise KeyboardInterrupt(f"signal {signum}")

    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    _RECEIVED.clear()
    previous = {number: signal.signal(number, interrupt) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        stop_orphaned_heartbeats()


def stop_orphaned_heartbeats() -> int:
    """Stop the optuna heartbeat threads still beating once the search is over; how many there were.

    optuna's heartbeat thread is not a daemon: a Ctrl-C landing while optuna starts or stops it (inside
    HeartbeatThread.__enter__ or join) leaves it beating forever, and the process never exits after saying
    "interrupted" (seen once under load). Once study.optimize has returned or raised, no trial of this
    worker runs, so every such thread is an orphan. Its stop event is its third argument (optuna 5.0).
    """
    from optuna.storages._heartbeat import HeartbeatThread

    stopped = 0
    for thread in threading.enumerate():
        if getattr(thread, "_target", None) is HeartbeatThread._record_heartbeat:
            thread._args[2].set()
            thread.join(timeout=5)
            stopped += 1
    return stopped


def raise_if_interrupted() -> None:
    """KeyboardInterrupt if Ctrl-C or SIGTERM came during the search, even if its first raise was lost."""
    if _RECEIVED:
        raise KeyboardInterrupt(f"signal {_RECEIVED[0]}")


def run_search(study: optuna.Study, objective: Callable[[optuna.Trial], float], budget: Budget,
               callbacks: Sequence[Callable[[optuna.Study, FrozenTrial], None]] = (),
               catch: tuple[type[Exception], ...] = ()) -> int:
    """Run trials until the budget is reached; return how many trials this worker ran.

    Ctrl-C (or SIGTERM) raises KeyboardInterrupt out of here after optuna has marked the running
    trial FAIL, so nothing stays RUNNING; rerunning the same command continues the study.
    Exceptions in `catch` fail only their trial; any other error fails the trial and stops.
    """
    if budget.trials is not None and counted_trials(study) >= budget.trials:
        return 0
    ran: list[int] = []
    every = [lambda _study, trial: ran.append(trial.number), *callbacks]
    if budget.trials is not None:
        every.append(StopAtBudget(budget.trials))
    with terminate_as_interrupt():
        study.optimize(objective, timeout=budget.timeout, callbacks=every, catch=catch, gc_after_trial=True)
    return len(ran)
