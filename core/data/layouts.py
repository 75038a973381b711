"""Your own data: the ESC-50, generic CSV and class-folder layouts, read into one labelled table.

- ESC-50 as distributed: meta/esc50.csv (filename,fold,target,category,esc10,src_file,take; only
  filename, fold, target, category and src_file are used), audio in audio/. Folds 1-5; class names
  are the categories ordered by target; src_file (the source recording) is the group.
- Generic CSV: metadata.csv with file,label and optional fold, salience, group. `file` is a path
  relative to the data folder; class names are the labels in natural order. A fold of `test` puts
  the row in the test split (its label may be empty: unlabelled). Without a fold column the folds
  are assigned (fold_assignment.py).
- Class folders: <root>/<class>/**/*.wav|flac|ogg; class names are the folder names in natural
  order; folds are assigned.

Each reader returns a LayoutTables and adds every problem it finds to `problems`; metadata.py turns
them into one MetadataError before any work starts.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from core.data.checks import check_files, check_unique, integers, line_of, plain_file_names, read_csv
from core.folds import SALIENCE_VALUES

ESC50_CSV = Path("meta/esc50.csv")
ESC50_REQUIRED = ("filename", "fold", "target", "category", "src_file")
ESC50_FOLDS = (1, 2, 3, 4, 5)
GENERIC_CSV = Path("metadata.csv")
GENERIC_REQUIRED = ("file", "label")
TEST_FOLD = "test"               # a generic CSV's fold cell for a test-split row
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
MAX_CLASS_NUMBER = 10_000        # a class number beyond this is a typo, not a class

LABELLED_COLUMNS = ["slice_file_name", "fold", "classID", "salience", "path", "group"]
TEST_COLUMNS = ["ID", "slice_file_name", "path", "salience", "classID", "group"]


@dataclass(frozen=True)
class LayoutTables:
    """What a layout's files say, before folds are assigned (`fold` is <NA> where the layout gives none)."""

    labelled: pd.DataFrame        # LABELLED_COLUMNS: fold Int64, classID int64, salience Int64, group object (<NA>)
    test: pd.DataFrame            # TEST_COLUMNS: ID int64, salience Int64, classID Int64 (<NA>: unlabelled)
    class_names: tuple[str, ...]  # classID = index
    has_salience: bool
    folds_given: bool


def natural_order(names: set[str]) -> tuple[str, ...]:
    """Names sorted with their digit runs compared as numbers ("class2" before "class10")."""
    return tuple(sorted(names, key=lambda name: [(0, int(part), "") if part.isdigit() else (1, 0, part)
                                                  for part in re.split(r"(\d+)", name)]))


# ------------------------------------------------------------------------------------------ ESC-50

def read_esc50(root: Path, problems: list[str]) -> LayoutTables:
    """meta/esc50.csv + audio/: every clip labelled, in its predefined fold 1-5, grouped by src_file."""
    csv_name = ESC50_CSV.name
    table = read_csv(root, ESC50_CSV, ESC50_REQUIRED, problems, "ESC-50")
    if table is None:
        return _empty_tables(folds_given=True)
    names = plain_file_names(table, "filename", csv_name, problems)
    folds = integers(table, "fold", csv_name, ESC50_FOLDS, problems, "ESC-50's folds are 1-5")
    targets = integers(table, "target", csv_name, tuple(range(MAX_CLASS_NUMBER)), problems,
                       "targets are class numbers 0, 1, 2, ...")
    categories = table["category"].str.strip()
    for position in table.index[categories == ""]:
        problems.append(f"{csv_name} line {line_of(position)}, column category: is empty (the class name of "
                        "the target); fix or delete the row")
    class_names = _class_names_by_target(targets, categories.where(categories != ""), csv_name, problems)
    valid = names.notna() & folds.notna() & targets.notna() & (categories != "")
    labelled = pd.DataFrame({
        "slice_file_name": names[valid].astype(str),
        "fold": folds[valid],
        "classID": targets[valid].astype(np.int64),
        "salience": pd.Series(pd.NA, index=table.index, dtype="Int64")[valid],
        "path": [str(root / "audio" / name) for name in names[valid]],
        "group": table["src_file"].str.strip().replace("", pd.NA)[valid].astype(object),
    }).reset_index(drop=True)
    check_files(root, labelled, csv_name, problems)
    return LayoutTables(labelled, _empty_test(), class_names, has_salience=False, folds_given=True)


