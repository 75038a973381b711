"""Metadata: layout detection, validation (every problem in one error), and the tables handed to training."""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest

from core.data.metadata import DataSource, MetadataError, detect_layout, load_source

REPO = Path(__file__).resolve().parents[1]
REAL_CSV = REPO.parent / "shared" / "data" / "UrbanSound8K.csv"

TRAIN_ROWS = [  # slice_file_name, fsID, start, end, salience, fold, classID, class
    ("100-3-0-0.wav", 100, 0.0, 0.3, 1, 1, 3, "dog_bark"),
    ("101-0-0-1.wav", 101, 1.0, 5.0, 2, 1, 0, "air_conditioner"),
    ("102-6-0-0.wav", 102, 0.0, 1.2, 1, 2, 6, "gun_shot"),
    ("103-8-0-2.wav", 103, 2.0, 6.0, 2, 8, 8, "siren"),
]
TEST_ROWS = [(0, "200-1-0-0.wav", 1), (1, "201-9-0-3.wav", 2), (2, "202-4-0-1.wav", 1)]
TRAIN_HEADER = ["slice_file_name", "fsID", "start", "end", "salience", "fold", "classID", "class"]


def write_kaggle(root: Path, train: pd.DataFrame | None = None, test: pd.DataFrame | None = None,
                 labels: pd.DataFrame | None = None, create_audio: bool = True) -> Path:
    """A Kaggle-layout folder; audio files are empty placeholders (metadata checks only need them to exist)."""
    train = pd.DataFrame(TRAIN_ROWS, columns=TRAIN_HEADER) if train is None else train
    test = pd.DataFrame(TEST_ROWS, columns=["ID", "slice_file_name", "salience"]) if test is None else test
    (root / "metadata").mkdir(parents=True)
    train.to_csv(root / "metadata" / "kaggle_train.csv", index=False)
    test.to_csv(root / "metadata" / "kaggle_test.csv", index=False)
    if labels is not None:
        labels.to_csv(root / "metadata" / "kaggle_test_labels.csv", index=False)
    if create_audio:
        for row in train.to_dict("records"):
            if "fold" in row and "slice_file_name" in row:
                _touch(root / "audio" / f"fold{row['fold']}" / str(row["slice_file_name"]))
        for name in test.get("slice_file_name", []):
            _touch(root / "audio" / "test" / str(name))
    return root


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()


def _train(**changes_by_row: dict) -> pd.DataFrame:
    frame = pd.DataFrame(TRAIN_ROWS, columns=TRAIN_HEADER).astype(object)  # any cell may become text
    for row, changes in changes_by_row.items():
        for column, value in changes.items():
            frame.loc[int(row.lstrip("r")), column] = value
    return frame


def _error(root: Path) -> MetadataError:
    with pytest.raises(MetadataError) as caught:
        load_source(root)
    return caught.value


# ------------------------------------------------------------------------------------- valid input

def test_kaggle_layout_tables(tmp_path):
    root = write_kaggle(tmp_path / "data")
    source = load_source(root)
    assert isinstance(source, DataSource) and source.layout == "kaggle" and source.root == root.resolve()
    assert list(source.train.columns) == ["slice_file_name", "fold", "classID", "salience", "path"]
    assert source.train["fold"].tolist() == [1, 1, 2, 8]
    assert source.train["classID"].tolist() == [3, 0, 6, 8]
    assert source.train["salience"].tolist() == [1, 2, 1, 2]
    assert str(source.train["fold"].dtype) == "int64" and str(source.train["classID"].dtype) == "int64"
    assert source.train["path"].tolist() == [str(root.resolve() / "audio" / f"fold{fold}" / name)
                                             for name, *_, fold, _, _ in TRAIN_ROWS]
    assert all(Path(path).is_absolute() and Path(path).is_file() for path in source.train["path"])
    assert source.test["ID"].tolist() == [0, 1, 2]
    assert source.test["path"].tolist() == [str(root.resolve() / "audio" / "test" / name) for _, name, _ in TEST_ROWS]
    assert source.test["salience"].tolist() == [1, 2, 1] and source.has_test_salience
    assert str(source.test["classID"].dtype) == "Int64" and source.test["classID"].isna().all()
    assert not source.has_test_labels


def test_test_labels_file_gives_the_test_classes(tmp_path):
    labels = pd.DataFrame({"ID": [2, 0, 1], "TARGET": [4, 1, 9]})  # any order: matched by ID
    source = load_source(write_kaggle(tmp_path / "data", labels=labels))
    assert source.has_test_labels
    assert source.test["classID"].tolist() == [1, 9, 4]


