"""Kill anywhere: SIGKILL `train` at targeted and at random moments; rerunning the same command finishes
and every output equals an uninterrupted run. After every kill no file under a final name is partial.

Kill points are found by watching files appear (no hooks in production code): a cache temp file
(caching), a checkpoint temp file (a checkpoint being written), last_fold1.pt (epoch 1 done, so
the kill lands inside epoch 2), oof_fold1.csv (right after a CSV), result_fold1.json (between
folds), result_fold2.json (while the solution outputs are written); plus moments drawn by a
seeded RNG. Every run trains the real CLI in a subprocess on the tiny synthetic set with a
smaller spectrogram (a --params file) to keep the CPU time down; the code paths are the same.

Also here: two `train` processes on one output folder (the second is refused while the first
runs, and takes over the lock once the first is dead).
"""
from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import subprocess_env

from core import PROB_COLUMNS

SOLUTION = "resnet34_pcen_sam_8fold"
# A 32 x 126 spectrogram instead of 64 x 400: the same frontend/backbone/trainer code, less CPU.
TINY_PARAMS = "n_mels = 32\nn_fft = 2048\nhop_length = 1024\n"
RUN_TIMEOUT = 900        # seconds; the machine is shared, so runs are slow and noisy
POLL_SECONDS = 0.002     # how often a watcher looks for its file (cache/checkpoint writes last longer)
TEST_CLIPS = 10          # the tiny set's labelled test split (10 classes x 1 clip)
HELD_OUT_CLIPS = 2       # --max-clips-per-fold
HISTORY_COLUMNS = {"fold", "epoch", "lr", "train_loss", "val_accuracy", "val_composite", "seconds", "best"}


@dataclass(frozen=True)
class Setup:
    """How every run of one test trains (the command line apart from the folders)."""

    epochs: int
    folds: str = "1,2"


@dataclass(frozen=True)
class RunFolder:
    """One run's working folder: the command runs here; out/, cache/ and submissions/ live inside."""

    root: Path

    @property
    def out(self) -> Path:
        return self.root / "out"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def submission(self) -> Path:
        return self.root / "submissions" / f"{SOLUTION}.csv"


def train_command(data: Path, params: Path, setup: Setup, folder: RunFolder) -> list[str]:
    """The one command every run of a test repeats."""
    return [sys.executable, "-m", "core", "train", SOLUTION, "--data", str(data), "--out", str(folder.out),
            "--folds", setup.folds, "--epochs", str(setup.epochs), "--batch-size", "8",
            "--max-clips-per-fold", str(HELD_OUT_CLIPS), "--params", str(params), "--device", "cpu",
            "--precision", "fp32", "--no-progress"]


def start(command: list[str], folder: RunFolder, log_name: str) -> subprocess.Popen:
    """Start the command in `folder` with its own cache; stdout and stderr go to <log_name>.log."""
    folder.root.mkdir(parents=True, exist_ok=True)
    log = open(folder.root / f"{log_name}.log", "w")
    process = subprocess.Popen(command, cwd=folder.root, env=subprocess_env(US8K_CACHE_DIR=str(folder.cache)),
                               stdout=log, stderr=subprocess.STDOUT)
    log.close()
    return process


def log_tail(folder: RunFolder, log_name: str) -> str:
    """The end of a run's log, for assertion messages."""
    return (folder.root / f"{log_name}.log").read_text()[-3000:]


def run_to_end(command: list[str], folder: RunFolder, log_name: str) -> float:
    """Run the command to completion (it must succeed); return its wall time."""
    started = time.monotonic()
    process = start(command, folder, log_name)
    try:
        assert process.wait(timeout=RUN_TIMEOUT) == 0, log_tail(folder, log_name)
    finally:
        stop(process)
    return time.monotonic() - started


def stop(process: subprocess.Popen) -> None:
    """SIGKILL `process` unless it has ended (also when a test fails while it runs: no orphan trainings)."""
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
    process.wait()


def kill_when(process: subprocess.Popen, ready: Callable[[], bool], delay: float = 0.0) -> None:
    """SIGKILL `process` `delay` seconds after `ready()` first holds; fail if it ends before that."""
    deadline = time.monotonic() + RUN_TIMEOUT
    try:
        while not ready():
            assert process.poll() is None, "the run ended before the kill point was reached"
            assert time.monotonic() < deadline, "the kill point was not reached in time"
            time.sleep(POLL_SECONDS)
        time.sleep(delay)
        assert process.poll() is None, "the run ended before the kill landed"
    finally:
        stop(process)


# --- what may be on disk after a kill ----------------------------------------------------------------