def _class_names_by_target(targets: pd.Series, categories: pd.Series, csv_name: str,
                           problems: list[str]) -> tuple[str, ...]:
    """Class names indexed by target; each target needs one category, each category one target, 0..K-1 all used."""
    pairs = pd.DataFrame({"target": targets, "category": categories}).dropna().drop_duplicates()
    for target, rows in pairs.groupby("target"):
        if len(rows) > 1:
            problems.append(f"{csv_name}: target {target} is named {', '.join(map(repr, sorted(rows['category'])))}; "
                            "each target needs one category")
    for category, rows in pairs.groupby("category"):
        if len(rows) > 1:
            targets = ", ".join(map(str, sorted(rows["target"])))
            problems.append(f"{csv_name}: category {category!r} has targets {targets}; each category needs one target")
    if pairs.empty:
        return ()
    count = int(pairs["target"].max()) + 1
    unused = sorted(set(range(count)) - set(pairs["target"].astype(int)))
    if unused:
        problems.append(f"{csv_name}: target(s) {', '.join(map(str, unused))} have no clips; targets must number "
                        f"the classes 0-{count - 1} without gaps")
    name_of = dict(zip(pairs["target"].astype(int), pairs["category"], strict=True))
    return tuple(name_of.get(target, f"<target {target}>") for target in range(count))


# ------------------------------------------------------------------------------------- generic CSV

def read_generic_csv(root: Path, problems: list[str]) -> LayoutTables:
    """metadata.csv: file,label [,fold] [,salience] [,group]; fold `test` rows form the test split."""
    csv_name = GENERIC_CSV.name
    table = read_csv(root, GENERIC_CSV, GENERIC_REQUIRED, problems, "CSV")
    if table is None:
        return _empty_tables(folds_given=False)
    files = _relative_files(table, csv_name, problems)
    folds_given = "fold" in table.columns
    is_test = (table["fold"].str.strip().str.lower() == TEST_FOLD) if folds_given else pd.Series(False, table.index)
    folds = _generic_folds(table, is_test, csv_name, problems) if folds_given else pd.Series(
        pd.NA, index=table.index, dtype="Int64")
    labels = table["label"].str.strip()
    for position in table.index[(labels == "") & ~is_test]:
        problems.append(f"{csv_name} line {line_of(position)}, column label: is empty; every training row needs "
                        "its class (only rows of fold 'test' may be unlabelled)")
    class_names = natural_order(set(labels[~is_test & (labels != "")]))
    class_of = {name: index for index, name in enumerate(class_names)}
    for position in table.index[is_test & (labels != "") & ~labels.isin(class_names)]:
        problems.append(f"{csv_name} line {line_of(position)}, column label: {labels[position]!r} labels no "
                        "training row; a test label must be one of the training classes")
    has_salience = "salience" in table.columns
    salience = (integers(table, "salience", csv_name, SALIENCE_VALUES, problems,
                         "salience is 1 (foreground), 2 (background) or empty on test rows (unknown)",
                         allow_empty=True) if has_salience else pd.Series(pd.NA, index=table.index, dtype="Int64"))
    if has_salience:
        for position in table.index[salience.isna() & (table["salience"].str.strip() == "") & ~is_test]:
            problems.append(f"{csv_name} line {line_of(position)}, column salience: is empty; every training row "
                            "needs 1 (foreground) or 2 (background)")
    groups = _generic_groups(table, csv_name, problems)
    classes = labels.map(class_of).astype("Int64")
    paths = pd.Series([str(root / file) if isinstance(file, str) else pd.NA for file in files], index=table.index)
    rows = pd.DataFrame({"slice_file_name": files, "fold": folds, "classID": classes, "salience": salience,
                         "path": paths, "group": groups})
    usable = files.notna() & (is_test | (classes.notna() & (folds.notna() | (not folds_given))))
    check_files(root, rows[usable], csv_name, problems)
    training = rows[usable & ~is_test].astype({"classID": np.int64}).reset_index(drop=True)
    test = rows[usable & is_test].reset_index(drop=True)
    test = test.assign(ID=np.arange(len(test), dtype=np.int64))[TEST_COLUMNS]
    _require_two_classes(class_names, csv_name, problems)
    return LayoutTables(training[LABELLED_COLUMNS], test, class_names, has_salience, folds_given)


def _relative_files(table: pd.DataFrame, csv_name: str, problems: list[str]) -> pd.Series:
    """`file` cells as relative POSIX paths inside the data folder; bad or repeated ones become <NA> with a problem."""
    files = table["file"].str.strip()
    for position, file in files.items():
        parts = PurePosixPath(file).parts
        if file == "" or file.startswith("/") or "\\" in file or ".." in parts or not parts:
            problems.append(f"{csv_name} line {line_of(position)}, column file: {file!r} is not a path inside the "
                            "data folder; write it relative to the folder that holds metadata.csv (e.g. "
                            "audio/dog/1.wav)")
            files[position] = pd.NA
    files = files.map(lambda file: str(PurePosixPath(file)) if isinstance(file, str) else file)
    check_unique(files, csv_name, "file", problems)
    return files


