"""Resume: a run killed mid-fold (SIGKILL) and rerun ends with the same weights and CSVs."""
from __future__ import annotations

import errno
import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import subprocess_env

from core.errors import UserError
from core.train.lock import FolderBusy, folder_lock


def train_command(data: Path, out: Path, epochs: int) -> list[str]:
    return [sys.executable, "-m", "core", "train", "resnet34_pcen_sam_8fold", "--data", str(data),
            "--out", str(out), "--folds", "1", "--epochs", str(epochs), "--batch-size", "8",
            "--max-clips-per-fold", "2", "--device", "cpu", "--precision", "fp32", "--no-progress"]


def run(command: list[str], cwd: Path) -> None:
    done = subprocess.run(command, cwd=cwd, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


# slow: a killed CLI run resumed against an uninterrupted one (test_crash_consistency and
# test_trainer's out-of-memory resume cover resuming in the default run); .ci/run runs it
@pytest.mark.slow
def test_killed_then_resumed_equals_uninterrupted(tiny_data, tmp_path, isolated_cache):
    epochs = 3
    run(train_command(tiny_data, tmp_path / "straight", epochs), tmp_path)

    resumed = tmp_path / "resumed"
    process = subprocess.Popen(train_command(tiny_data, resumed, epochs), cwd=tmp_path, env=subprocess_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    resume_state = resumed / "last_fold1.pt"  # written (atomically) after each finished epoch
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if resume_state.exists():
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be interrupted"
    time.sleep(0.5)  # land the kill somewhere inside epoch 2
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (resumed / "last_fold1.pt").exists()
    assert not (resumed / "result_fold1.json").exists()

    run(train_command(tiny_data, resumed, epochs), tmp_path)

    straight_ckpt = torch.load(tmp_path / "straight" / "best_model_fold1.pt", weights_only=True)
    resumed_ckpt = torch.load(resumed / "best_model_fold1.pt", weights_only=True)
    assert straight_ckpt["epoch"] == resumed_ckpt["epoch"]
    for key, tensor in straight_ckpt["model"].items():
        assert torch.equal(tensor, resumed_ckpt["model"][key]), key
    for name in ("best_model_fold1.csv", "oof_fold1.csv"):
        assert (tmp_path / "straight" / name).read_text() == (resumed / name).read_text()
    straight_history = pd.read_csv(tmp_path / "straight" / "history_fold1.csv").drop(columns=["seconds"])
    resumed_history = pd.read_csv(resumed / "history_fold1.csv").drop(columns=["seconds"])
    pd.testing.assert_frame_equal(straight_history, resumed_history)


def hold_lock(path) -> subprocess.Popen:
    """Another process holding the flock on `path` (with its PID written in, as folder_lock does)."""
    code = ("import fcntl, os, sys, time; f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX); "
            "f.truncate(0); f.write(str(os.getpid())); f.flush(); print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_run_on_the_same_folder_is_refused(tmp_path):
    holder = hold_lock(tmp_path / ".lock")
    try:
        with pytest.raises(UserError, match=f"PID {holder.pid}"):
            with folder_lock(tmp_path):
                pass
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_lock_is_taken_over(tmp_path):
    holder = hold_lock(tmp_path / ".lock")
    holder.kill()  # dies holding the lock: the kernel releases it, the file still names it
    holder.wait()
    assert (tmp_path / ".lock").read_text() == str(holder.pid)
    with folder_lock(tmp_path):
        assert (tmp_path / ".lock").read_text() == str(os.getpid())
    assert not (tmp_path / ".lock").exists()


def flock_failing_with(code: int):
    """A stand-in for fcntl.flock that fails as a file system without locks (or another failure) does."""
    def flock(fd, operation):
        raise OSError(code, os.strerror(code))
    return flock


@pytest.mark.parametrize("code", [errno.ENOLCK, errno.EOPNOTSUPP])
def test_a_file_system_without_locks_is_refused_in_one_clear_line(tmp_path, monkeypatch, code):
    monkeypatch.setattr(fcntl, "flock", flock_failing_with(code))  # NFS mounted without a lock daemon
    with pytest.raises(UserError) as refused:
        with folder_lock(tmp_path):
            pytest.fail("the run went on without its lock")
    assert not isinstance(refused.value, FolderBusy)  # not taken for "another run holds it"
    message = str(refused.value)
    assert str(tmp_path / ".lock") in message and "offers no file locks" in message and os.strerror(code) in message
    assert "--out" in message and "\n" not in message


def test_other_lock_failures_and_errors_of_the_run_itself_are_not_taken_for_missing_locks(tmp_path, monkeypatch):
    with pytest.raises(OSError) as failed:  # an OSError raised while the lock is held passes through unchanged
        with folder_lock(tmp_path):
            raise OSError(errno.ENOLCK, "raised by the run")
    assert not isinstance(failed.value, UserError) and failed.value.strerror == "raised by the run"
    monkeypatch.setattr(fcntl, "flock", flock_failing_with(errno.EBADF))
    with pytest.raises(OSError) as failed:
        with folder_lock(tmp_path):
            pytest.fail("the run went on without its lock")
    assert failed.value.errno == errno.EBADF and not isinstance(failed.value, UserError)


def test_train_on_a_file_system_without_locks_stops_before_any_work(tmp_path, tiny_data, monkeypatch):
    from test_bad_input import isolated_run, run_cli

    out = tmp_path / "out"
    monkeypatch.setattr(fcntl, "flock", flock_failing_with(errno.ENOLCK))
    with isolated_run(tmp_path, stage="core.train.solution.prepare_data"):  # reaching it fails the test
        result = run_cli("train", "resnet34_pcen_sam_8fold", "--data", tiny_data, "--out", out, "--folds", "1",
                         "--device", "cpu", "--no-progress")
    assert result.code == 2, result.stderr
    assert result.stderr.startswith("error:") and "Traceback" not in result.stderr
    assert "offers no file locks" in result.stderr and "being trained by another run" not in result.stderr
    assert ".lock" in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "cache").exists()