def test_test_salience_is_optional_and_stays_missing(tmp_path):
    test = pd.DataFrame({"ID": [0, 1], "slice_file_name": ["a.wav", "b.wav"]})
    source = load_source(write_kaggle(tmp_path / "data", test=test))
    assert str(source.test["salience"].dtype) == "Int64"
    assert source.test["salience"].isna().all() and not source.has_test_salience


def test_empty_test_salience_cells_stay_missing(tmp_path):
    root = write_kaggle(tmp_path / "data")
    (root / "metadata" / "kaggle_test.csv").write_text("ID,slice_file_name,salience\n0,200-1-0-0.wav,2\n"
                                                       "1,201-9-0-3.wav,\n2,202-4-0-1.wav,1\n")
    source = load_source(root)
    assert source.test["salience"].isna().tolist() == [False, True, False]
    assert not source.has_test_salience


def test_official_layout_splits_folds_and_numbers_the_test_rows(tmp_path):
    root = tmp_path / "UrbanSound8K"
    rows = pd.DataFrame([
        ("a.wav", 1, 0.0, 4.0, 1, 9, 2, "children_playing"),
        ("b.wav", 2, 0.0, 4.0, 2, 3, 5, "engine_idling"),
        ("c.wav", 3, 0.0, 4.0, 1, 10, 7, "jackhammer"),
        ("d.wav", 4, 0.0, 4.0, 2, 9, 1, "car_horn"),
        ("e.wav", 5, 0.0, 4.0, 1, 1, 0, "air_conditioner"),
    ], columns=TRAIN_HEADER)
    (root / "metadata").mkdir(parents=True)
    rows.to_csv(root / "metadata" / "UrbanSound8K.csv", index=False)
    for row in rows.itertuples():
        _touch(root / "audio" / f"fold{row.fold}" / row.slice_file_name)
    assert detect_layout(root) == "official"
    source = load_source(root)
    assert source.layout == "official"
    assert source.train["slice_file_name"].tolist() == ["b.wav", "e.wav"]
    assert source.train["fold"].tolist() == [3, 1]
    assert source.test["slice_file_name"].tolist() == ["a.wav", "c.wav", "d.wav"]  # metadata order
    assert source.test["ID"].tolist() == [0, 1, 2]
    assert source.test["classID"].tolist() == [2, 7, 1] and source.has_test_labels
    assert source.test["salience"].tolist() == [1, 1, 2] and source.has_test_salience
    assert source.test["path"].tolist() == [str(root.resolve() / "audio" / f"fold{fold}" / name)
                                            for name, fold in (("a.wav", 9), ("c.wav", 10), ("d.wav", 9))]


@pytest.mark.skipif(not REAL_CSV.is_file(), reason="../shared/data/UrbanSound8K.csv is absent")
def test_real_urbansound8k_metadata_passes_validation(tmp_path):
    root = tmp_path / "UrbanSound8K"
    (root / "metadata").mkdir(parents=True)
    real = pd.read_csv(REAL_CSV)
    (root / "metadata" / "UrbanSound8K.csv").write_bytes(REAL_CSV.read_bytes())
    for row in real.itertuples():
        _touch(root / "audio" / f"fold{row.fold}" / row.slice_file_name)
    source = load_source(root)
    assert len(source.train) == int((real["fold"] <= 8).sum())
    assert len(source.test) == int((real["fold"] >= 9).sum())
    assert source.test["ID"].tolist() == list(range(len(source.test)))
    assert source.test["slice_file_name"].tolist() == real.loc[real["fold"] >= 9, "slice_file_name"].tolist()


# ---------------------------------------------------------------------------------- each problem

def test_missing_columns_are_named(tmp_path):
    root = write_kaggle(tmp_path / "data", train=_train().drop(columns=["classID", "salience"]))
    message = str(_error(root))
    assert "kaggle_train.csv" in message and "classID" in message and "salience" in message


def test_class_id_out_of_range(tmp_path):
    error = _error(write_kaggle(tmp_path / "data", train=_train(r2={"classID": 11})))
    assert len(error.problems) == 1
    assert "kaggle_train.csv line 4, column classID" in error.problems[0] and "'11'" in error.problems[0]


def test_salience_must_be_1_or_2(tmp_path):
    error = _error(write_kaggle(tmp_path / "data", train=_train(r0={"salience": 3})))
    assert len(error.problems) == 1
    assert "line 2, column salience" in error.problems[0] and "'3'" in error.problems[0]


def test_duplicate_file_names(tmp_path):
    error = _error(write_kaggle(tmp_path / "data", train=_train(r3={"slice_file_name": "100-3-0-0.wav", "fold": 1})))
    assert len(error.problems) == 1
    assert "100-3-0-0.wav" in error.problems[0] and "lines 2, 5" in error.problems[0]