def temp_files(folder: Path) -> list[Path]:
    """Hidden temp files (".<name>.<random>.tmp") directly in `folder`."""
    return sorted(folder.glob(".*.tmp")) if folder.is_dir() else []


def lock_owners(out: Path) -> set[int]:
    """PIDs in every lock file under `out` (the folder or per-fold locks, wherever they live)."""
    return {int(lock.read_text()) for lock in out.rglob(".lock") if lock.read_text().strip()} if out.is_dir() else set()


def assert_complete_csv(path: Path) -> None:
    """A CSV under a final name parses and has the columns and rows its name promises."""
    frame = pd.read_csv(path)
    name = path.name
    if name.startswith("best_model_fold"):
        assert list(frame.columns) == ["ID", "TARGET", *PROB_COLUMNS] and len(frame) == TEST_CLIPS, name
        np.testing.assert_allclose(frame[PROB_COLUMNS].sum(axis=1), 1.0, atol=1e-4)
    elif name.startswith("oof_fold"):
        assert list(frame.columns) == ["slice_file_name", "fold", "classID", "TARGET", *PROB_COLUMNS], name
        assert len(frame) == HELD_OUT_CLIPS, name
    elif name.startswith("history_fold"):
        assert HISTORY_COLUMNS <= set(frame.columns) and len(frame) >= 1, name
        assert list(frame["epoch"]) == list(range(1, len(frame) + 1)), name
    elif name == f"{SOLUTION}.csv":
        assert list(frame.columns) == ["ID", "TARGET"] and len(frame) == TEST_CLIPS, name
    else:
        raise AssertionError(f"unexpected CSV {path}")
    assert not frame.isna().any().any(), name


def assert_complete_checkpoint(path: Path) -> None:
    """A checkpoint under a final name loads safely and is consistent."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert state["solution"] == SOLUTION and isinstance(state["model"], dict) and state["epoch"] >= 1, path
    if path.name.startswith("last_fold"):
        assert len(state["history"]) == state["epoch"], path


def assert_no_partial_file(folder: RunFolder) -> list[str]:
    """Every file under a final name in out/, cache/ and submissions/ is complete; return the temp files seen."""
    for path in sorted(folder.out.iterdir()) if folder.out.is_dir() else []:
        if path.is_dir():  # lock folders hold nothing but lock files
            assert path.name.startswith(".") and all(
                inner.name == ".lock" for inner in path.rglob("*") if inner.is_file()), f"unexpected folder {path}"
        elif path.name.startswith("."):
            assert path.name == ".lock" or path.suffix == ".tmp", f"unexpected hidden file {path}"
        elif path.suffix == ".csv":
            assert_complete_csv(path)
        elif path.suffix == ".pt":
            assert_complete_checkpoint(path)
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".png":
            import matplotlib.image

            assert matplotlib.image.imread(path).size > 0, path
        else:
            raise AssertionError(f"unexpected output {path}")
    for manifest in sorted(folder.cache.glob("waveforms-*.json")):
        fields = json.loads(manifest.read_text())
        # The manifest is written only after the array was renamed into place: both are complete.
        assert manifest.with_suffix(".f16").stat().st_size == fields["bytes"], manifest
    if folder.submission.exists():
        assert_complete_csv(folder.submission)
    return [str(path) for path in temp_files(folder.out) + temp_files(folder.cache)
            + temp_files(folder.submission.parent)]


def assert_finished_cleanly(folder: RunFolder) -> None:
    """After the run that completes: no temp file of a fold or the cache, no lock, no resume state left."""
    assert_no_partial_file(folder)
    assert [path for path in temp_files(folder.out) if "_fold" in path.name] == []
    assert temp_files(folder.cache) == []
    assert lock_owners(folder.out) == set()
    assert sorted(folder.out.glob("last_fold*.pt")) == []


# --- comparing with the uninterrupted run ------------------------------------------------------------

def assert_same_outputs(expected: RunFolder, actual: RunFolder) -> None:
    """Every output of `actual` equals the uninterrupted run's (history apart from wall-clock seconds)."""
    names = sorted(path.name for path in expected.out.iterdir() if not path.name.startswith("."))
    assert sorted(path.name for path in actual.out.iterdir() if not path.name.startswith(".")) == names
    assert names, "the uninterrupted run wrote nothing"
    for name in names:
        want, got = expected.out / name, actual.out / name
        if name.startswith("history_fold"):
            pd.testing.assert_frame_equal(pd.read_csv(want).drop(columns="seconds"),
                                          pd.read_csv(got).drop(columns="seconds"))
        elif name.endswith(".csv"):
            assert want.read_text() == got.read_text(), name
        elif name.endswith(".json"):
            assert json.loads(want.read_text()) == json.loads(got.read_text()), name
        elif name.endswith(".pt"):
            assert_same_checkpoint(want, got)
        elif name.endswith(".png"):
            import matplotlib.image

            np.testing.assert_array_equal(matplotlib.image.imread(want), matplotlib.image.imread(got))
        else:
            raise AssertionError(f"unexpected output {name}")
    assert expected.submission.read_text() == actual.submission.read_text()


