"""Hyper-parameter search (core/tune, core/params, `tune`): space, sampler, pruner, params files,
shared studies over SQLite with several worker processes, interrupt and resume, report and export.

Expected values come from ../shared/spec/optuna.md (the reference search), copied here as literals.
"""
from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from optuna.trial import TrialState
from rich.console import Console

from core import registry
from core.errors import UserError
from core.params import SEARCHED_NAMES, apply_params, load_params, save_params
from core.recipe import Recipe
from core.tune.objective import FOLD_SCORES_ATTR, WORKER_ATTR, SearchPlan, make_objective
from core.tune.report import export_params, print_report, trial_rows, write_plots
from core.tune.search import Budget, run_search
from core.tune.space import (
    REFERENCE_BEST_PARAMS,
    REFERENCE_SPACE,
    Choice,
    FloatRange,
    IntRange,
    load_space,
    space_from_dict,
    suggest_params,
)
from core.tune.study import TrialSeededTPESampler, default_storage_url, make_pruner, open_study

REPO = Path(__file__).resolve().parents[1]

# optuna.md section 7, in sampling order: (name, kind, low/choices, high, log, step)
SPEC_SPACE = [
    ("n_mels", "categorical", (64, 80, 128), None, False, None),
    ("freq_mask_ratio", "float", 0.10, 0.35, False, None),
    ("batch_size", "categorical", (64, 128, 256), None, False, None),
    ("dropout_rate", "float", 0.0, 0.5, False, 0.1),
    ("warmup_epochs", "int", 0, 5, False, 1),
    ("n_fft", "categorical", (1024, 2048), None, False, None),
    ("hop_length", "categorical", (320, 512, 640), None, False, None),
    ("lr", "float", 1e-4, 5e-3, True, None),
    ("sam_rho", "float", 0.02, 0.10, False, None),
    ("mixup_alpha", "float", 0.5, 2.0, False, None),
    ("weight_decay", "float", 1e-4, 1e-1, True, None),
    ("time_mask_param", "int", 30, 90, False, 1),
]

# optuna.md "Best values" (hard-coded in resnet34_pcen_sam_8f_200e.py); freq_mask_param 18 is derived there.
SPEC_BEST = {
    "n_mels": 128, "freq_mask_ratio": 0.1454714917791759, "batch_size": 256, "dropout_rate": 0.0,
    "warmup_epochs": 2, "n_fft": 2048, "hop_length": 320, "lr": 0.0012817574949798138,
    "sam_rho": 0.0724398361671321, "mixup_alpha": 1.8855049141520537,
    "weight_decay": 0.00026743110625072756, "time_mask_param": 84,
}
SPEC_BEST_FREQ_MASK = 18

optuna.logging.set_verbosity(optuna.logging.WARNING)


def quiet_study(**kwargs) -> optuna.Study:
    return optuna.create_study(direction="maximize", **kwargs)


# ---------------------------------------------------------------- search space


def test_reference_space_is_the_spec_table_in_order():
    assert [d.name for d in REFERENCE_SPACE] == [row[0] for row in SPEC_SPACE]
    for dimension, (name, kind, low, high, log, step) in zip(REFERENCE_SPACE, SPEC_SPACE, strict=True):
        if kind == "categorical":
            assert isinstance(dimension, Choice) and dimension.choices == low, name
        elif kind == "int":
            assert isinstance(dimension, IntRange), name
            assert (dimension.low, dimension.high, dimension.log, dimension.step) == (low, high, log, step), name
        else:
            assert isinstance(dimension, FloatRange), name
            assert (dimension.low, dimension.high, dimension.log, dimension.step) == (low, high, log, step), name


def test_sampling_respects_every_range_scale_and_step():
    study = quiet_study(sampler=optuna.samplers.RandomSampler(seed=0))
    draws = [suggest_params(study.ask(), REFERENCE_SPACE) for _ in range(600)]
    for name, kind, low, high, log, step in SPEC_SPACE:
        values = np.array([draw[name] for draw in draws], dtype=float)
        if kind == "categorical":
            assert set(values) == set(low), name  # every choice drawn, nothing else
            continue
        assert values.min() >= low and values.max() <= high, name
        if kind == "int":
            assert all(isinstance(draw[name], int) for draw in draws), name
            assert set(values) == set(range(low, high + 1)), name
        if step is not None and kind == "float":
            on_grid = np.abs((values - low) / step - np.round((values - low) / step)) < 1e-9
            assert on_grid.all(), name
            assert len(set(np.round(values, 9))) == round((high - low) / step) + 1, name
        if kind == "float" and step is None:
            # Share below the geometric midpoint: 1/2 for a log scale, (sqrt(lh) - l) / (h - l) for a linear one.
            below = np.mean(values < math.sqrt(low * high))
            expected = 0.5 if log else (math.sqrt(low * high) - low) / (high - low)
            assert abs(below - expected) < 0.07, (name, below, expected)


