"""Metadata: detect the data layout, validate every CSV row, and return the train and test tables.

Two layouts, detected from the data folder:
- Kaggle: metadata/kaggle_train.csv + metadata/kaggle_test.csv (+ optional kaggle_test_labels.csv
  with ID,TARGET); audio in audio/fold<k>/ and audio/test/.
- Official UrbanSound8K: metadata/UrbanSound8K.csv; audio in audio/fold1..10/. Train = folds 1-8,
  test = folds 9-10 with IDs 0..N-1 in metadata order and their labels kept.

Everything is checked before any work starts and every problem is reported in one MetadataError.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from core import NUM_CLASSES
from core.data.checks import MetadataError, check_files, check_unique, integers, plain_file_names, read_csv
from core.errors import UserError
from core.folds import SALIENCE_VALUES, TEST_FOLDS, TRAIN_FOLDS

KAGGLE_TRAIN = Path("metadata/kaggle_train.csv")
KAGGLE_TEST = Path("metadata/kaggle_test.csv")
KAGGLE_TEST_LABELS = Path("metadata/kaggle_test_labels.csv")
OFFICIAL = Path("metadata/UrbanSound8K.csv")

CLASS_IDS = tuple(range(NUM_CLASSES))

TRAIN_REQUIRED = ("slice_file_name", "fold", "classID", "salience")
TEST_REQUIRED = ("ID", "slice_file_name")
LABELS_REQUIRED = ("ID", "TARGET")

TRAIN_COLUMNS = ["slice_file_name", "fold", "classID", "salience", "path"]
TEST_COLUMNS = ["ID", "slice_file_name", "path", "salience", "classID"]


@dataclass(frozen=True, eq=False)
class DataSource:
    """A validated data folder: the train rows (folds 1-8) and the test rows, with absolute audio paths."""

    root: Path
    layout: str                 # "kaggle" | "official"
    train: pd.DataFrame         # slice_file_name, fold (int 1..8), classID (int 0..9), salience (int 1|2), path
    test: pd.DataFrame          # ID (int), slice_file_name, path, salience (Int64, <NA> if unknown), classID (Int64)
    all_folds: pd.DataFrame | None = None  # official layout: folds 1-10 as train-style rows (us8k-10fold protocol)
    fold_leakage: str | None = None         # the leakage found, when --allow-fold-leakage let it through

    @property
    def has_test_labels(self) -> bool:
        """True when every test row has a known class (official layout, or kaggle_test_labels.csv)."""
        return len(self.test) > 0 and bool(self.test["classID"].notna().all())

    @property
    def has_test_salience(self) -> bool:
        """True when every test row has a salience value."""
        return len(self.test) > 0 and bool(self.test["salience"].notna().all())


def detect_layout(root: Path) -> str:
    """'kaggle' or 'official' from the metadata files present under `root`; MetadataError otherwise."""
    root = Path(root)
    if not root.is_dir():
        raise MetadataError(f"data folder {root} does not exist or is not a folder",
                            ["pass --data the folder that holds metadata/ and audio/"])
    has_kaggle = (root / KAGGLE_TRAIN).is_file()
    has_official = (root / OFFICIAL).is_file()
    if has_kaggle and has_official:
        raise MetadataError(
            f"{root} holds both layouts, so it is unclear which one to use:",
            [f"{KAGGLE_TRAIN} (Kaggle layout) and {OFFICIAL} (official layout); "
             "remove one, or point --data at a folder with only one of them"])
    if has_kaggle:
        return "kaggle"
    if has_official:
        return "official"
    raise MetadataError(
        f"{root} is not an UrbanSound8K data folder; looked for:",
        [f"{KAGGLE_TRAIN} + {KAGGLE_TEST} with audio/fold<k>/ and audio/test/ (Kaggle layout)",
         f"{OFFICIAL} with audio/fold1..10/ (official layout)",
         "pass --data the folder that contains metadata/ and audio/"])


class FoldLeakageError(UserError):
    """Clips of one recording (fsID) sit in two folds, or in the training folds and the test split."""


def load_source(root: Path, allow_fold_leakage: bool = False) -> DataSource:
    """Detect the layout of `root`, validate all metadata and audio paths, and return the tables.

    Raises MetadataError listing every problem (missing columns, class IDs outside 0-9, salience not
    1 or 2, bad folds or IDs, duplicate names, listed files that are absent) before any work starts,
    then FoldLeakageError if one recording spans folds (unless `allow_fold_leakage`).
    """
    root = Path(root).resolve()
    layout = detect_layout(root)
    train, test, problems = (_load_kaggle if layout == "kaggle" else _load_official)(root)
    if problems:
        raise MetadataError(f"the metadata in {root} has {len(problems)} problem(s); nothing was done:", problems)
    labelled, all_folds = train, None
    if layout == "official":  # folds 9-10 are labelled too: all ten folds, for the 10-fold protocol
        labelled = all_folds = pd.concat([train, test.astype({"classID": np.int64, "salience": np.int64})
                                          [TRAIN_COLUMNS + ["recording"]]], ignore_index=True)
    leakage = fold_leakage(labelled, test if layout == "kaggle" else None)
    if leakage and not allow_fold_leakage:
        raise FoldLeakageError(f"{root}: {leakage}. Clips cut from one recording must stay in one fold, or scores "
                               "are inflated (random splits of UrbanSound8K reach ~98 % instead of ~84 %). Fix the "
                               "folds, or pass --allow-fold-leakage to proceed knowingly (the summary then says so).")
    return DataSource(root=root, layout=layout, train=train[TRAIN_COLUMNS], test=test[TEST_COLUMNS],
                      all_folds=None if all_folds is None else all_folds[TRAIN_COLUMNS], fold_leakage=leakage)


# --------------------------------------------------------------------------------- fold leakage

SLICE_NAME = re.compile(r"^(\d+)-(\d+)-\d+-\d+\.[A-Za-z0-9]+$")  # UrbanSound8K: fsID-classID-occurrenceID-sliceID.wav
SHOWN_RECORDINGS = 5


def recording_of(name: str) -> str | None:
    """The Freesound recording (fsID) of an UrbanSound8K-style file name; None for other names."""
    match = SLICE_NAME.match(name)
    return match.group(1) if match else None


def fold_leakage(labelled: pd.DataFrame, test: pd.DataFrame | None) -> str | None:
    """None, or what leaks: one recording's clips of a class in two labelled folds; such test clips in them.

    The unit is a recording's clips of one class (fsID + classID): that is how UrbanSound8K's own
    folds were drawn (5 of its recordings hold two classes, each class's clips in its own fold), so the
    published folds pass and a recording split across folds does not. `labelled` needs columns
    recording (fsID or <NA>), classID and fold; `test` (the Kaggle layout's unlabelled split, whose
    names may follow UrbanSound8K's naming, class field included) needs slice_file_name.
    """
    problems = []
    known = labelled.dropna(subset=["recording"])
    keys = known["recording"].astype(str) + "/" + known["classID"].astype(str)
    folds_of = known.groupby(keys)["fold"].agg(lambda folds: sorted(set(folds)))
    spread = folds_of[folds_of.map(len) > 1]
    if len(spread):
        shown = "; ".join(f"{_recording(key)} in folds {','.join(map(str, folds))}"
                          for key, folds in spread.head(SHOWN_RECORDINGS).items())
        problems.append(f"{len(spread)} recording(s) appear in more than one fold (first: {shown})")
    if test is not None and len(test):
        matches = test["slice_file_name"].str.extract(SLICE_NAME).dropna()
        shared = sorted(set(matches[0] + "/" + matches[1]) & set(folds_of.index))
        if shared:
            shown = "; ".join(f"{_recording(key)} (train folds {','.join(map(str, folds_of[key]))})"
                              for key in shared[:SHOWN_RECORDINGS])
            problems.append(f"{len(shared)} test recording(s) also appear in the training folds (first: {shown})")
    return "; ".join(problems) or None


def _recording(key: str) -> str:
    recording, class_id = key.split("/")
    return f"fsID {recording} (class {class_id})"


# ----------------------------------------------------------------------------------------- layouts

def _load_kaggle(root: Path) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    problems: list[str] = []
    train_csv = read_csv(root, KAGGLE_TRAIN, TRAIN_REQUIRED, problems, "Kaggle")
    test_csv = read_csv(root, KAGGLE_TEST, TEST_REQUIRED, problems, "Kaggle")
    labels_csv = None
    if (root / KAGGLE_TEST_LABELS).exists():
        labels_csv = read_csv(root, KAGGLE_TEST_LABELS, LABELS_REQUIRED, problems, "Kaggle")

    train = _empty_train()
    if train_csv is not None:
        train = _train_rows(train_csv, KAGGLE_TRAIN.name, TRAIN_FOLDS, problems,
                            "folds 9-10 are the test split; the Kaggle train CSV uses folds 1-8")
        train["path"] = [str(root / "audio" / f"fold{fold}" / name) for fold, name
                         in zip(train["fold"], train["slice_file_name"])]
        check_files(root, train, KAGGLE_TRAIN.name, problems)
    test = _empty_test()
    if test_csv is not None:
        test = _kaggle_test_rows(test_csv, problems)
        test["path"] = [str(root / "audio" / "test" / name) for name in test["slice_file_name"]]
        check_files(root, test, KAGGLE_TEST.name, problems)
        if labels_csv is not None:
            test["classID"] = _test_labels(test, labels_csv, problems)
    return train, test, problems


def _load_official(root: Path) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    problems: list[str] = []
    table = read_csv(root, OFFICIAL, TRAIN_REQUIRED, problems, "official")
    if table is None:
        return _empty_train(), _empty_test(), problems
    rows = _train_rows(table, OFFICIAL.name, TRAIN_FOLDS + TEST_FOLDS, problems,
                       "the official metadata uses folds 1-10")
    rows["path"] = [str(root / "audio" / f"fold{fold}" / name) for fold, name
                    in zip(rows["fold"], rows["slice_file_name"])]
    check_files(root, rows, OFFICIAL.name, problems)
    is_test = rows["fold"].isin(TEST_FOLDS).to_numpy()
    train = rows[~is_test].reset_index(drop=True)
    test = rows[is_test].reset_index(drop=True)
    for name, part in (("train (folds 1-8)", train), ("test (folds 9-10)", test)):
        if len(part) == 0 and not problems:
            problems.append(f"{OFFICIAL.name}: the {name} split has no rows; the official layout needs folds 1-10")
    test = test.assign(
        ID=np.arange(len(test), dtype=np.int64),
        salience=test["salience"].astype("Int64"),
        classID=test["classID"].astype("Int64"),
    )
    return train, test, problems


# ------------------------------------------------------------------------------------ row checks

def _train_rows(table: pd.DataFrame, csv_name: str, folds: tuple[int, ...], problems: list[str],
                fold_hint: str) -> pd.DataFrame:
    """Validated slice_file_name, fold, classID, salience (int64) of a train-style CSV."""
    names = plain_file_names(table, "slice_file_name", csv_name, problems)
    fold = integers(table, "fold", csv_name, folds, problems, fold_hint)
    class_id = integers(table, "classID", csv_name, CLASS_IDS, problems,
                         f"class IDs are 0-{NUM_CLASSES - 1}")
    salience = integers(table, "salience", csv_name, SALIENCE_VALUES, problems,
                         "salience is 1 (foreground) or 2 (background)")
    valid = fold.notna() & class_id.notna() & salience.notna() & names.notna()
    names = names[valid].astype(str)
    # The recording a clip was cut from: the fsID column where there is one, else the name's first field.
    recording = (table["fsID"].str.strip().replace("", pd.NA)[valid] if "fsID" in table.columns
                 else names.map(recording_of))
    return pd.DataFrame({
        "slice_file_name": names,
        "fold": fold[valid].astype(np.int64),
        "classID": class_id[valid].astype(np.int64),
        "salience": salience[valid].astype(np.int64),
        "recording": recording,
    }).reset_index(drop=True)


def _kaggle_test_rows(table: pd.DataFrame, problems: list[str]) -> pd.DataFrame:
    csv_name = KAGGLE_TEST.name
    names = plain_file_names(table, "slice_file_name", csv_name, problems)
    ids = integers(table, "ID", csv_name, None, problems, "IDs are integers")
    check_unique(ids, csv_name, "ID", problems)
    if "salience" in table.columns:
        salience = integers(table, "salience", csv_name, SALIENCE_VALUES, problems,
                             "salience is 1 (foreground), 2 (background) or empty (unknown)", allow_empty=True)
    else:
        salience = pd.Series(pd.NA, index=table.index, dtype="Int64")
    valid = ids.notna() & names.notna()
    return pd.DataFrame({
        "ID": ids[valid].astype(np.int64),
        "slice_file_name": names[valid].astype(str),
        "salience": salience[valid].astype("Int64"),
        "classID": pd.Series(pd.NA, index=table.index, dtype="Int64")[valid],
    }).reset_index(drop=True)


def _test_labels(test: pd.DataFrame, labels: pd.DataFrame, problems: list[str]) -> pd.Series:
    """classID (Int64) of each test row from kaggle_test_labels.csv; every test ID needs exactly one label."""
    csv_name = KAGGLE_TEST_LABELS.name
    ids = integers(labels, "ID", csv_name, None, problems, "IDs are integers")
    targets = integers(labels, "TARGET", csv_name, CLASS_IDS, problems, f"class IDs are 0-{NUM_CLASSES - 1}")
    check_unique(ids, csv_name, "ID", problems)
    known = ids.notna() & targets.notna()
    by_id = dict(zip(ids[known].astype(np.int64), targets[known].astype(np.int64)))
    unlabelled = [int(test_id) for test_id in test["ID"] if int(test_id) not in by_id]
    if unlabelled:
        problems.append(f"{csv_name}: {len(unlabelled)} test ID(s) have no label (first: "
                        f"{', '.join(map(str, unlabelled[:10]))}); give every ID of {KAGGLE_TEST.name} one TARGET")
    unknown = sorted(set(by_id) - set(test["ID"].astype(int)))
    if unknown:
        problems.append(f"{csv_name}: {len(unknown)} ID(s) are not in {KAGGLE_TEST.name} (first: "
                        f"{', '.join(map(str, unknown[:10]))}); check that both files belong to the same test set")
    return pd.Series([by_id.get(int(test_id), pd.NA) for test_id in test["ID"]], index=test.index, dtype="Int64")


def _empty_train() -> pd.DataFrame:
    return pd.DataFrame({"slice_file_name": pd.Series(dtype=str), "fold": pd.Series(dtype=np.int64),
                         "classID": pd.Series(dtype=np.int64), "salience": pd.Series(dtype=np.int64),
                         "path": pd.Series(dtype=str), "recording": pd.Series(dtype=object)})


def _empty_test() -> pd.DataFrame:
    return pd.DataFrame({"ID": pd.Series(dtype=np.int64), "slice_file_name": pd.Series(dtype=str),
                         "path": pd.Series(dtype=str), "salience": pd.Series(dtype="Int64"),
                         "classID": pd.Series(dtype="Int64")})