def assert_same_checkpoint(want: Path, got: Path) -> None:
    """Same keys, same metadata, every tensor equal."""
    expected = torch.load(want, map_location="cpu", weights_only=True)
    actual = torch.load(got, map_location="cpu", weights_only=True)
    assert set(expected) == set(actual), want.name
    for key in expected:
        if key == "model":
            assert list(expected["model"]) == list(actual["model"])
            for name, tensor in expected["model"].items():
                assert torch.equal(tensor, actual["model"][name]), f"{want.name}: {name}"
        else:
            assert expected[key] == actual[key], f"{want.name}: {key}"


# --- fixtures ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def params_file(tmp_path_factory) -> Path:
    """The --params file every run of this module uses."""
    path = tmp_path_factory.mktemp("params") / "tiny.toml"
    path.write_text(TINY_PARAMS)
    return path


@pytest.fixture(scope="module")
def uninterrupted(tiny_data, params_file, tmp_path_factory) -> Callable[[Setup], tuple[RunFolder, float]]:
    """The uninterrupted run of a setup (run once per module) and its wall time."""
    runs: dict[Setup, tuple[RunFolder, float]] = {}

    def get(setup: Setup) -> tuple[RunFolder, float]:
        if setup not in runs:
            folder = RunFolder(tmp_path_factory.mktemp(f"uninterrupted-e{setup.epochs}"))
            seconds = run_to_end(train_command(tiny_data, params_file, setup, folder), folder, "run")
            assert_finished_cleanly(folder)
            runs[setup] = folder, seconds
        return runs[setup]

    return get


# --- kill points -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class KillPoint:
    """Where to kill: when `ready` holds (after `delay` s); `landed` checks the kill hit that phase."""

    name: str
    ready: Callable[[RunFolder], bool]
    landed: Callable[[RunFolder], bool]
    delay: float = 0.0


def caching() -> KillPoint:
    """While the first audio cache array is being written."""
    return KillPoint("while the audio cache is written",
                     ready=lambda f: bool(temp_files(f.cache)),
                     landed=lambda f: len(list(f.cache.glob("waveforms-*.json"))) < 2)


def writing(checkpoint: str) -> KillPoint:
    """While `checkpoint` is being written (its temp file exists)."""
    return KillPoint(f"while {checkpoint} is written",
                     ready=lambda f: bool(list(f.out.glob(f".{checkpoint}.*.tmp"))),
                     landed=lambda f: bool(list(f.out.glob(f".{checkpoint}.*.tmp"))))


def inside_epoch_2(delay: float) -> KillPoint:
    """`delay` seconds after epoch 1 of fold 1 saved its resume state."""
    return KillPoint(f"{delay:.2f} s into fold 1 epoch 2",
                     ready=lambda f: (f.out / "last_fold1.pt").exists(),
                     landed=lambda f: len(pd.read_csv(f.out / "history_fold1.csv")) == 1, delay=delay)


def after_file(name: str, absent: str) -> KillPoint:
    """Right after `name` appears, before `absent` does."""
    return KillPoint(f"right after {name} appears",
                     ready=lambda f: (f.out / name).exists(),
                     landed=lambda f: not (f.out / absent).exists())


def kill_and_check(command: list[str], folder: RunFolder, point: KillPoint, log_name: str) -> list[str]:
    """Start the command, kill it at `point`, check it landed there and left no partial file."""
    process = start(command, folder, log_name)
    kill_when(process, lambda: point.ready(folder), point.delay)
    assert point.landed(folder), f"the kill {point.name} landed elsewhere; log:\n{log_tail(folder, log_name)}"
    temps = assert_no_partial_file(folder)
    assert lock_owners(folder.out) <= {process.pid}  # a dead run's lock stays behind: the rerun takes it over
    return temps


def resume_to_end_and_compare(command: list[str], folder: RunFolder, expected: RunFolder) -> None:
    """Rerun the command to the end; it leaves nothing behind and equals the uninterrupted run."""
    run_to_end(command, folder, "final")
    assert_finished_cleanly(folder)
    assert_same_outputs(expected, folder)


# --- tests -------------------------------------------------------------------------------------------