def test_tpe_after_startup_still_respects_the_space():
    study = quiet_study(sampler=TrialSeededTPESampler(7))
    lows = {row[0]: row for row in SPEC_SPACE}

    def objective(trial):
        params = suggest_params(trial, REFERENCE_SPACE)
        return -abs(math.log(params["lr"]) - math.log(1e-3)) + params["n_mels"] / 1000

    study.optimize(objective, n_trials=16)  # 10 random startup trials, then 6 multivariate TPE draws
    for trial in study.trials[10:]:
        for name, (_, kind, low, high, _, step) in lows.items():
            value = trial.params[name]
            if kind == "categorical":
                assert value in low
            else:
                assert low <= value <= high
                if step is not None:
                    assert abs((value - low) / step - round((value - low) / step)) < 1e-9


def test_trial_zero_with_seed_42_is_the_spec_sanity_sample():
    study = quiet_study(sampler=TrialSeededTPESampler(42))
    params = suggest_params(study.ask(), REFERENCE_SPACE)
    assert {k: params[k] for k in ("n_mels", "batch_size", "dropout_rate", "warmup_epochs", "n_fft",
                                   "hop_length", "time_mask_param")} == {
        "n_mels": 80, "batch_size": 64, "dropout_rate": 0.5, "warmup_epochs": 3, "n_fft": 1024,
        "hop_length": 320, "time_mask_param": 56}
    assert params["freq_mask_ratio"] == pytest.approx(0.2497, abs=5e-5)
    assert int(params["n_mels"] * params["freq_mask_ratio"]) == 19
    assert params["lr"] == pytest.approx(2.037e-4, rel=1e-3)
    assert params["sam_rho"] == pytest.approx(0.0347, abs=5e-5)
    assert params["mixup_alpha"] == pytest.approx(0.956, abs=5e-4)
    assert params["weight_decay"] == pytest.approx(3.75e-3, rel=2e-3)


def test_workers_sharing_a_seed_draw_different_trials_and_each_trial_is_reproducible(tmp_path):
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    worker_a = optuna.create_study(storage=url, study_name="s", direction="maximize",
                                   sampler=TrialSeededTPESampler(42))
    worker_b = optuna.load_study(storage=url, study_name="s", sampler=TrialSeededTPESampler(42))
    draw_a = suggest_params(worker_a.ask(), REFERENCE_SPACE)
    draw_b = suggest_params(worker_b.ask(), REFERENCE_SPACE)
    assert draw_a != draw_b
    # A single worker drawing trials 0 and 1 gets the same two draws (trial n depends on seed + n only).
    alone = quiet_study(sampler=TrialSeededTPESampler(42))
    assert [suggest_params(alone.ask(), REFERENCE_SPACE) for _ in range(2)] == [draw_a, draw_b]


def test_space_file_is_read_and_every_problem_is_listed(tmp_path):
    good = tmp_path / "space.toml"
    good.write_text('[hop_length]\nchoices = [640]\n[lr]\nlow = 1e-4\nhigh = 1e-2\nlog = true\n'
                    '[time_mask_param]\nlow = 10\nhigh = 20\nstep = 5\n')
    space = load_space(good)
    assert space == (Choice("hop_length", (640,)), FloatRange("lr", 1e-4, 1e-2, log=True),
                     IntRange("time_mask_param", 10, 20, step=5))
    with pytest.raises(UserError) as caught:
        space_from_dict({"n_mel": {"choices": [64]}, "lr": {"low": 0.0, "high": 1e-2, "log": True},
                         "sam_rho": {"low": 0.2, "high": 0.1}, "n_mels": {"choices": [64, 80.5]},
                         "dropout_rate": {"low": 0.0, "high": 0.5, "step": 0.1, "log": True}},
                        origin="my_space.toml")
    message = str(caught.value)
    for fragment in ("my_space.toml", "'n_mel'", "lr: must be > 0", "sam_rho: low 0.2 is above high 0.1",
                     "n_mels: expected an integer", "dropout_rate: use either log or step"):
        assert fragment in message