def _generic_folds(table: pd.DataFrame, is_test: pd.Series, csv_name: str, problems: list[str]) -> pd.Series:
    """The fold column (Int64; <NA> on test rows): integers 1..K with every fold present, or 'test'."""
    folds = integers(table[~is_test], "fold", csv_name, tuple(range(1, MAX_CLASS_NUMBER)), problems,
                     "folds are 1, 2, ... or 'test'; drop the column to have folds assigned")
    folds = folds.reindex(table.index).astype("Int64")
    present = sorted(set(folds.dropna().astype(int)))
    if present:
        missing = sorted(set(range(1, present[-1] + 1)) - set(present))
        if missing:
            problems.append(f"{csv_name}: fold(s) {', '.join(map(str, missing))} have no clips; folds must be "
                            f"numbered 1-{present[-1]} without gaps")
        elif len(present) < 2:
            problems.append(f"{csv_name}: every row is in fold 1; cross-validation needs at least 2 folds "
                            "(or drop the fold column to have folds assigned)")
    return folds


def _generic_groups(table: pd.DataFrame, csv_name: str, problems: list[str]) -> pd.Series:
    if "group" not in table.columns:
        return pd.Series(pd.NA, index=table.index, dtype=object)
    groups = table["group"].str.strip()
    for position in table.index[groups == ""]:
        problems.append(f"{csv_name} line {line_of(position)}, column group: is empty; give every row its "
                        "recording (or drop the column)")
    return groups.replace("", pd.NA).astype(object)


# ------------------------------------------------------------------------------------ class folders

def looks_like_class_folders(root: Path) -> bool:
    """True when some visible subfolder of `root` holds audio (the class-folder layout's shape)."""
    return any(path.suffix.lower() in AUDIO_SUFFIXES and path.is_file()
               for folder in _class_folders(root) for path in folder.rglob("*"))


def read_class_folders(root: Path, problems: list[str]) -> LayoutTables:
    """<root>/<class>/**/*.wav|flac|ogg: one class per visible subfolder, folds to be assigned."""
    for stray in sorted(path.name for path in root.iterdir()
                        if path.is_file() and path.suffix.lower() in AUDIO_SUFFIXES):
        problems.append(f"{stray} is not inside a class folder; move it into <root>/<class>/ or delete it")
    files_by_class = {folder.name: _audio_files(folder) for folder in _class_folders(root)}
    for name, files in files_by_class.items():
        if not files:
            problems.append(f"class folder {name}/ holds no .wav, .flac or .ogg file; add its clips or remove it")
    class_names = natural_order({name for name, files in files_by_class.items() if files})
    _require_two_classes(class_names, f"{root}", problems)
    rows = [(path.relative_to(root).as_posix(), index, str(path)) for index, name in enumerate(class_names)
            for path in files_by_class[name]]
    labelled = pd.DataFrame({
        "slice_file_name": [row[0] for row in rows],
        "fold": pd.Series(pd.NA, index=range(len(rows)), dtype="Int64"),
        "classID": np.array([row[1] for row in rows], dtype=np.int64),
        "salience": pd.Series(pd.NA, index=range(len(rows)), dtype="Int64"),
        "path": [row[2] for row in rows],
        "group": pd.Series(pd.NA, index=range(len(rows)), dtype=object),
    })
    return LayoutTables(labelled, _empty_test(), class_names, has_salience=False, folds_given=False)


def _class_folders(root: Path) -> list[Path]:
    return sorted(path for path in root.iterdir() if path.is_dir() and not path.name.startswith("."))


def _audio_files(folder: Path) -> list[Path]:
    """Audio files under `folder` (any depth), skipping hidden files and folders; sorted."""
    return sorted(path for path in folder.rglob("*") if path.suffix.lower() in AUDIO_SUFFIXES and path.is_file()
                  and not any(part.startswith(".") for part in path.relative_to(folder).parts))


# ------------------------------------------------------------------------------------------ shared

def _require_two_classes(class_names: tuple[str, ...], where: str, problems: list[str]) -> None:
    if len(class_names) == 1:
        problems.append(f"{where}: only one class ({class_names[0]!r}); a classifier needs at least two")
    elif not class_names and not problems:
        problems.append(f"{where}: no labelled clips; a classifier needs at least two classes")


def _empty_tables(folds_given: bool) -> LayoutTables:
    labelled = pd.DataFrame({"slice_file_name": pd.Series(dtype=str), "fold": pd.Series(dtype="Int64"),
                             "classID": pd.Series(dtype=np.int64), "salience": pd.Series(dtype="Int64"),
                             "path": pd.Series(dtype=str), "group": pd.Series(dtype=object)})
    return LayoutTables(labelled, _empty_test(), (), has_salience=False, folds_given=folds_given)


def _empty_test() -> pd.DataFrame:
    return pd.DataFrame({"ID": pd.Series(dtype=np.int64), "slice_file_name": pd.Series(dtype=str),
                         "path": pd.Series(dtype=str), "salience": pd.Series(dtype="Int64"),
                         "classID": pd.Series(dtype="Int64"), "group": pd.Series(dtype=object)})