# slow: several killed and resumed CLI runs; .ci/run runs it
@pytest.mark.slow
def test_killed_while_caching_and_between_folds_resumes_to_the_same_outputs(
        tiny_data, params_file, uninterrupted, tmp_path):
    setup = Setup(epochs=1)
    expected, _ = uninterrupted(setup)
    folder = RunFolder(tmp_path)
    command = train_command(tiny_data, params_file, setup, folder)

    kill_and_check(command, folder, caching(), "kill-caching")
    kill_and_check(command, folder, after_file("result_fold1.json", absent="result_fold2.json"), "kill-between-folds")
    assert (folder.out / "result_fold1.json").exists()

    resume_to_end_and_compare(command, folder, expected)


@pytest.mark.slow
def test_killed_in_every_phase_resumes_to_the_same_outputs(tiny_data, params_file, uninterrupted, tmp_path):
    setup = Setup(epochs=2)
    expected, _ = uninterrupted(setup)
    folder = RunFolder(tmp_path)
    command = train_command(tiny_data, params_file, setup, folder)
    rng = random.Random(7)
    plan = [
        caching(),
        writing("best_model_fold1.staged.pt"),  # a best candidate is staged, then published by rename
        writing("last_fold1.pt"),
        inside_epoch_2(rng.uniform(0.0, 1.5)),
        after_file("oof_fold1.csv", absent="result_fold1.json"),
        after_file("result_fold1.json", absent="result_fold2.json"),
        writing("last_fold2.pt"),
        after_file("result_fold2.json", absent="summary.json"),
    ]
    for index, point in enumerate(plan):
        kill_and_check(command, folder, point, f"kill-{index}")
    resume_to_end_and_compare(command, folder, expected)


@pytest.mark.slow
def test_killed_at_random_moments_resumes_to_the_same_outputs(tiny_data, params_file, uninterrupted, tmp_path):
    setup = Setup(epochs=2)
    expected, seconds = uninterrupted(setup)
    folder = RunFolder(tmp_path)
    command = train_command(tiny_data, params_file, setup, folder)
    rng = random.Random(2024)
    landed = []  # (moment, outputs present after the kill): where each kill hit
    for index in range(5):
        process = start(command, folder, f"random-{index}")
        # Early enough in every rerun that most kills land although reruns resume (and the load varies).
        moment = rng.uniform(0.0, 0.4 * seconds)
        try:
            process.wait(timeout=moment)
        except subprocess.TimeoutExpired:
            stop(process)
            landed.append((round(moment, 1), sorted(path.name for path in folder.out.glob("*"))))
        assert process.returncode in (0, -signal.SIGKILL), log_tail(folder, f"random-{index}")
        assert_no_partial_file(folder)
    assert len(landed) >= 3, f"only {len(landed)} of 5 kills landed before the run ended: {landed}"
    resume_to_end_and_compare(command, folder, expected)


def wait_for_lock(process: subprocess.Popen, folder: RunFolder, log_name: str) -> None:
    """Wait until `process` holds a lock in the output folder."""
    deadline = time.monotonic() + RUN_TIMEOUT
    while process.pid not in lock_owners(folder.out):
        assert process.poll() is None and time.monotonic() < deadline, log_tail(folder, log_name)
        time.sleep(0.01)


# slow: waits for a live run to hold its lock, then for its death; .ci/run runs it
@pytest.mark.slow
def test_a_second_run_on_the_same_folder_is_refused_until_the_first_dies(tiny_data, params_file, tmp_path):
    setup = Setup(epochs=20, folds="1")  # long enough to outlive the second run's start-up; it is killed anyway
    folder = RunFolder(tmp_path)
    command = train_command(tiny_data, params_file, setup, folder)
    first = start(command, folder, "first")
    try:
        wait_for_lock(first, folder, "first")
        second = subprocess.run(command, cwd=folder.root, capture_output=True, text=True, timeout=RUN_TIMEOUT,
                                env=subprocess_env(US8K_CACHE_DIR=str(folder.cache), COLUMNS="200"))
        assert second.returncode == 2, second.stderr
        assert second.stderr.startswith("error:") and "Traceback" not in second.stderr
        assert f"in use by another training run (PID {first.pid})" in second.stderr
        assert str(folder.out) in second.stderr
        assert first.poll() is None, "the refused run disturbed the first one"
        assert lock_owners(folder.out) == {first.pid}
    finally:
        stop(first)

    assert lock_owners(folder.out) == {first.pid}  # the dead owner's lock is still there: a stale lock
    third = start(command, folder, "third")
    try:
        wait_for_lock(third, folder, "third")
        assert lock_owners(folder.out) == {third.pid}
    finally:
        stop(third)