# ---------------------------------------------------------------- objective and pruner


class StubFolds:
    """A fold runner returning a set score (no training); counts the folds it was asked to train."""

    def __init__(self) -> None:
        self.score = 0.8
        self.calls = 0

    def __call__(self, recipe: Recipe, fold: int) -> float:
        self.calls += 1
        return self.score + 0.001 * fold


def stub_plan(folds=(1, 2, 3, 4)) -> SearchPlan:
    return SearchPlan(registry.get("resnet34_pcen_sam_8fold"), REFERENCE_SPACE, folds, epochs=3)


def test_objective_is_the_mean_of_fold_scores_reported_fold_by_fold():
    folds = StubFolds()
    study = quiet_study(sampler=TrialSeededTPESampler(0), pruner=make_pruner())
    study.optimize(make_objective(stub_plan(), folds, worker="w1"), n_trials=1)
    trial = study.trials[0]
    expected = [0.801, 0.802, 0.803, 0.804]
    assert trial.value == pytest.approx(np.mean(expected))
    assert trial.intermediate_values == pytest.approx({k: np.mean(expected[:k]) for k in (1, 2, 3, 4)})
    assert trial.user_attrs[FOLD_SCORES_ATTR] == pytest.approx({"1": 0.801, "2": 0.802, "3": 0.803, "4": 0.804})
    assert trial.user_attrs[WORKER_ATTR] == "w1"
    assert trial.user_attrs["freq_mask_param"] == int(trial.params["n_mels"] * trial.params["freq_mask_ratio"])


def test_pruner_stops_a_clearly_bad_trial_after_fold_2_once_5_trials_completed():
    folds = StubFolds()
    study = quiet_study(sampler=TrialSeededTPESampler(0), pruner=make_pruner())
    objective = make_objective(stub_plan(), folds)
    study.optimize(objective, n_trials=4)
    folds.score = 0.1  # a bad trial with only 4 completed: no pruning yet, all 4 folds run
    folds.calls = 0
    study.optimize(objective, n_trials=1)
    assert study.trials[-1].state == TrialState.COMPLETE and folds.calls == 4

    folds.score = 0.1  # now 5 have completed: pruned after fold 2 (never after fold 1, the warm-up)
    folds.calls = 0
    study.optimize(objective, n_trials=1)
    bad = study.trials[-1]
    assert bad.state == TrialState.PRUNED
    assert folds.calls == 2 and sorted(bad.intermediate_values) == [1, 2]

    folds.score = 0.9  # a good trial is not pruned
    folds.calls = 0
    study.optimize(objective, n_trials=1)
    assert study.trials[-1].state == TrialState.COMPLETE and folds.calls == 4


def test_budget_counts_the_whole_study_so_a_rerun_continues_it(tmp_path):
    url = f"sqlite:///{tmp_path / 'b.db'}"
    settings_ = {"solution": "x"}
    folds = StubFolds()
    study = open_study(url, "budget", settings_, seed=1)
    assert run_search(study, make_objective(stub_plan((1,)), folds), Budget(trials=3)) == 3
    again = open_study(url, "budget", settings_, seed=1)
    assert run_search(again, make_objective(stub_plan((1,)), folds), Budget(trials=3)) == 0
    assert run_search(again, make_objective(stub_plan((1,)), folds), Budget(trials=5)) == 2
    assert [t.number for t in again.trials] == [0, 1, 2, 3, 4]


class InterruptLostInFinaliser:
    """Ctrl-C arriving while a finaliser runs (sqlalchemy's weakref callbacks did, in a real run): Python prints
    the KeyboardInterrupt as "Exception ignored" and goes on."""

    def __del__(self) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):  # the handler runs between these bytecodes, inside the finaliser
            time.sleep(0.001)