def test_listed_file_that_is_absent(tmp_path):
    root = write_kaggle(tmp_path / "data")
    (root / "audio" / "fold2" / "102-6-0-0.wav").unlink()
    error = _error(root)
    assert len(error.problems) == 1
    assert "audio/fold2/102-6-0-0.wav" in error.problems[0] and "kaggle_train.csv" in error.problems[0]


def test_missing_audio_folder_is_one_problem(tmp_path):
    root = write_kaggle(tmp_path / "data")
    for path in (root / "audio" / "test").iterdir():
        path.unlink()
    (root / "audio" / "test").rmdir()
    error = _error(root)
    assert len(error.problems) == 1
    assert "folder audio/test does not exist (3 row(s)" in error.problems[0]


def test_train_fold_outside_1_to_8(tmp_path):
    error = _error(write_kaggle(tmp_path / "data", train=_train(r1={"fold": 9})))
    assert any("column fold" in problem and "'9'" in problem for problem in error.problems)


def test_every_problem_is_reported_in_one_error(tmp_path):
    train = _train(r0={"salience": 3}, r1={"classID": 11}, r3={"slice_file_name": "102-6-0-0.wav", "fold": 2})
    test = pd.DataFrame({"ID": [0, 0, 1], "slice_file_name": ["a.wav", "b.wav", "c/d.wav"], "salience": [1, 2, 7]})
    root = write_kaggle(tmp_path / "data", train=train, test=test)
    (root / "audio" / "test" / "b.wav").unlink()
    error = _error(root)
    message = str(error)
    expected = [
        "kaggle_train.csv line 2, column salience",       # salience 3
        "kaggle_train.csv line 3, column classID",        # class 11
        "'102-6-0-0.wav' appears on lines 4, 5",          # duplicate name
        "kaggle_test.csv, column ID: '0' appears on lines 2, 3",
        "kaggle_test.csv line 4, column slice_file_name",  # a folder in the name
        "kaggle_test.csv line 4, column salience",
        "audio/test/b.wav (listed in kaggle_test.csv) does not exist",
    ]
    for fragment in expected:
        assert fragment in message, fragment
    assert len(error.problems) == len(expected)
    assert message.count("\n  - ") == len(expected)


def test_test_labels_must_cover_every_test_id(tmp_path):
    labels = pd.DataFrame({"ID": [0, 1, 5], "TARGET": [1, 12, 3]})
    message = str(_error(write_kaggle(tmp_path / "data", labels=labels)))
    assert "kaggle_test_labels.csv line 3, column TARGET" in message
    assert "test ID(s) have no label (first: 1, 2)" in message
    assert "ID(s) are not in kaggle_test.csv (first: 5)" in message


def test_non_integer_cells(tmp_path):
    message = str(_error(write_kaggle(tmp_path / "data", train=_train(r0={"fold": "one"}, r1={"classID": 2.5}))))
    assert "line 2, column fold: 'one' is not an integer" in message
    assert "line 3, column classID: '2.5' is not an integer" in message


# ------------------------------------------------------------------------------------------ layout

def test_unknown_layout_says_what_was_looked_for(tmp_path):
    (tmp_path / "data" / "metadata").mkdir(parents=True)
    message = str(_error(tmp_path / "data"))
    assert "metadata/kaggle_train.csv" in message and "metadata/UrbanSound8K.csv" in message


def test_missing_data_folder(tmp_path):
    assert "does not exist" in str(_error(tmp_path / "nowhere"))


def test_both_layouts_in_one_folder_is_refused(tmp_path):
    root = write_kaggle(tmp_path / "data")
    pd.DataFrame(TRAIN_ROWS, columns=TRAIN_HEADER).to_csv(root / "metadata" / "UrbanSound8K.csv", index=False)
    assert "both layouts" in str(_error(root))


def test_kaggle_test_csv_is_required(tmp_path):
    root = write_kaggle(tmp_path / "data")
    (root / "metadata" / "kaggle_test.csv").unlink()
    error = _error(root)
    assert error.problems == ["metadata/kaggle_test.csv is missing: the Kaggle layout needs it"]


def test_cli_stops_with_one_message_and_writes_nothing(tmp_path, monkeypatch, capsys):
    from core.cli import main

    root = write_kaggle(tmp_path / "data", train=_train(r1={"classID": 11}))
    out, cache = tmp_path / "solution", tmp_path / "cache"
    monkeypatch.setenv("US8K_CACHE_DIR", str(cache))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["core", "train", "resnet34_pcen_sam_8fold", "--data", str(root),
                                      "--out", str(out), "--no-progress"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    assert "column classID" in stderr and "Traceback" not in stderr
    assert not out.exists() and not cache.exists() and sorted(path.name for path in tmp_path.iterdir()) == ["data"]
