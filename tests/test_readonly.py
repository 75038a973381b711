"""Read-only and full disks: an unwritable output folder stops `train` / `predict` at start, before
any work; a disk that fills up during an atomic write leaves the previous file intact, no temp
file, and a one-line error naming the file.

Tests run as root here, and root ignores permission bits, so the folders are made unwritable for
real: a read-only bind mount, and a tiny tmpfs that is filled up (real EROFS / ENOSPC from the
kernel). Where mounting is not allowed, those tests skip; the same guarantees are also checked
with os.fsync / os.write patched to raise ENOSPC, which needs no privileges.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import numpy as np
import pandas as pd
import pytest
import torch
from test_bad_input import assert_refused, isolated_run, probability_text, run_cli

from core.atomic import OutputWriteError, UnwritableFolder, check_writable, save_torch, write_csv, write_json
from core.errors import UserError

SOLUTION = "resnet34_pcen_sam_8fold"


def mount(*args: str) -> bool:
    """Run mount(8); True when it succeeded."""
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@contextlib.contextmanager
def mounted(target: Path, *args: str) -> Iterator[Path]:
    """Mount onto `target` for the duration (skip the test where mounting is not allowed)."""
    target.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or not mount(*args, str(target)):
        pytest.skip("cannot mount here (needs root and mount rights)")
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], capture_output=True)


@pytest.fixture
def read_only_folder(tmp_path) -> Iterator[Path]:
    """A folder on a read-only bind mount: even root gets EROFS."""
    source = tmp_path / "source"
    source.mkdir()
    (source / "existing.csv").write_text("ID,TARGET\n0,1\n")
    target = tmp_path / "read-only"
    with mounted(target, "--bind", str(source)):
        if not mount("-o", "remount,bind,ro", str(target)):
            pytest.skip("cannot remount read-only here")
        yield target


@pytest.fixture
def tiny_disk(tmp_path) -> Iterator[Path]:
    """A 256 KiB tmpfs: writes beyond that fail with ENOSPC."""
    with mounted(tmp_path / "tiny-disk", "-t", "tmpfs", "-o", "size=256k", "tmpfs") as disk:
        yield disk


def fill(disk: Path) -> None:
    """Use every free byte of `disk`."""
    with open(disk / "filler", "wb", buffering=0) as handle:  # unbuffered: closing has nothing left to fail
        with contextlib.suppress(OSError):
            while True:
                handle.write(b"\0" * 4096)


def files_under(folder: Path) -> list[Path]:
    """Every file below `folder` (none if it does not exist)."""
    return sorted(path for path in folder.rglob("*") if path.is_file()) if folder.exists() else []


# --- unwritable output: refused at start ----------------------------------------------------------------

def train(root: Path, data: Path, out: Path):
    """`train` from `root`; training (and caching) must not start: the folder check comes first."""
    with isolated_run(root, stage="core.train.solution.prepare_data"):
        return run_cli("train", SOLUTION, "--data", data, "--out", out, "--device", "cpu", "--no-progress")


@pytest.mark.parametrize("subfolder", ["", "solutions/x"])
def test_train_into_a_read_only_folder_fails_at_start(tmp_path, tiny_data, read_only_folder, subfolder):
    out = read_only_folder / subfolder if subfolder else read_only_folder
    result = train(tmp_path, tiny_data, out)
    assert_refused(result, str(out))
    assert "cannot write to output folder" in result.stderr and "Read-only file system" in result.stderr
    assert files_under(tmp_path / "cache") == []


def test_train_with_a_read_only_submissions_folder_fails_at_start(tmp_path, tiny_data, read_only_folder):
    (tmp_path / "submissions").symlink_to(read_only_folder)  # submissions/ is relative to the working folder
    result = train(tmp_path, tiny_data, tmp_path / "out")
    assert_refused(result, "submissions")
    assert "Read-only file system" in result.stderr
    assert files_under(tmp_path / "out") == []


def test_train_with_a_read_only_submissions_option_fails_at_start(tmp_path, tiny_data, read_only_folder):
    with isolated_run(tmp_path, stage="core.train.solution.prepare_data"):
        result = run_cli("train", SOLUTION, "--data", tiny_data, "--out", tmp_path / "out", "--submissions",
                         read_only_folder, "--device", "cpu", "--no-progress")
    assert_refused(result, str(read_only_folder))
    assert files_under(tmp_path / "out") == []


def test_train_onto_a_full_disk_fails_at_start(tmp_path, tiny_data, tiny_disk):
    fill(tiny_disk)
    result = train(tmp_path, tiny_data, tiny_disk / "out")
    assert_refused(result, str(tiny_disk / "out"))
    assert "No space left on device" in result.stderr
    assert files_under(tiny_disk / "out") == []


def test_predict_into_a_read_only_folder_fails_before_loading_anything(tmp_path, tiny_data, read_only_folder):
    # No checkpoints exist either: the folder check must come first, before any (long) work.
    with isolated_run(tmp_path, stage="core.train.predict.load_fold_models"):
        result = run_cli("predict", SOLUTION, "--data", tiny_data, "--solutions", tmp_path / "solutions",
                         "--out", read_only_folder / "predictions", "--device", "cpu", "--no-progress")
    assert_refused(result, str(read_only_folder / "predictions"))


def test_check_writable_reports_permission_problems_as_a_user_error(tmp_path):
    with mock.patch("os.write", side_effect=OSError(errno.EACCES, "Permission denied")):
        with pytest.raises(UnwritableFolder) as caught:
            check_writable(tmp_path / "out")
    assert isinstance(caught.value, UserError) and isinstance(caught.value, PermissionError)
    assert str(tmp_path / "out") in str(caught.value) and "Permission denied" in str(caught.value)
    assert list((tmp_path / "out").iterdir()) == []  # the probe file is gone


# --- disk full during a write: the previous file survives ----------------------------------------------

def previous_and_bigger(folder: Path) -> tuple[Path, str, pd.DataFrame]:
    """An existing small CSV (path, text) and a table too big for the tiny disk."""
    path = folder / "best_model_fold1.csv"
    previous = probability_text(rows=3)
    path.write_text(previous)
    bigger = pd.DataFrame(np.random.default_rng(0).random((20_000, 11)), columns=["ID", *map(str, range(10))])
    return path, previous, bigger


def assert_previous_file_kept(path: Path, previous: str, error: OutputWriteError) -> None:
    """The old file is intact, no temp file is left, the error is one line naming the file."""
    assert path.read_text() == previous
    assert sorted(p.name for p in path.parent.iterdir() if p.name.startswith(".")) == []  # no temp file left
    assert error.errno == errno.ENOSPC and isinstance(error, OSError) and isinstance(error, UserError)
    assert str(error).startswith(f"cannot write {path}: No space left on device")
    assert "unchanged" in str(error) and len(str(error).splitlines()) == 1


def test_a_real_full_disk_keeps_the_previous_csv_and_leaves_no_temp_file(tiny_disk):
    path, previous, bigger = previous_and_bigger(tiny_disk)
    with pytest.raises(OutputWriteError) as caught:
        write_csv(bigger, path)
    assert_previous_file_kept(path, previous, caught.value)


def test_a_real_full_disk_keeps_the_previous_checkpoint(tiny_disk):
    path = tiny_disk / "last_fold1.pt"
    save_torch({"epoch": 1, "model": {"w": torch.ones(4)}}, path)
    previous = path.read_bytes()
    with pytest.raises(OutputWriteError) as caught:
        save_torch({"epoch": 2, "model": {"w": torch.ones(200_000)}}, path)
    assert path.read_bytes() == previous
    assert torch.load(path, weights_only=True)["epoch"] == 1
    assert [p.name for p in tiny_disk.iterdir() if p.name.startswith(".")] == []
    assert str(caught.value).startswith(f"cannot write {path}: No space left on device")
    assert caught.value.errno == errno.ENOSPC


@pytest.mark.parametrize("failing", ["os.fsync", "os.replace"])
def test_a_simulated_disk_full_keeps_the_previous_file(tmp_path, failing):
    path, previous, bigger = previous_and_bigger(tmp_path)
    with mock.patch(failing, side_effect=OSError(errno.ENOSPC, "No space left on device")):
        with pytest.raises(OutputWriteError) as caught:
            write_csv(bigger, path)
    assert_previous_file_kept(path, previous, caught.value)


def test_a_failure_that_is_not_the_disks_is_not_disguised(tmp_path):
    # Only storage errors become a user message; a bug (here: an unserialisable object) stays itself.
    path = tmp_path / "summary.json"
    write_json({"ok": 1}, path)
    with pytest.raises(TypeError):
        write_json({"bad": object()}, path)
    assert path.read_text() == '{\n  "ok": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_blend_onto_a_full_disk_exits_2_naming_the_output_and_keeps_the_old_one(tmp_path, tiny_disk):
    member = tmp_path / "a" / "best_model_fold1.csv"
    member.parent.mkdir()
    member.write_text(probability_text(rows=60_000))  # ID,TARGET of 60 000 rows is more than the tiny disk holds
    out = tiny_disk / "submission.csv"
    out.write_text("ID,TARGET\n0,1\n")
    result = run_cli("blend", "a/best_model_fold1.csv", "--root", tmp_path, "--out", out)
    assert_refused(result, str(out))
    assert "No space left on device" in result.stderr
    assert out.read_text() == "ID,TARGET\n0,1\n"
    assert [p.name for p in tiny_disk.iterdir() if p.name.startswith(".")] == []


# --- disk full in the middle of training -----------------------------------------------------------------

@pytest.mark.slow
def test_disk_full_during_training_stops_cleanly_and_resumes_once_space_is_freed(tiny_data, tmp_path_factory):
    """The output disk fills up in epoch 2 of fold 1: a one-line error naming the checkpoint, the epoch-1
    files intact, and after the disk grows the same command resumes and ends like an uninterrupted run."""
    from test_kill_anywhere import (
        TINY_PARAMS,
        RunFolder,
        Setup,
        assert_finished_cleanly,
        assert_no_partial_file,
        assert_same_outputs,
        log_tail,
        run_to_end,
        start,
        stop,
        train_command,
    )

    params = tmp_path_factory.mktemp("params") / "tiny.toml"
    params.write_text(TINY_PARAMS)
    setup = Setup(epochs=2, folds="1")
    expected = RunFolder(tmp_path_factory.mktemp("uninterrupted"))
    run_to_end(train_command(tiny_data, params, setup, expected), expected, "run")

    folder = RunFolder(tmp_path_factory.mktemp("disk-full"))
    checkpoint_bytes = (expected.out / "best_model_fold1.pt").stat().st_size
    command = train_command(tiny_data, params, setup, folder)
    with mounted(folder.out, "-t", "tmpfs", "-o", "size=2g", "tmpfs"):
        process = start(command, folder, "disk-full")
        try:
            deadline = time.monotonic() + 900
            while not (folder.out / "last_fold1.pt").exists():  # epoch 1 is saved
                assert process.poll() is None and time.monotonic() < deadline, log_tail(folder, "disk-full")
                time.sleep(0.002)
            # The disk "fills up": keep what epoch 1 wrote, leave less room than any epoch-2 checkpoint needs.
            room = shutil.disk_usage(folder.out).used + checkpoint_bytes // 2
            assert mount("-o", f"remount,size={room}", str(folder.out)), "could not shrink the tmpfs"
            assert process.wait(timeout=900) == 2, log_tail(folder, "disk-full")
        finally:
            stop(process)
        log = log_tail(folder, "disk-full")
        errors = [line for line in log.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "Traceback" not in log, log
        assert errors[0].startswith("error: cannot write ") and "No space left on device" in errors[0], log
        assert "fold1.pt" in errors[0] and log.rstrip().endswith(errors[0]), log  # the error is the last word
        assert_no_partial_file(folder)
        assert torch.load(folder.out / "last_fold1.pt", weights_only=True)["epoch"] == 1  # epoch 1 intact

        assert mount("-o", "remount,size=2g", str(folder.out)), "could not grow the tmpfs"
        run_to_end(command, folder, "resumed")
        assert_finished_cleanly(folder)
        assert_same_outputs(expected, folder)