def test_a_ctrl_c_lost_in_a_finaliser_still_fails_the_running_trial_at_its_next_fold(monkeypatch):
    from core.tune.search import raise_if_interrupted, terminate_as_interrupt

    lost = []
    monkeypatch.setattr(sys, "unraisablehook", lambda report: lost.append(report.exc_type))
    with terminate_as_interrupt():
        InterruptLostInFinaliser()  # no reference kept: finalised at once
        assert lost == [KeyboardInterrupt]  # the first raise was swallowed ...
        with pytest.raises(KeyboardInterrupt):
            raise_if_interrupted()  # ... the checkpoint raises it again

    folds = StubFolds()

    def fold_with_a_lost_interrupt(recipe, fold):
        score = folds(recipe, fold)
        if fold == 1:
            InterruptLostInFinaliser()
        return score

    study = quiet_study(sampler=TrialSeededTPESampler(0))
    with pytest.raises(KeyboardInterrupt):
        run_search(study, make_objective(stub_plan(), fold_with_a_lost_interrupt), Budget(trials=1))
    assert [t.state for t in study.trials] == [TrialState.FAIL] and folds.calls == 1  # no second fold
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler was put back


def test_a_heartbeat_thread_orphaned_by_a_ctrl_c_is_stopped_when_the_search_ends():
    """optuna's heartbeat thread is not a daemon: one left beating (a Ctrl-C inside its start or stop) would
    keep the process from ever exiting; the search's end stops it and leaves other threads alone."""
    import threading

    from optuna.storages._heartbeat import HeartbeatThread

    from core.tune.search import terminate_as_interrupt

    class Beats:
        def get_heartbeat_interval(self) -> int:
            return 3600

        def record_heartbeat(self, trial_id: int) -> None:
            pass

    other = threading.Event()
    bystander = threading.Thread(target=other.wait, daemon=True)
    bystander.start()
    with terminate_as_interrupt():
        orphan = HeartbeatThread(0, Beats())
        orphan.start()  # never joined: what an interrupt inside optuna's `with get_heartbeat_thread(...)` leaves
    assert not orphan._thread.is_alive()
    assert bystander.is_alive()
    other.set()


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # ask() stands in for a worker that died
def test_a_trial_of_a_dead_worker_is_failed_by_the_next_worker(tmp_path):
    url = f"sqlite:///{tmp_path / 'dead.db'}"
    dead_worker = open_study(url, "d", {}, heartbeat_seconds=1)
    orphan = dead_worker.ask()  # RUNNING, with one heartbeat, then its process "dies" (no more beats)
    dead_worker._storage.record_heartbeat(orphan._trial_id)
    time.sleep(4.1)  # more than 3 heartbeat intervals, even with SQLite's whole-second timestamps
    live_worker = open_study(url, "d", {}, heartbeat_seconds=1)
    run_search(live_worker, make_objective(stub_plan((1,)), StubFolds()), Budget(trials=2))
    states = {t.number: t.state for t in live_worker.trials}
    assert states[orphan.number] == TrialState.FAIL
    assert TrialState.RUNNING not in states.values()


OPEN_TOGETHER = """
import os, sys, time
from pathlib import Path
from core.tune.study import open_study
url, barrier, count = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
(barrier / str(os.getpid())).touch()
while len(list(barrier.iterdir())) < count:  # all processes hit the new database at the same moment
    time.sleep(0.01)
open_study(url, "race", {"solution": "x"})
"""


@pytest.mark.slow  # ~20 s of process start-ups; the two-worker test below also starts workers together
def test_workers_starting_together_on_a_new_database_all_get_the_study(tmp_path):
    # optuna's table creation is check-then-create: without the retry, most rounds lose a worker.
    for round_ in range(2):
        url = f"sqlite:///{tmp_path / f'race{round_}.db'}"
        barrier = tmp_path / f"barrier{round_}"
        barrier.mkdir()
        openers = [subprocess.Popen([sys.executable, "-c", OPEN_TOGETHER, url, str(barrier), "3"], cwd=REPO,
                                    env=tune_env(), stderr=subprocess.PIPE, text=True) for _ in range(3)]
        for opener in openers:
            _, stderr = opener.communicate(timeout=120)
            assert opener.returncode == 0, stderr[-2000:]
        assert optuna.get_all_study_names(url) == ["race"]


