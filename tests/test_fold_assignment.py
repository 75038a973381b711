"""Fold assignment for data without folds: stratified, grouped, seeded, stored once and checked on reuse."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.data.checks import MetadataError
from core.data.fold_assignment import assign_folds, groups_from_pattern, stored_or_assigned_folds
from core.data.metadata import load_source
from core.errors import UserError


def test_singleton_groups_are_stratified_within_one_clip_per_class():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(6), [13, 7, 22, 5, 3, 11])
    labels = labels[rng.permutation(len(labels))]
    folds = assign_folds(labels, [f"clip{index}" for index in range(len(labels))], n_folds=5)
    assert set(folds) == {1, 2, 3, 4, 5}
    counts = pd.crosstab(labels, folds).reindex(columns=range(1, 6), fill_value=0).to_numpy()
    assert (counts.max(axis=1) - counts.min(axis=1) <= 1).all(), counts
    sizes = np.bincount(folds)[1:]
    assert sizes.max() - sizes.min() <= 1


def test_groups_are_never_split_and_every_fold_is_used():
    rng = np.random.default_rng(1)
    groups, labels = [], []
    for group in range(60):
        label = int(rng.integers(0, 4))
        for _ in range(int(rng.integers(1, 5))):
            groups.append(f"rec{group}")
            labels.append(label)
    folds = assign_folds(labels, groups, n_folds=4)
    frame = pd.DataFrame({"group": groups, "label": labels, "fold": folds})
    assert (frame.groupby("group")["fold"].nunique() == 1).all()
    assert set(folds) == {1, 2, 3, 4}
    per_class = frame.groupby(["label", "fold"]).size().unstack(fill_value=0)
    assert (per_class.max(axis=1) - per_class.min(axis=1) <= 4).all()  # within one largest group


def test_assignment_ignores_clip_order_and_follows_the_seed():
    labels = [0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2]
    groups = [f"g{index // 2}" for index in range(len(labels))]
    folds = assign_folds(labels, groups, n_folds=3)
    order = np.random.default_rng(5).permutation(len(labels))
    shuffled = assign_folds([labels[i] for i in order], [groups[i] for i in order], n_folds=3)
    assert shuffled.tolist() == folds[order].tolist()
    assert assign_folds(labels, groups, n_folds=3, seed=0).tolist() == folds.tolist()
    others = [assign_folds(labels, groups, n_folds=3, seed=seed).tolist() for seed in range(1, 6)]
    assert any(other != folds.tolist() for other in others)


def test_more_folds_than_groups_or_one_fold_is_refused():
    with pytest.raises(UserError, match="5 folds need at least 5 groups"):
        assign_folds([0, 1, 0, 1], ["a", "a", "b", "c"], n_folds=5)
    with pytest.raises(UserError, match="--n-folds must be at least 2"):
        assign_folds([0, 1, 0, 1], ["a", "b", "c", "d"], n_folds=1)


def test_group_pattern_takes_the_first_capture_group_or_the_whole_match():
    problems: list[str] = []
    files = pd.Series(["dog/123-a.wav", "cat/77-b.wav", "cat/no_digits.wav"])
    assert groups_from_pattern(files, r"^(\d+)-", problems).tolist()[:2] == ["123", "77"]
    assert len(problems) == 1 and "cat/no_digits.wav" in problems[0] and "--group-pattern" in problems[0]
    assert groups_from_pattern(files[:2], r"\d+", []).tolist() == ["123", "77"]
    with pytest.raises(UserError, match="not a valid regular expression"):
        groups_from_pattern(files, "(unclosed", [])


# -------------------------------------------------------------------------------- stored folds

def write_csv_set(root: Path, rows: list[tuple[str, str, str]]) -> Path:
    """A generic-CSV set (file,label,group) with placeholder audio files (the checks only need them to exist)."""
    root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=["file", "label", "group"]).to_csv(root / "metadata.csv", index=False)
    for file, _, _ in rows:
        (root / file).parent.mkdir(parents=True, exist_ok=True)
        (root / file).touch()
    return root


ROWS = [(f"audio/{label}{index}.wav", label, f"{label}-rec{index // 2}") for label in ("cat", "dog", "owl")
        for index in range(8)]


def test_folds_are_written_once_and_reused_as_stored(tmp_path):
    root = write_csv_set(tmp_path / "data", ROWS)
    folds_file = tmp_path / "out" / "folds.csv"
    first = load_source(root, n_folds=4, folds_file=folds_file)
    stored = pd.read_csv(folds_file)
    assert list(stored.columns) == ["file", "group", "fold"]
    assert dict(zip(stored["file"], stored["fold"], strict=True)) == dict(
        zip(first.train["slice_file_name"], first.train["fold"], strict=True))
    assert first.folds == (1, 2, 3, 4) and first.folds_assigned
    # a valid hand-edited assignment (two groups swap folds) is what the next run uses: it is read, not recomputed
    fold_a = stored.loc[stored["group"] == "cat-rec0", "fold"].iloc[0]
    other = stored[stored["fold"] != fold_a].iloc[0]
    fold_b = other["fold"]
    swapped = stored.copy()
    swapped.loc[stored["group"] == "cat-rec0", "fold"] = fold_b
    swapped.loc[stored["group"] == other["group"], "fold"] = fold_a
    swapped.to_csv(folds_file, index=False)
    again = load_source(root, folds_file=folds_file)  # no --n-folds: the stored count
    expected = dict(zip(swapped["file"], swapped["fold"], strict=True))
    assert dict(zip(again.train["slice_file_name"], again.train["fold"], strict=True)) == expected


def test_a_changed_file_list_is_detected(tmp_path):
    root = write_csv_set(tmp_path / "data", ROWS)
    folds_file = tmp_path / "out" / "folds.csv"
    load_source(root, folds_file=folds_file)
    changed = ROWS[1:] + [("audio/new.wav", "owl", "owl-rec9")]
    write_csv_set(root, changed)
    with pytest.raises(MetadataError) as caught:
        load_source(root, n_folds=3, folds_file=folds_file)
    problems = caught.value.problems
    assert any("1 file(s) are new since it was written (first: audio/new.wav)" in problem for problem in problems)
    assert any("1 file(s) it lists are gone (first: audio/cat0.wav)" in problem for problem in problems)
    assert any("holds 5 folds; --n-folds asks for 3" in problem for problem in problems)
    assert len(problems) == 3
    assert str(folds_file) in str(caught.value) and "delete the file" in str(caught.value)


def test_a_changed_grouping_is_detected(tmp_path):
    root = write_csv_set(tmp_path / "data", ROWS)
    folds_file = tmp_path / "folds.csv"
    stored_or_assigned_folds(pd.Series([row[0] for row in ROWS]), pd.Series([0] * len(ROWS)),
                             pd.Series([row[2] for row in ROWS]), 3, folds_file)
    regrouped = pd.Series([row[2] for row in ROWS])
    regrouped[0] = "elsewhere"
    with pytest.raises(MetadataError, match=r"1 file\(s\) changed group"):
        stored_or_assigned_folds(pd.Series([row[0] for row in ROWS]), pd.Series([0] * len(ROWS)), regrouped, None,
                                 folds_file)
    assert root.is_dir()


def test_without_a_folds_file_the_assignment_is_the_same_each_time(tmp_path):
    root = write_csv_set(tmp_path / "data", ROWS)
    first, second = load_source(root), load_source(root)
    assert first.train["fold"].tolist() == second.train["fold"].tolist()
    assert sorted(path.name for path in root.iterdir()) == ["audio", "metadata.csv"]  # nothing written
