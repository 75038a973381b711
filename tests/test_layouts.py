"""The layouts for your own data (ESC-50, generic CSV, class folders): detection, one table from the same clips,
what the data says about itself, validation listing every problem, and the leakage guard on groups."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import core.demo.synth as synth
from core import CLASS_NAMES
from core.data.checks import MetadataError
from core.data.metadata import FoldLeakageError, detect_layout, load_source
from core.errors import UserError

OWN_LAYOUTS = ("esc50", "csv", "folders")


@pytest.fixture(scope="module")
def own_sets(tmp_path_factory) -> dict[str, Path]:
    """The same synthetic clips (50: 10 classes x 5, two per recording) in each own-data layout; short clips."""
    base = tmp_path_factory.mktemp("own")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(synth, "MIN_SECONDS", 0.05)  # the layouts are under test, not the sounds
        patch.setattr(synth, "MAX_SECONDS", 0.2)
        return {layout: synth.write_synthetic_dataset(base / layout, seed=4, clips_per_class_fold=1, workers=1,
                                                      layout=layout) for layout in OWN_LAYOUTS}


def _table(source) -> pd.DataFrame:
    """file name, class name, fold and group of every labelled clip, sorted by name (layout-independent)."""
    train = source.train
    return pd.DataFrame({
        "name": train["path"].map(lambda path: Path(path).name),
        "label": [source.class_names[class_id] for class_id in train["classID"]],
        "fold": train["fold"].to_numpy(),
        "group": train["path"].map(source.groups),
    }).sort_values("name").reset_index(drop=True)


def test_each_layout_reads_to_the_same_table(own_sets, tmp_path):
    sources = {layout: load_source(root, group_pattern=synth.GROUP_PATTERN if layout == "folders" else None,
                                   folds_file=tmp_path / f"{layout}-folds.csv")
               for layout, root in own_sets.items()}
    tables = {layout: _table(source) for layout, source in sources.items()}
    assert len(tables["esc50"]) == 50 and tables["esc50"]["group"].nunique() == 30
    for layout in ("csv", "folders"):
        pd.testing.assert_frame_equal(tables[layout], tables["esc50"], check_dtype=False)
    assert (tables["esc50"].groupby("group")["fold"].nunique() == 1).all()
    for layout, source in sources.items():
        assert detect_layout(own_sets[layout]) == source.layout == layout
        assert source.class_names == CLASS_NAMES and source.num_classes == 10
        assert source.folds == (1, 2, 3, 4, 5) and source.test_folds == () and source.cross_validation_folds == (
            1, 2, 3, 4, 5)
        assert len(source.test) == 0 and not source.has_test_labels
        assert source.labelled is source.train and source.all_folds is None and source.fold_leakage is None
        assert source.folds_assigned == (layout != "esc50")
        assert source.sample_rates.rates == (22050, 44100, 48000)
        assert sum(source.sample_rates.counts.values()) == 50 and source.sample_rates.unreadable == 0
    assert sources["csv"].has_salience and str(sources["csv"].train["salience"].dtype) == "int64"
    assert not sources["esc50"].has_salience and sources["esc50"].train["salience"].isna().all()
    assert not sources["folders"].has_salience


def test_class_folders_without_a_pattern_are_singleton_groups(own_sets):
    source = load_source(own_sets["folders"])
    table = _table(source)
    assert table["group"].isna().all()
    counts = table.groupby(["label", "fold"]).size().unstack(fill_value=0)
    assert (counts.max(axis=1) - counts.min(axis=1) <= 1).all()  # 5 clips per class: one per fold


def test_urbansound8k_layouts_describe_themselves(tiny_data):
    source = load_source(tiny_data)
    assert source.layout == "kaggle" and source.class_names == CLASS_NAMES and source.num_classes == 10
    assert source.folds == tuple(range(1, 9)) and source.test_folds == () and source.has_salience
    assert source.labelled is source.train and source.cross_validation_folds == source.folds
    assert not source.folds_assigned
    assert source.groups[source.train["path"].iloc[0]] == source.train["slice_file_name"].iloc[0].split("-")[0]
    assert source.sample_rates.rates == (22050, 44100, 48000) and sum(source.sample_rates.counts.values()) == 90


def test_urbansound8k_refuses_fold_options(tiny_data):
    with pytest.raises(UserError, match="--n-folds and --group-pattern apply to data without them"):
        load_source(tiny_data, n_folds=3)


def test_flac_and_ogg_in_nested_class_folders(tmp_path):
    root = tmp_path / "data"
    signal = np.zeros(800, dtype=np.float32)
    for index, (folder, suffix) in enumerate([("bird", "flac"), ("bird/dawn", "ogg"), ("frog", "wav"),
                                              ("frog/pond", "flac"), ("bird", "wav"), ("frog", "ogg")]):
        (root / folder).mkdir(parents=True, exist_ok=True)
        soundfile.write(root / folder / f"{index}.{suffix}", signal, 16000 if suffix == "wav" else 8000)
    (root / "frog" / "notes.txt").write_text("not audio")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "x.wav").touch()
    source = load_source(root, n_folds=2)
    assert source.layout == "folders" and source.class_names == ("bird", "frog")
    assert sorted(source.train["slice_file_name"]) == ["bird/0.flac", "bird/4.wav", "bird/dawn/1.ogg",
                                                        "frog/2.wav", "frog/5.ogg", "frog/pond/3.flac"]
    assert source.folds == (1, 2)
    assert source.sample_rates.counts == {8000: 4, 16000: 2}


# ------------------------------------------------------------------------------------ validation

ESC50_HEADER = ["filename", "fold", "target", "category", "esc10", "src_file", "take"]


def write_esc50(root: Path, rows: list[tuple]) -> Path:
    (root / "meta").mkdir(parents=True)
    (root / "audio").mkdir()
    pd.DataFrame(rows, columns=ESC50_HEADER).to_csv(root / "meta" / "esc50.csv", index=False)
    for row in rows:
        if "/" not in str(row[0]):
            (root / "audio" / str(row[0])).touch()
    return root


def _problems(root: Path, **options) -> list[str]:
    with pytest.raises(MetadataError) as caught:
        load_source(root, **options)
    return caught.value.problems


def test_esc50_lists_every_problem(tmp_path):
    root = write_esc50(tmp_path / "data", [
        ("1-100-A-0.wav", 1, 0, "dog", False, 100, "A"),
        ("6-101-A-0.wav", 6, 0, "dog", False, 101, "A"),       # unknown fold
        ("2-102-A-1.wav", 2, 1, "rooster", False, 102, "A"),
        ("2-103-A-1.wav", 2, 1, "hen", False, 103, "A"),        # target 1 named twice
        ("3-104-A-3.wav", 3, 3, "pig", False, 104, "A"),        # target 2 has no clips
        ("sub/3-105-A-3.wav", 3, 3, "pig", False, 105, "A"),   # not a plain name
        ("4-106-A-x.wav", 4, "x", "cow", False, 106, "A"),      # bad label
    ])
    (root / "audio" / "3-104-A-3.wav").unlink()                 # missing file
    problems = _problems(root)
    expected = ["esc50.csv line 3, column fold: '6' is out of range (ESC-50's folds are 1-5)",
                "esc50.csv line 8, column target: 'x' is not an integer",
                "target 1 is named 'hen', 'rooster'",
                "target(s) 2 have no clips",
                "esc50.csv line 7, column filename: 'sub/3-105-A-3.wav' is not a plain file name",
                "audio/3-104-A-3.wav (listed in esc50.csv) does not exist"]
    for fragment in expected:
        assert any(fragment in problem for problem in problems), fragment
    assert len(problems) == len(expected), problems


def test_esc50_refuses_fold_options(tmp_path):
    root = write_esc50(tmp_path / "data", [("1-100-A-0.wav", 1, 0, "dog", False, 100, "A"),
                                          ("2-101-A-1.wav", 2, 1, "cat", False, 101, "A")])
    assert any("--n-folds 3" in problem for problem in _problems(root, n_folds=3))
    with pytest.raises(UserError, match="names each clip's recording already"):
        load_source(root, group_pattern=r"^\d+-(\d+)")


def write_generic(root: Path, frame: pd.DataFrame, skip: tuple[str, ...] = ()) -> Path:
    root.mkdir(parents=True)
    frame.to_csv(root / "metadata.csv", index=False)
    for file in frame["file"]:
        path = root / str(file)
        if str(file) not in skip and ".." not in str(file) and not str(file).startswith("/"):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
    return root


def test_generic_csv_lists_every_problem(tmp_path):
    frame = pd.DataFrame({
        "file": ["a/1.wav", "a/2.wav", "b/3.wav", "b/4.wav", "../5.wav", "b/3.wav", "c/7.wav", "c/8.wav", "t/9.wav"],
        "label": ["cat", "cat", "dog", "dog", "dog", "dog", "", "owl", "emu"],
        "fold": ["1", "2", "1", "x", "2", "2", "1", "7", "test"],
        "salience": ["1", "2", "3", "1", "1", "1", "1", "1", ""],
        "group": ["r1", "r2", "r3", "r4", "r5", "r6", "r7", "", "r9"],
    })
    root = write_generic(tmp_path / "data", frame, skip=("a/2.wav",))
    problems = _problems(root)
    expected = ["metadata.csv line 6, column file: '../5.wav' is not a path inside the data folder",
                "metadata.csv, column file: 'b/3.wav' appears on lines 4, 7",
                "metadata.csv line 5, column fold: 'x' is not an integer",
                "fold(s) 3, 4, 5, 6 have no clips",
                "metadata.csv line 8, column label: is empty",
                "metadata.csv line 10, column label: 'emu' labels no training row",
                "metadata.csv line 4, column salience: '3' is out of range",
                "metadata.csv line 9, column group: is empty",
                "a/2.wav (listed in metadata.csv) does not exist"]
    for fragment in expected:
        assert any(fragment in problem for problem in problems), fragment
    assert len(problems) == len(expected), problems


def test_generic_csv_with_folds_and_a_test_split(tmp_path):
    frame = pd.DataFrame({
        "file": ["x/1.wav", "x/2.wav", "y/3.wav", "y/4.wav", "z/5.wav", "z/6.wav"],
        "label": ["cat", "dog", "cat", "dog", "dog", ""],
        "fold": ["1", "1", "2", "2", "test", "TEST"],
    })
    source = load_source(write_generic(tmp_path / "data", frame))
    assert source.class_names == ("cat", "dog") and source.folds == (1, 2) and not source.folds_assigned
    assert source.train["slice_file_name"].tolist() == ["x/1.wav", "x/2.wav", "y/3.wav", "y/4.wav"]
    assert source.train["classID"].tolist() == [0, 1, 0, 1]
    assert source.test["ID"].tolist() == [0, 1] and source.test["classID"].tolist()[0] == 1
    assert source.test["classID"].isna().tolist() == [False, True] and not source.has_test_labels
    assert not source.has_salience and source.train["salience"].isna().all()


def test_class_folders_list_every_problem(tmp_path):
    root = tmp_path / "data"
    (root / "cat").mkdir(parents=True)
    (root / "cat" / "1.wav").touch()
    (root / "dog").mkdir()
    (root / "dog" / "readme.txt").touch()
    (root / "stray.wav").touch()
    problems = _problems(root)
    expected = ["stray.wav is not inside a class folder",
                "class folder dog/ holds no .wav, .flac or .ogg file",
                "only one class ('cat')"]
    for fragment in expected:
        assert any(fragment in problem for problem in problems), fragment
    assert len(problems) == len(expected), problems


def test_group_pattern_lists_every_name_it_does_not_match(own_sets, tmp_path):
    problems = _problems(own_sets["folders"], group_pattern=r"^(\d+)-[0-4]-")  # classes 5-9 do not match
    assert len(problems) == 25 and all("does not match --group-pattern" in problem for problem in problems)


def test_unknown_layout_names_every_layout(tmp_path):
    (tmp_path / "data" / "sub").mkdir(parents=True)
    message = str(_problems(tmp_path / "data"))
    for fragment in ("kaggle_train.csv", "UrbanSound8K.csv", "meta/esc50.csv", "metadata.csv", "one folder per class"):
        assert fragment in message, fragment


def test_two_layouts_in_one_folder_are_refused(own_sets, tmp_path):
    frame = pd.DataFrame({"file": ["a/1.wav", "b/2.wav"], "label": ["cat", "dog"]})
    root = write_generic(tmp_path / "data", frame)
    (root / "meta").mkdir()
    (root / "meta" / "esc50.csv").write_text(",".join(ESC50_HEADER) + "\n")
    with pytest.raises(MetadataError, match="both layouts"):
        load_source(root)


# ------------------------------------------------------------------------------------ leakage guard

def test_leakage_guard_works_on_groups(tmp_path):
    frame = pd.DataFrame({
        "file": ["1.wav", "2.wav", "3.wav", "4.wav", "5.wav", "6.wav"],
        "label": ["cat", "dog", "cat", "dog", "cat", "dog"],
        "fold": ["1", "1", "2", "2", "test", "2"],
        "group": ["r1", "r2", "r3", "r2", "r3", "r6"],  # r2 in folds 1 and 2; r3 in fold 2 and the test split
    })
    root = write_generic(tmp_path / "data", frame)
    with pytest.raises(FoldLeakageError) as caught:
        load_source(root)
    message = str(caught.value)
    assert "1 recording(s) appear in more than one fold (first: recording 'r2' in folds 1,2)" in message
    assert "1 test recording(s) also appear in the training folds (first: recording 'r3')" in message
    allowed = load_source(root, allow_fold_leakage=True)
    assert allowed.fold_leakage.startswith("1 recording(s)")
    clean = frame.assign(group=["r1", "r2", "r3", "r4", "r5", "r6"])
    assert load_source(write_generic(tmp_path / "clean", clean)).fold_leakage is None


# ------------------------------------------------------------------------------------------ synth CLI

def test_synth_command_writes_each_own_layout(tmp_path, monkeypatch, capsys):
    import sys

    from core.cli import main

    monkeypatch.setattr(synth, "MIN_SECONDS", 0.05)
    monkeypatch.setattr(synth, "MAX_SECONDS", 0.1)
    out = tmp_path / "esc"
    monkeypatch.setattr(sys, "argv", ["core", "synth", "--out", str(out), "--layout", "esc50",
                                      "--clips-per-class-fold", "1", "--workers", "1", "--no-progress"])
    main()
    assert "wrote 50 labelled clips of 10 classes (esc50 layout; folds 1, 2, 3, 4, 5)" in capsys.readouterr().err
    assert load_source(out).layout == "esc50"
    monkeypatch.setattr(sys, "argv", ["core", "synth", "--out", str(tmp_path / "other"), "--layout", "csv",
                                      "--like", str(out / "meta" / "esc50.csv"), "--no-progress"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2 and "does not apply to --layout csv" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()


# ------------------------------------------------------------------------------ any cell, no traceback

NASTY_CELLS = ["", " ", "0", "1", "2", "3", "-1", "6", "test", "TEST", "1.5", "nan", "inf", "1e400",
               "99999999999999999999", "a.wav", "../x.wav", "/abs.wav", "sub/b.wav", "dog", "cat", "é", "a,b", '"']


@given(cells=st.lists(st.lists(st.sampled_from(NASTY_CELLS), min_size=5, max_size=5), min_size=1, max_size=6),
       layout=st.sampled_from(["csv", "esc50"]))
@example(cells=[["a.wav", "dog", "1", "1", "r1"], ["sub/b.wav", "cat", "2", "2", "r2"]], layout="csv")
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_cells_give_a_source_or_a_user_error(tmp_path_factory, cells, layout):
    """Whatever the cells, the reader returns a consistent source or one UserError: never another exception."""
    root = tmp_path_factory.mktemp("nasty")
    columns = ["file", "label", "fold", "salience", "group"] if layout == "csv" else [
        "filename", "fold", "target", "category", "src_file"]
    csv_path = root / ("metadata.csv" if layout == "csv" else "meta/esc50.csv")
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(cells, columns=columns).to_csv(csv_path, index=False)
    audio = root if layout == "csv" else root / "audio"
    for name in {row[0] for row in cells}:
        target = (audio / name) if name and ".." not in name and not name.startswith("/") else None
        if target is not None and target.suffix == ".wav":
            target.parent.mkdir(parents=True, exist_ok=True)
            target.touch()
    try:
        source = load_source(root)
    except UserError as error:
        assert str(error).strip()
        return
    assert len(source.class_names) >= 2 and source.train["classID"].between(0, source.num_classes - 1).all()
    assert set(source.train["fold"]) == set(source.folds) and all(Path(path).is_file() for path in source.train["path"])


def test_official_layout_describes_its_test_folds(tmp_path):
    root = tmp_path / "UrbanSound8K"
    rows = pd.DataFrame([(f"{100 + fold}-{fold % 10}-0-0.wav", 100 + fold, 0.0, 4.0, 1, fold, fold % 10,
                          CLASS_NAMES[fold % 10]) for fold in range(1, 11)],
                        columns=["slice_file_name", "fsID", "start", "end", "salience", "fold", "classID", "class"])
    (root / "metadata").mkdir(parents=True)
    rows.to_csv(root / "metadata" / "UrbanSound8K.csv", index=False)
    for row in rows.itertuples():
        (root / "audio" / f"fold{row.fold}").mkdir(parents=True)
        (root / "audio" / f"fold{row.fold}" / row.slice_file_name).touch()
    source = load_source(root)
    assert source.folds == tuple(range(1, 11)) and source.test_folds == (9, 10)
    assert source.cross_validation_folds == tuple(range(1, 9)) and source.labelled is source.all_folds
    assert len(source.labelled) == 10 and source.class_names == CLASS_NAMES and source.has_salience
    assert source.groups[str(root.resolve() / "audio" / "fold9" / "109-9-0-0.wav")] == "109"
    assert source.sample_rates.unreadable == 10 and source.sample_rates.counts == {}  # placeholders: no header