def test_sigterm_fails_the_running_trial_like_ctrl_c(tmp_path):
    study = open_study(f"sqlite:///{tmp_path / 't.db'}", "t", {})
    folds = StubFolds()

    def killed_during_fold_2(recipe, fold):
        if fold == 2:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the signal arrives here
        return folds(recipe, fold)

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        run_search(study, make_objective(stub_plan((1, 2, 3)), killed_during_fold_2), Budget(trials=3))
    assert [(t.state, sorted(t.intermediate_values)) for t in study.trials] == [(TrialState.FAIL, [1])]
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is only ours during the search


def test_a_study_refuses_a_worker_with_other_settings(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    open_study(url, "s", {"epochs": 80, "folds": [1, 2]})
    open_study(url, "s", {"epochs": 80, "folds": (1, 2)})  # same settings (tuple == stored list): joins
    with pytest.raises(UserError) as caught:
        open_study(url, "s", {"epochs": 5, "folds": [1, 2]})
    assert "epochs: study has 80, this run has 5" in str(caught.value)


@pytest.mark.parametrize("url, fragment", [
    ("sqlite://./solutions/x/optuna.db", "three slashes"),   # the reference's malformed URL
    ("sqlite://", "in-memory"),
    ("not a url", "not a database URL"),
])
def test_bad_storage_urls_are_explained(tmp_path, url, fragment):
    with pytest.raises(UserError) as caught:
        open_study(url, "s", {})
    assert fragment in str(caught.value)


def test_default_storage_is_sqlite_in_the_solution_folder(tmp_path):
    url = default_storage_url(tmp_path / "solutions" / "abc")
    assert url == f"sqlite:///{tmp_path.resolve() / 'solutions' / 'abc' / 'optuna.db'}"
    open_study(url, "abc", {})
    assert (tmp_path / "solutions" / "abc" / "optuna.db").is_file()


# ---------------------------------------------------------------- params files


def test_reference_best_params_are_the_spec_values():
    assert REFERENCE_BEST_PARAMS == SPEC_BEST


@pytest.mark.parametrize("suffix", [".json", ".toml"])
def test_export_then_apply_round_trip(tmp_path, suffix):
    path = save_params(SPEC_BEST, tmp_path / f"best{suffix}", comment="from a test")
    stored = path.read_text()
    assert "freq_mask_param" in stored and str(SPEC_BEST_FREQ_MASK) in stored
    assert load_params(path) == SPEC_BEST

    base = registry.get("resnet34_pcen_sam_8fold")
    recipe = apply_params(base, load_params(path))
    assert recipe.frontend.n_mels == 128 and recipe.frontend.n_ffts == (2048,) and recipe.frontend.hop_length == 320
    assert recipe.augment.freq_mask == SPEC_BEST_FREQ_MASK and recipe.augment.time_mask == 84
    assert recipe.augment.mixup_alpha == SPEC_BEST["mixup_alpha"]
    training = recipe.training
    assert (training.batch_size, training.lr, training.weight_decay, training.warmup_epochs, training.rho) == (
        256, SPEC_BEST["lr"], SPEC_BEST["weight_decay"], 2, SPEC_BEST["sam_rho"])
    assert recipe.head.dropout == 0.0
    assert (training.schedule, training.label_smoothing, training.select_metric) == ("warmup_cosine", 0.1, "composite")
    # untouched sections stay the base's
    assert recipe.backbone == base.backbone and recipe.fusion == base.fusion and training.epochs == base.training.epochs


def _value_strategy(dimension):
    if isinstance(dimension, Choice):
        return st.sampled_from(dimension.choices)
    if isinstance(dimension, IntRange):
        return st.integers(dimension.low, dimension.high)
    if dimension.step is not None:
        return st.integers(0, round((dimension.high - dimension.low) / dimension.step)).map(
            lambda k, d=dimension: d.low + k * d.step)
    return st.floats(dimension.low, dimension.high, allow_nan=False)


@settings(max_examples=40, deadline=None)
@given(st.fixed_dictionaries({d.name: _value_strategy(d) for d in REFERENCE_SPACE}),
       st.sampled_from([".json", ".toml"]))
def test_any_point_of_the_space_survives_a_params_file(tmp_path_factory, params, suffix):
    path = save_params(params, tmp_path_factory.mktemp("p") / f"params{suffix}")
    assert load_params(path) == params  # exact: floats are written with their full repr
    recipe = apply_params(Recipe(), load_params(path))
    assert recipe.augment.freq_mask == int(params["n_mels"] * params["freq_mask_ratio"])


def test_a_partial_file_changes_only_what_it_names(tmp_path):
    path = tmp_path / "lr.toml"
    path.write_text("lr = 0.002\nfreq_mask_ratio = 0.25\n")
    base = registry.get("resnet34_pcen_sam_8fold")  # 64 mels
    recipe = apply_params(base, load_params(path))
    assert recipe.training.lr == 0.002 and recipe.augment.freq_mask == 16  # int(64 * 0.25)
    assert recipe.frontend == base.frontend and recipe.training.batch_size == base.training.batch_size


@pytest.mark.parametrize("text, fragments", [
    ('{"lr": 0.001, "learning_rate": 0.1}', ["'learning_rate'"]),
    ('{"n_mels": 128.5, "batch_size": 0}', ["n_mels: expected an integer", "batch_size: must be > 0"]),
    ('{"n_mels": 128, "freq_mask_ratio": 0.15, "freq_mask_param": 30}', ["freq_mask_param", "int(n_mels * freq_mask_ratio) = 19"]),
    ('[1, 2]', ["mapping"]),
    ('{"lr": ', ["not valid JSON"]),
])
def test_bad_params_files_name_the_file_and_every_problem(tmp_path, text, fragments):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(UserError) as caught:
        load_params(path)
    message = str(caught.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message


def test_n_fft_is_refused_for_a_multi_resolution_recipe():
    from core.tune.objective import check_plan

    multi = Recipe(name="mr").derive(frontend=dict(n_ffts=(2048, 1024)))
    with pytest.raises(UserError, match=r"n_fft: mr uses several FFT sizes \(2048, 1024\)"):
        apply_params(multi, {"n_fft": 1024})
    with pytest.raises(UserError, match="the search space cannot be applied to mr"):
        check_plan(SearchPlan(multi, REFERENCE_SPACE, (1,), 1))
    check_plan(SearchPlan(multi, tuple(d for d in REFERENCE_SPACE if d.name != "n_fft"), (1,), 1))


def test_params_file_needs_a_known_suffix(tmp_path):
    with pytest.raises(UserError, match=r"\.json or \.toml"):
        save_params(SPEC_BEST, tmp_path / "best.yaml")


def test_8f_200e_ships_the_published_best_values_as_defaults():
    if "resnet34_pcen_sam_8f_200e" not in registry.names():
        pytest.skip("plugin resnet34_pcen_sam_8f_200e is not registered yet")
    recipe = registry.get("resnet34_pcen_sam_8f_200e")
    assert apply_params(recipe, SPEC_BEST) == recipe  # applying the best values changes nothing
    assert recipe.augment.freq_mask == SPEC_BEST_FREQ_MASK and recipe.training.epochs == 200


# ---------------------------------------------------------------- report and live view


def test_trial_rows_track_the_best_completed_value():
    study = quiet_study()
    distributions = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2)}
    for state, value in [(TrialState.COMPLETE, 0.5), (TrialState.PRUNED, None), (TrialState.COMPLETE, 0.7),
                         (TrialState.COMPLETE, 0.6), (TrialState.FAIL, None)]:
        study.add_trial(optuna.trial.create_trial(state=state, value=value, params={"lr": 1e-3},
                                                  distributions=distributions,
                                                  intermediate_values={1: 0.2} if state == TrialState.PRUNED else {}))
    rows = trial_rows(study.trials)
    assert [r.best_so_far for r in rows] == [0.5, 0.5, 0.7, 0.7, 0.7]
    assert [r.value for r in rows] == [0.5, 0.2, 0.7, 0.6, None]  # a pruned trial shows its last running mean


