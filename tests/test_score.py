"""`score`: metric values on a hand example, ID alignment, --json purity, the plot, refusals."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.errors import UserError
from core.predictions import matched_labels, read_labels, read_submission

REPO = Path(__file__).resolve().parents[1]

# Hand example over classes 0..2 (6 rows):
#   true 0 0 1 1 2 2 / predicted 0 1 1 1 2 0 -> accuracy 4/6
#   class 0: P 1/2 R 1/2 F1 1/2; class 1: P 2/3 R 1 F1 4/5; class 2: P 1 R 1/2 F1 2/3
TRUE = [0, 0, 1, 1, 2, 2]
PREDICTED = [0, 1, 1, 1, 2, 0]
ACCURACY = 4 / 6
MACRO_F1 = (1 / 2 + 4 / 5 + 2 / 3) / 3
COMPOSITE = 0.8 * ACCURACY + 0.2 * MACRO_F1


def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "core", *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "COLUMNS": "400"})


@pytest.fixture
def files(tmp_path):
    """A submission in ID order and a labels file (ID,classID) with IDs 10..15 shuffled."""
    ids = np.arange(10, 16)
    submission = tmp_path / "submission.csv"
    pd.DataFrame({"ID": ids, "TARGET": PREDICTED}).to_csv(submission, index=False)
    shuffle = [3, 0, 5, 1, 4, 2]
    labels = tmp_path / "labels.csv"
    pd.DataFrame({"ID": ids[shuffle], "classID": np.array(TRUE)[shuffle]}).to_csv(labels, index=False)
    return submission, labels


def test_json_prints_exactly_the_three_hand_computed_scores(files):
    submission, labels = files
    done = run_cli("score", submission, "--labels", labels, "--json")
    assert done.returncode == 0, done.stderr
    scores = json.loads(done.stdout)  # the whole of stdout is one JSON object
    assert list(scores) == ["accuracy", "macro_f1", "composite"]
    assert scores["accuracy"] == pytest.approx(ACCURACY)
    assert scores["macro_f1"] == pytest.approx(MACRO_F1)
    assert scores["composite"] == pytest.approx(COMPOSITE)


def test_table_output_and_confusion_plot(files, tmp_path):
    submission, labels = files
    plot = tmp_path / "plots" / "confusion.png"
    done = run_cli("score", submission, "--labels", labels, "--plot", plot)
    assert done.returncode == 0, done.stderr
    assert f"composite {COMPOSITE:.4f}" in done.stdout
    class_1 = next(line for line in done.stdout.splitlines() if "1 car_horn" in line)
    assert "0.6667" in class_1 and "1.0000" in class_1  # precision 2/3, recall 1
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [path.name for path in plot.parent.iterdir() if path.name.endswith(".tmp")]


def test_labels_may_use_target_and_are_aligned_by_id(files, tmp_path):
    submission, labels = files
    renamed = tmp_path / "labels_target.csv"
    pd.read_csv(labels).rename(columns={"classID": "TARGET"}).to_csv(renamed, index=False)
    y_true, y_pred = matched_labels(read_submission(submission), read_labels(renamed))
    assert y_true.tolist() == TRUE and y_pred.tolist() == PREDICTED


def test_different_id_sets_exit_2_naming_both_files(files, tmp_path):
    submission, labels = files
    short = tmp_path / "short.csv"
    pd.read_csv(labels).iloc[:-1].to_csv(short, index=False)
    done = run_cli("score", submission, "--labels", short, "--json")
    assert done.returncode == 2
    assert done.stdout == ""
    assert "short.csv" in done.stderr and "submission.csv" in done.stderr and "only in" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("frame, fragment", [
    (pd.DataFrame({"ID": [0, 1], "TARGET": [1, 10]}), "line 3 (ID 1): TARGET = 10"),
    (pd.DataFrame({"ID": [0, 0], "TARGET": [1, 2]}), "duplicate ID"),
    (pd.DataFrame({"ID": [0, 1], "Target": [1, 2]}), "missing column(s): TARGET"),
    (pd.DataFrame({"ID": [0, 1], "TARGET": [1.5, 2]}), "line 2 (ID 0): TARGET = 1.5"),
])
def test_bad_submissions_are_refused(tmp_path, frame, fragment):
    path = tmp_path / "submission.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(UserError) as caught:
        read_submission(path)
    assert str(path) in str(caught.value) and fragment in str(caught.value)


def test_labels_with_both_label_columns_are_refused(tmp_path):
    path = tmp_path / "labels.csv"
    pd.DataFrame({"ID": [0], "TARGET": [1], "classID": [1]}).to_csv(path, index=False)
    with pytest.raises(UserError, match="found both TARGET and classID"):
        read_labels(path)


def test_missing_file_is_a_clear_error(tmp_path):
    done = run_cli("score", tmp_path / "nope.csv", "--labels", tmp_path / "labels.csv")
    assert done.returncode == 2 and "nope.csv: file not found" in done.stderr
