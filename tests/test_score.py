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


# --- another data set's classes (3 here): from the blend's --probs columns or from --data ---------------

NAMES = ("beep", "hum", "whistle")  # the hand example's classes 0, 1, 2


def blend_probs_file(path: Path, columns=NAMES) -> Path:
    """What `blend --probs` writes for a 3-class data set: ID,TARGET and one score column per class."""
    ids = np.arange(10, 16)
    scores = np.eye(len(columns))[PREDICTED] * 0.7 + 0.1
    frame = pd.DataFrame({"ID": ids, "TARGET": PREDICTED, **dict(zip(columns, scores.T, strict=True))})
    frame.to_csv(path, index=False)
    return path


def test_a_blends_probs_file_is_scored_with_the_classes_its_columns_name(files, tmp_path):
    _, labels = files
    probs = blend_probs_file(tmp_path / "blend_probs.csv")
    plot = tmp_path / "confusion.png"
    done = run_cli("score", probs, "--labels", labels, "--plot", plot)
    assert done.returncode == 0, done.stderr
    assert f"composite {COMPOSITE:.4f}" in done.stdout
    rows = [line for line in done.stdout.splitlines() if any(f"{index} {name}" in line
                                                             for index, name in enumerate(NAMES))]
    assert len(rows) == 3 and "car_horn" not in done.stdout and "air_conditioner" not in done.stdout
    assert "0.6667" in rows[1] and "1.0000" in rows[1]  # hum: precision 2/3, recall 1
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_data_gives_the_classes_of_a_plain_submission_and_bounds_target(files, tmp_path):
    from test_own_data import write_csv_set

    submission, labels = files
    data = write_csv_set(tmp_path / "data", dict.fromkeys(("whistle", "hum", "beep"), 440.0), clips_per_fold=1,
                         folds=3)
    done = run_cli("score", submission, "--labels", labels, "--data", data)
    assert done.returncode == 0, done.stderr
    assert all(f"{index} {name}" in done.stdout for index, name in enumerate(NAMES))  # natural order of the labels
    assert "car_horn" not in done.stdout and f"composite {COMPOSITE:.4f}" in done.stdout

    three = tmp_path / "three.csv"
    pd.DataFrame({"ID": np.arange(10, 16), "TARGET": [0, 1, 2, 3, 2, 0]}).to_csv(three, index=False)
    done = run_cli("score", three, "--labels", labels, "--data", data)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "column TARGET must be an integer in 0..2" in done.stderr and "line 5 (ID 13): TARGET = 3" in done.stderr

    other = blend_probs_file(tmp_path / "other_probs.csv", columns=("bark", "hum", "whistle"))
    done = run_cli("score", other, "--labels", labels, "--data", data)
    assert done.returncode == 2 and "its class columns (bark, hum, whistle) are not the classes of --data" in done.stderr


def test_fifty_classes_without_their_names_are_refused_with_what_to_pass(tmp_path):
    """An ESC-50 submission (TARGET up to 49) is never scored as UrbanSound8K's ten: the error says how to name them."""
    submission = tmp_path / "esc50_submission.csv"
    pd.DataFrame({"ID": [0, 1, 2], "TARGET": [3, 49, 12]}).to_csv(submission, index=False)
    labels = tmp_path / "labels.csv"
    pd.DataFrame({"ID": [0, 1, 2], "TARGET": [3, 49, 40]}).to_csv(labels, index=False)
    done = run_cli("score", submission, "--labels", labels, "--json")
    assert done.returncode == 2 and done.stdout == ""
    assert "TARGET = 49" in done.stderr and "pass --data DIR" in done.stderr and "--probs" in done.stderr
    names = tuple(f"class{index:02d}" for index in range(50))
    probs = tmp_path / "blend_probs.csv"
    pd.DataFrame({"ID": [0, 1, 2], "TARGET": [3, 49, 12],
                  **{name: np.full(3, 0.02) for name in names}}).to_csv(probs, index=False)
    done = run_cli("score", probs, "--labels", labels, "--json")
    assert done.returncode == 0, done.stderr
    scores = json.loads(done.stdout)
    # classes 3 and 49 right (F1 1), 12 and 40 wrong (F1 0): macro-F1 over the classes present is 1/2
    assert scores["accuracy"] == pytest.approx(2 / 3) and scores["macro_f1"] == pytest.approx(1 / 2)