def stub_study(url: str, name: str, trials: int = 8) -> optuna.Study:
    study = open_study(url, name, {"solution": "resnet34_pcen_sam_8fold"})
    folds = StubFolds()

    def objective(trial):
        folds.score = 0.5 + 0.4 * (trial.number % 4) / 3  # trials 3 and 7 are best
        return make_objective(stub_plan((1, 2)), folds, worker="w")(trial)

    run_search(study, objective, Budget(trials=trials))
    return study


def test_report_prints_best_top_and_importances_and_writes_plots(tmp_path):
    study = stub_study(f"sqlite:///{tmp_path / 'r.db'}", "r")
    console = Console(record=True, width=160)
    print_report(study, console, top=3)
    text = console.export_text()
    best = max((t for t in study.trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    assert f"Best trial {best.number}: objective {best.value:.4f}" in text
    assert "Top 3 completed trials" in text and "Parameter importances" in text
    for name in SEARCHED_NAMES:
        assert name in text
    written = write_plots(study, tmp_path / "plots")
    assert {p.name for p in written} == {"optimization_history.png", "intermediate_values.png",
                                         "param_importances.png"}
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    params, comment = export_params(study)
    assert params == best.params and f"trial {best.number}" in comment


def test_live_view_shows_every_trial_with_state_value_and_best_so_far(tmp_path):
    import io

    from core.tune.live import TrialBoard
    from core.tune.objective import FoldDone

    study = open_study(f"sqlite:///{tmp_path / 'live.db'}", "live", {})
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=140, color_system=None)
    board = TrialBoard(study, console, total_steps=2, header="Study live")
    folds = StubFolds()

    def objective(trial):
        folds.score = [0.5, 0.7, 0.6][trial.number]
        return make_objective(stub_plan((1, 2)), folds, worker="me", on_fold=board.fold_done)(trial)

    with board.showing():
        run_search(study, objective, Budget(trials=3), callbacks=[board.trial_done])
    final = screen.getvalue().split("Study live")[-1]  # the last frame drawn
    values = [0.5015, 0.7015, 0.6015]  # fold scores score + 0.001 * fold, averaged over folds 1 and 2
    for number, (value, best) in enumerate(zip(values, [0.5015, 0.7015, 0.7015], strict=True)):
        assert f"{number} │ COMPLETE │ {value:.4f} │      {best:.4f} │   2/2 │ me" in final
    assert "trial 2 complete (value 0.6015)" in final

    log = io.StringIO()  # not a terminal: one line per event instead of redrawing
    plain = TrialBoard(study, Console(file=log, width=140), total_steps=2, header="Study live")
    with plain.showing():
        plain.fold_done(FoldDone(7, 1, 1, 0.5, 0.5, 2))
        plain.trial_done(study, study.trials[0])
    lines = log.getvalue().splitlines()
    assert lines[0] == "Study live" and lines[1].startswith("trial 7: fold 1 done (1/2)")
    assert lines[2] == f"trial 0 COMPLETE value {study.trials[0].value:.4f} best so far {study.best_value:.4f}"


def test_cli_report_and_export(tmp_path):
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    study = stub_study(url, "cli", trials=4)
    best = max((t for t in study.trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    export = tmp_path / "best.toml"
    result = subprocess.run(
        [sys.executable, "-m", "core", "tune", "resnet34_pcen_sam_8fold", "--report", "--export", str(export),
         "--storage", url, "--study", "cli", "--out", str(tmp_path / "sol")],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"Best trial {best.number}" in result.stdout
    assert load_params(export) == best.params
    assert (tmp_path / "sol" / "tune_cli" / "optimization_history.png").is_file()


def test_reading_a_missing_study_names_the_studies_there(tmp_path):
    from core.tune.study import load_existing_study

    with pytest.raises(UserError, match="no study database at"):
        load_existing_study(f"sqlite:///{tmp_path / 'new' / 'm.db'}", "nope")
    assert not (tmp_path / "new").exists()  # reading creates neither an empty database nor its folder
    url = f"sqlite:///{tmp_path / 'm.db'}"
    open_study(url, "cli", {})
    with pytest.raises(UserError, match=r"no study 'nope' .*studies there: cli"):
        load_existing_study(url, "nope")


# ---------------------------------------------------------------- worker processes (real trainer, tiny data)

# A narrow space of tiny inputs (16 mels x 126 frames): each trial trains ResNet-34 for one SAM step
# per fold on 7 clips, so a trial takes seconds on a CPU.
TINY_SPACE = """
[n_mels]
choices = [16]
[n_fft]
choices = [1024]
[hop_length]
choices = [1024]
[batch_size]
choices = [8]
[lr]
low = 1e-4
high = 5e-3
log = true
[sam_rho]
low = 0.02
high = 0.10
"""


def tune_command(data: Path, storage_url: str, study: str, space: Path, trials: int, folds: str = "1,2") -> list[str]:
    return [sys.executable, "-m", "core", "tune", "resnet34_pcen_sam_8fold", "--trials", str(trials),
            "--storage", storage_url, "--study", study, "--data", str(data), "--folds", folds,
            "--epochs", "1", "--max-clips-per-fold", "1", "--space", str(space), "--device", "cpu",
            "--precision", "fp32"]  # bf16 is emulated (many times slower) on CPUs without AVX-512 BF16


def tune_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def reported_trials(log: str) -> list[int]:
    """Trial numbers a worker reported as finished in its log ("trial N COMPLETE value ...")."""
    return [int(line.split()[1]) for line in log.splitlines()
            if line.startswith("trial ") and line.split()[2] in ("COMPLETE", "PRUNED")]


def check_two_workers_share_one_study(storage_url: str, data: Path, tmp_path: Path, trials: int = 4) -> None:
    """Two `tune` processes on one storage and study: each trial recorded once, both contribute."""
    space = tmp_path / "tiny_space.toml"
    space.write_text(TINY_SPACE)
    command = tune_command(data, storage_url, "shared", space, trials)
    workers = [subprocess.Popen(command, cwd=tmp_path, env=tune_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [worker.communicate(timeout=600) for worker in workers]
    for worker, (_stdout, stderr) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, stderr[-3000:]

    study = optuna.load_study(study_name="shared", storage=storage_url)
    numbers = [trial.number for trial in study.trials]
    # The budget counts running trials, so at most one extra trial starts in a close race.
    assert trials <= len(numbers) <= trials + 1
    assert sorted(numbers) == list(range(len(numbers)))  # unique and gap-free
    assert all(trial.state in (TrialState.COMPLETE, TrialState.PRUNED) for trial in study.trials)
    pids = {f"{trial.user_attrs[WORKER_ATTR]}".rsplit(":", 1)[1] for trial in study.trials}
    assert pids == {str(worker.pid) for worker in workers}  # both workers contributed
    logged = [reported_trials(stderr) for _, stderr in outputs]  # the live view writes to stderr
    assert sorted(logged[0] + logged[1]) == sorted(numbers)  # each trial run by exactly one worker
    for trial in study.trials:
        if trial.state == TrialState.COMPLETE:
            scores = trial.user_attrs[FOLD_SCORES_ATTR]
            assert set(scores) == {"1", "2"} and trial.value == pytest.approx(np.mean(list(scores.values())))
            assert 0.0 <= trial.value <= 1.0


@pytest.mark.slow  # ~100 s here; CI runs the same two-worker sharing against PostgreSQL (tests/test_tune_postgres.py)
def test_two_worker_processes_share_one_sqlite_study(tiny_data, tmp_path):
    check_two_workers_share_one_study(f"sqlite:///{tmp_path / 'optuna.db'}", tiny_data, tmp_path)


def wait_for_running_trial(storage_url: str, study: str, process: subprocess.Popen, timeout: float = 300) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[1][-3000:]
        try:
            running = optuna.load_study(study_name=study, storage=storage_url).get_trials(
                deepcopy=False, states=(TrialState.RUNNING,))
        except KeyError:  # the worker has not created the study yet
            running = []
        if running:
            return running[0].number
        time.sleep(0.2)
    raise AssertionError("no trial started in time")


def test_ctrl_c_fails_the_running_trial_and_a_rerun_continues_the_study(tiny_data, tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    space = tmp_path / "tiny_space.toml"
    space.write_text(TINY_SPACE)
    command = tune_command(tiny_data, url, "resume", space, trials=1, folds="1")
    worker = subprocess.Popen(command, cwd=tmp_path, env=tune_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    interrupted = wait_for_running_trial(url, "resume", worker)
    worker.send_signal(signal.SIGINT)
    _, stderr = worker.communicate(timeout=120)
    assert worker.returncode == 130, stderr[-3000:]
    assert "interrupted" in stderr and "Rerun the same command" in stderr and "Traceback" not in stderr
    study = optuna.load_study(study_name="resume", storage=url)
    assert [t.state for t in study.trials] == [TrialState.FAIL] and study.trials[0].number == interrupted

    rerun = subprocess.run(command, cwd=tmp_path, env=tune_env(), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    study = optuna.load_study(study_name="resume", storage=url)
    # The same study goes on: the failed trial stays as it was, a new trial replaces it in the budget.
    assert [(t.number, t.state) for t in study.trials] == [(interrupted, TrialState.FAIL), (interrupted + 1, TrialState.COMPLETE)]
