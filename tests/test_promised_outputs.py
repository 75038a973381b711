"""Nothing promised is dropped, and the demo never mixes with real results.

- `predict --skip-bad-audio` lists the skipped clips in skipped_audio.csv and its test score says
  how many clips it covers; `train --skip-bad-audio` says so only where it prints a test score (an
  unlabelled Kaggle test split has none: it gives the submission's rows instead);
- `train --params` prints, and the summary records, the recipe fields it changes beyond the
  searched values;
- `train` without --data writes under solutions/demo/ and submissions/demo/, and `report` finds
  the demo's results there.
"""
from __future__ import annotations

import contextlib
import io
import json
import shutil
import sys
from pathlib import Path
from unittest import mock

import pandas as pd
import pytest
from conftest import REPO, save_fold_checkpoints, tiny

from core.data.metadata import load_source

SOLUTION = "resnet34_pcen_sam_8fold"
# A 32 x 126 spectrogram instead of 64 x 400 (as in tests/test_kill_anywhere.py): the same code, less CPU.
TINY_PARAMS = "n_mels = 32\nn_fft = 2048\nhop_length = 1024\n"


def run_cli(folder: Path, *args: object) -> tuple[int, str]:
    """`python -m core ARGS` in this process from `folder`: (exit code, stdout + stderr)."""
    from core.cli import main

    captured = io.StringIO()
    code = 0
    with mock.patch.object(sys, "argv", ["core", *map(str, args)]), contextlib.chdir(folder), \
            mock.patch.object(sys, "path", [str(REPO), *sys.path]), mock.patch.dict("os.environ", {"COLUMNS": "300"}), \
            contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
        try:
            main()
        except SystemExit as done:
            code = done.code if isinstance(done.code, int) else 1
    return code, " ".join(captured.getvalue().split())  # rich wraps long lines: compare words


def test_predict_skip_bad_audio_writes_the_skipped_list_and_says_what_the_score_covers(tiny_data, tmp_path):
    data = shutil.copytree(tiny_data, tmp_path / "data")
    broken = Path(load_source(data).test["path"].iloc[3])
    broken.write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunkjunk")
    solutions = tmp_path / "solutions"
    save_fold_checkpoints(solutions, SOLUTION, folds=(1, 2), recipe=tiny(SOLUTION))
    out = tmp_path / "predicted"
    code, output = run_cli(tmp_path, "predict", SOLUTION, "--data", data, "--solutions", solutions, "--out", out,
                           "--submission", tmp_path / "submission.csv", "--skip-bad-audio", "--device", "cpu",
                           "--precision", "fp32", "--no-progress")
    assert code == 0, output
    skipped = pd.read_csv(out / "skipped_audio.csv")
    assert list(skipped["path"]) == [str(broken)] and skipped["reason"].str.len().min() > 0
    assert "(9 of 10 clips)" in output and "1 unreadable clip(s) skipped" in output
    assert len(pd.read_csv(tmp_path / "submission.csv")) == 9


@pytest.mark.slow  # a real `train` through the CLI (~30 s here)
def test_demo_results_are_kept_apart_and_params_changes_are_printed_and_recorded(tiny_data, tmp_path):
    params = tmp_path / "best.toml"
    params.write_text(TINY_PARAMS)
    with mock.patch("core.demo.profile.ensure_demo_data", return_value=tiny_data):  # the tiny set stands in
        code, output = run_cli(tmp_path, "train", SOLUTION, "--params", params, "--folds", "1", "--epochs", "1",
                               "--batch-size", "8", "--max-clips-per-fold", "1", "--device", "cpu", "--precision",
                               "fp32", "--no-progress")
    assert code == 0, output
    changes = ["training.schedule: cosine -> warmup_cosine", "training.label_smoothing: 0.0 -> 0.1",
               "training.select_metric: accuracy -> composite"]
    assert all(change in output for change in changes), output
    demo_folder = tmp_path / "solutions" / "demo" / SOLUTION
    summary = json.loads((demo_folder / "summary.json").read_text())
    assert summary["recipe_changes"] == changes
    assert (tmp_path / "submissions" / "demo" / f"{SOLUTION}.csv").exists()
    assert not (tmp_path / "solutions" / SOLUTION).exists() and not (tmp_path / "submissions" / f"{SOLUTION}.csv").exists()
    assert f"Outputs: {Path('solutions') / 'demo' / SOLUTION}" in output and "--solutions (or --root) solutions/demo" in output

    code, report = run_cli(tmp_path, "report", "--solutions", Path("solutions") / "demo")
    assert code == 0, report
    assert SOLUTION in report and "partial" in report


def test_train_skip_bad_audio_records_and_prints_what_the_test_scores_cover(tiny_data, tmp_path):
    from rich.console import Console

    from core.train.options import TrainOptions
    from core.train.report import print_summary
    from core.train.solution import train_solution

    data = shutil.copytree(tiny_data, tmp_path / "data")
    source = load_source(data)
    broken = Path(source.test["path"].iloc[3])
    broken.write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunkjunk")
    test_clips = len(source.test) - 1
    out = tmp_path / "out"
    options = TrainOptions(out=out, submissions=tmp_path / "subs", folds=(1,), epochs=1, device="cpu",
                           precision="fp32", progress=False, max_clips_per_fold=1, skip_bad_audio=True)
    summary = train_solution(tiny(SOLUTION).derive(training=dict(batch_size=8)), load_source(data), options)
    assert (summary.test_clips, summary.skipped_clips) == (test_clips, 1)
    saved = json.loads((out / "summary.json").read_text())
    assert (saved["test_clips"], saved["skipped_test_clips"]) == (test_clips, 1)
    assert broken.as_posix() in set(pd.read_csv(out / "skipped_audio.csv")["path"])
    assert len(pd.read_csv(tmp_path / "subs" / f"{SOLUTION}.csv")) == test_clips
    console = Console(record=True, width=400)
    print_summary(summary, console)
    assert (f"Test scores cover {test_clips} clips: 1 unreadable clip(s) were skipped (--skip-bad-audio), listed in "
            f"{out / 'skipped_audio.csv'}") in console.export_text()


@pytest.mark.parametrize("protocol, test_scores, scored", [("kaggle", None, False), ("kaggle", 0.75, True),
                                                           ("us8k-10fold", None, True)])
def test_the_skipped_clips_line_claims_test_score_coverage_only_where_a_test_score_is_printed(
        tmp_path, protocol, test_scores, scored):
    from rich.console import Console

    from core.train.report import print_summary
    from core.train.solution import SolutionSummary

    scores = {"accuracy": 0.5, "macro_f1": 0.5, "composite": 0.5}
    fold = {"best_epoch": 1, **scores}
    if protocol != "kaggle":
        fold.update(validation_fold=2, test=scores)
    elif test_scores is not None:
        fold["test"] = {"composite": test_scores}
    test = None if test_scores is None else {"accuracy": test_scores, "macro_f1": test_scores, "composite": test_scores}
    summary = SolutionSummary(SOLUTION, {1: fold}, scores, test, tmp_path / "subs" / f"{SOLUTION}.csv", protocol,
                              {key: 0.0 for key in scores}, out=tmp_path / "out", test_clips=8, skipped_clips=2,
                              folds_total=10)
    console = Console(record=True, width=400)
    print_summary(summary, console)
    printed = console.export_text()
    skipped = f"2 unreadable clip(s) were skipped (--skip-bad-audio), listed in {tmp_path / 'out' / 'skipped_audio.csv'}"
    if scored:
        assert f"Test scores cover 8 clips: {skipped}" in printed
    else:
        assert "Test scores cover" not in printed and "Test (fold-average" not in printed
        assert f"The submission has 8 rows: {skipped}" in printed
    assert ("Test (fold-average submission, scored with the test labels, 8 clips)" in printed) == (test is not None)
