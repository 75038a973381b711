"""Metadata: detect the data layout, validate every CSV row, and return the train and test tables.

Five layouts, detected from the data folder (the first two here, the others in layouts.py):
- Kaggle: metadata/kaggle_train.csv + metadata/kaggle_test.csv (+ optional kaggle_test_labels.csv
  with ID,TARGET); audio in audio/fold<k>/ and audio/test/.
- Official UrbanSound8K: metadata/UrbanSound8K.csv; audio in audio/fold1..10/. Train = folds 1-8,
  test = folds 9-10 with IDs 0..N-1 in metadata order and their labels kept.
- ESC-50 (meta/esc50.csv, audio/), a generic CSV (metadata.csv) and class folders (<root>/<class>/):
  every labelled clip is in `train` (`all_folds` stays UrbanSound8K's), with the data's folds or folds assigned once
  (fold_assignment.py); the test split is empty unless a generic CSV marks rows with fold `test`.

Everything is checked before any work starts and every problem is reported in one MetadataError.
The DataSource also says what the data is: its class names, folds, salience and native sample rates.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from core.data.audio import RateSummary, native_rates
from core.data.checks import MetadataError, check_files, check_unique, integers, plain_file_names, read_csv
from core.data.fold_assignment import groups_from_pattern, stored_or_assigned_folds
from core.data.layouts import (
    ESC50_CSV,
    GENERIC_CSV,
    LayoutTables,
    looks_like_class_folders,
    read_class_folders,
    read_esc50,
    read_generic_csv,
)
from core.errors import UserError
from core.folds import ALL_FOLDS, SALIENCE_VALUES, TEST_FOLDS, TRAIN_FOLDS, URBANSOUND8K_CLASSES

KAGGLE_TRAIN = Path("metadata/kaggle_train.csv")
KAGGLE_TEST = Path("metadata/kaggle_test.csv")
KAGGLE_TEST_LABELS = Path("metadata/kaggle_test_labels.csv")
OFFICIAL = Path("metadata/UrbanSound8K.csv")

LAYOUTS = ("kaggle", "official", "esc50", "csv", "folders")
LAYOUT_MARKERS = {"kaggle": KAGGLE_TRAIN, "official": OFFICIAL, "esc50": ESC50_CSV, "csv": GENERIC_CSV}
LAYOUT_NAMES = {"kaggle": "Kaggle", "official": "official", "esc50": "ESC-50", "csv": "CSV",
                "folders": "class-folder"}
OWN_READERS = {"esc50": read_esc50, "csv": read_generic_csv, "folders": read_class_folders}

CLASS_IDS = tuple(range(len(URBANSOUND8K_CLASSES)))

TRAIN_REQUIRED = ("slice_file_name", "fold", "classID", "salience")
TEST_REQUIRED = ("ID", "slice_file_name")
LABELS_REQUIRED = ("ID", "TARGET")

TRAIN_COLUMNS = ["slice_file_name", "fold", "classID", "salience", "path"]
TEST_COLUMNS = ["ID", "slice_file_name", "path", "salience", "classID"]


@dataclass(frozen=True, eq=False)
class DataSource:
    """A validated data folder: the cross-validation rows, the test rows (absolute audio paths) and what the data is.

    UrbanSound8K layouts: `train` holds folds 1-8; the defaults below are UrbanSound8K's constants.
    Other layouts: `train` holds every labelled clip; its `salience` is <NA> where the data has none.
    """

    root: Path
    layout: str                 # one of LAYOUTS
    train: pd.DataFrame         # slice_file_name, fold, classID (int), salience (int 1|2; Int64 <NA> if none), path
    test: pd.DataFrame          # ID (int), slice_file_name, path, salience (Int64, <NA> if unknown), classID (Int64)
    all_folds: pd.DataFrame | None = None  # official layout: folds 1-10 as train-style rows (us8k-10fold protocol)
    fold_leakage: str | None = None         # the leakage found, when --allow-fold-leakage let it through
    class_names: tuple[str, ...] = URBANSOUND8K_CLASSES  # classID = index
    folds: tuple[int, ...] = TRAIN_FOLDS        # every fold number of the labelled clips
    test_folds: tuple[int, ...] = ()            # the folds that make up the test split (official: 9, 10)
    has_salience: bool = True                   # every labelled clip has a salience annotation
    groups: pd.Series | None = None             # path -> recording/group of each clip (<NA>: unknown)
    folds_assigned: bool = False                # folds came from fold_assignment (the layout gives none)
    unstored_folds: pd.DataFrame | None = None  # a new assignment not yet in a folds file (file,group,fold)

    @property
    def num_classes(self) -> int:
        """How many classes the data has (the width of a model's head)."""
        return len(self.class_names)

    @property
    def labelled(self) -> pd.DataFrame:
        """Every labelled clip with its fold (train-style rows): official folds 1-10, else `train`."""
        return self.all_folds if self.all_folds is not None else self.train

    @property
    def cross_validation_folds(self) -> tuple[int, ...]:
        """The folds that are not the test split."""
        return tuple(fold for fold in self.folds if fold not in self.test_folds)

    @property
    def has_test_labels(self) -> bool:
        """True when every test row has a known class (official layout, or kaggle_test_labels.csv)."""
        return len(self.test) > 0 and bool(self.test["classID"].notna().all())

    @property
    def has_test_salience(self) -> bool:
        """True when every test row has a salience value."""
        return len(self.test) > 0 and bool(self.test["salience"].notna().all())

    @cached_property
    def sample_rates(self) -> RateSummary:
        """The audio's native sample rates (headers only, read once, on first use)."""
        return native_rates(list(dict.fromkeys([*self.labelled["path"], *self.test["path"]])))


def detect_layout(root: Path) -> str:
    """One of LAYOUTS from the metadata files (or class folders) present under `root`; MetadataError otherwise."""
    root = Path(root)
    if not root.is_dir():
        raise MetadataError(f"data folder {root} does not exist or is not a folder",
                            ["pass --data the folder that holds your data set (its metadata and audio)"])
    found = [layout for layout, marker in LAYOUT_MARKERS.items() if (root / marker).is_file()]
    if len(found) > 1:
        raise MetadataError(
            f"{root} holds {'both' if len(found) == 2 else 'several'} layouts, so it is unclear which one to use:",
            [" and ".join(f"{LAYOUT_MARKERS[layout]} ({LAYOUT_NAMES[layout]} layout)" for layout in found)
             + "; remove all but one, or point --data at a folder with only one of them"])
    if found:
        return found[0]
    if not (root / "metadata").exists() and not (root / "meta").exists() and looks_like_class_folders(root):
        return "folders"
    raise MetadataError(
        f"{root} is not a data folder of a known layout; looked for:",
        [f"{KAGGLE_TRAIN} + {KAGGLE_TEST} with audio/fold<k>/ and audio/test/ (Kaggle layout)",
         f"{OFFICIAL} with audio/fold1..10/ (official layout)",
         f"{ESC50_CSV} with audio/ (ESC-50 layout)",
         f"{GENERIC_CSV} with columns file,label [,fold,salience,group] (CSV layout)",
         "one folder per class holding .wav/.flac/.ogg files (class-folder layout)",
         "pass --data the folder that contains them"])


class FoldLeakageError(UserError):
    """Clips of one recording (fsID) sit in two folds, or in the training folds and the test split."""


def load_source(root: Path, allow_fold_leakage: bool = False, *, n_folds: int | None = None,
                group_pattern: str | None = None, folds_file: Path | None = None,
                store_folds: bool = True) -> DataSource:
    """Detect the layout of `root`, validate all metadata and audio paths, and return the tables.

    Raises MetadataError listing every problem (missing columns, unknown classes, salience not 1 or
    2, bad or unknown folds or IDs, duplicate names, listed files that are absent) before any work
    starts, then FoldLeakageError if one recording spans folds (unless `allow_fold_leakage`).
    For a layout without folds (class folders, a CSV without a fold column) the folds come from
    `folds_file` when it holds a matching assignment, else are assigned (`n_folds`, default 5) and
    written there (fold_assignment.py); with `store_folds` False (or no `folds_file`) a new assignment
    is kept in `unstored_folds` for the caller to store once its own checks pass. `group_pattern`: a
    regex whose first group (or match) in each file name names its recording, for layouts that do not
    name recordings themselves.
    """
    root = Path(root).resolve()
    layout = detect_layout(root)
    if layout in OWN_READERS:
        return _load_own(root, layout, allow_fold_leakage, n_folds, group_pattern, folds_file, store_folds)
    if n_folds is not None or group_pattern is not None:
        raise UserError(f"{root} is in the {LAYOUT_NAMES[layout]} UrbanSound8K layout, whose folds and recordings "
                        "(fsID) are given; --n-folds and --group-pattern apply to data without them")
    train, test, problems = (_load_kaggle if layout == "kaggle" else _load_official)(root)
    if problems:
        raise MetadataError(f"the metadata in {root} has {len(problems)} problem(s); nothing was done:", problems)
    labelled, all_folds = train, None
    if layout == "official":  # folds 9-10 are labelled too: all ten folds, for the 10-fold protocol
        labelled = all_folds = pd.concat([train, test.astype({"classID": np.int64, "salience": np.int64})
                                          [TRAIN_COLUMNS + ["recording"]]], ignore_index=True)
    leakage = _checked_leakage(root, fold_leakage(labelled, test if layout == "kaggle" else None), allow_fold_leakage)
    groups = pd.Series(labelled["recording"].to_numpy(), index=labelled["path"], dtype=object)
    if layout == "kaggle":  # the test clips' recordings, where their names follow UrbanSound8K's naming
        groups = pd.concat([groups, pd.Series(test["slice_file_name"].map(recording_of).to_numpy(),
                                              index=test["path"], dtype=object)])
    return DataSource(root=root, layout=layout, train=train[TRAIN_COLUMNS], test=test[TEST_COLUMNS],
                      all_folds=None if all_folds is None else all_folds[TRAIN_COLUMNS], fold_leakage=leakage,
                      class_names=URBANSOUND8K_CLASSES, folds=ALL_FOLDS if layout == "official" else TRAIN_FOLDS,
                      test_folds=TEST_FOLDS if layout == "official" else (), has_salience=True,
                      groups=groups.where(groups.notna(), pd.NA))


def _load_own(root: Path, layout: str, allow_fold_leakage: bool, n_folds: int | None, group_pattern: str | None,
              folds_file: Path | None, store_folds: bool = True) -> DataSource:
    """ESC-50, generic CSV or class folders: validate, take or assign the folds, guard against leakage."""
    problems: list[str] = []
    tables: LayoutTables = OWN_READERS[layout](root, problems)
    labelled, test = tables.labelled, tables.test
    if group_pattern is not None:
        if labelled["group"].notna().any():
            raise UserError(f"{root}: the {LAYOUT_NAMES[layout]} layout names each clip's recording already "
                            f"({'src_file' if layout == 'esc50' else 'the group column'}); drop --group-pattern")
        labelled = labelled.assign(group=groups_from_pattern(labelled["slice_file_name"], group_pattern, problems))
        test = test.assign(group=groups_from_pattern(test["slice_file_name"], group_pattern, problems))
    if tables.folds_given and n_folds is not None:
        problems.append(f"--n-folds {n_folds}: the {LAYOUT_NAMES[layout]} layout gives its folds "
                        f"({GENERIC_CSV} column fold or {ESC50_CSV}); drop --n-folds or the fold column")
    if problems:
        raise MetadataError(f"the data in {root} has {len(problems)} problem(s); nothing was done:", problems)
    unstored = None
    if not tables.folds_given:
        folds, unstored = stored_or_assigned_folds(labelled["slice_file_name"], labelled["classID"],
                                                   labelled["group"], n_folds, folds_file, store_folds)
        labelled = labelled.assign(fold=folds)
        unstored = unstored if folds_file is None or not store_folds else None
    labelled = labelled.astype({"fold": np.int64})
    leakage = fold_leakage(labelled.rename(columns={"group": "recording"}),
                           test.rename(columns={"group": "recording"}), per_class=False)
    leakage = _checked_leakage(root, leakage, allow_fold_leakage)
    groups = pd.concat([pd.Series(labelled["group"].to_numpy(), index=labelled["path"], dtype=object),
                        pd.Series(test["group"].to_numpy(), index=test["path"], dtype=object)])
    train = labelled[TRAIN_COLUMNS].reset_index(drop=True)
    if tables.has_salience:
        train = train.astype({"salience": np.int64})
    return DataSource(root=root, layout=layout, train=train, test=test[TEST_COLUMNS], all_folds=None,
                      fold_leakage=leakage, class_names=tables.class_names,
                      folds=tuple(sorted(set(train["fold"].tolist()))), test_folds=(),
                      has_salience=tables.has_salience, groups=groups, folds_assigned=not tables.folds_given,
                      unstored_folds=unstored)


def _checked_leakage(root: Path, leakage: str | None, allow_fold_leakage: bool) -> str | None:
    """`leakage`, or FoldLeakageError when there is some and the user did not allow it."""
    if leakage and not allow_fold_leakage:
        raise FoldLeakageError(f"{root}: {leakage}. Clips cut from one recording must stay in one fold, or scores "
                               "are inflated (random splits of UrbanSound8K reach ~98 % instead of ~84 %). Fix the "
                               "folds, or pass --allow-fold-leakage to proceed knowingly (the summary then says so).")
    return leakage


# --------------------------------------------------------------------------------- fold leakage

SLICE_NAME = re.compile(r"^(\d+)-(\d+)-\d+-\d+\.[A-Za-z0-9]+$")  # UrbanSound8K: fsID-classID-occurrenceID-sliceID.wav
SHOWN_RECORDINGS = 5


def recording_of(name: str) -> str | None:
    """The Freesound recording (fsID) of an UrbanSound8K-style file name; None for other names."""
    match = SLICE_NAME.match(name)
    return match.group(1) if match else None


def fold_leakage(labelled: pd.DataFrame, test: pd.DataFrame | None, per_class: bool = True) -> str | None:
    """None, or what leaks: one recording's clips of a class in two labelled folds; such test clips in them.

    The unit is a recording's clips of one class (fsID + classID): that is how UrbanSound8K's own
    folds were drawn (5 of its recordings hold two classes, each class's clips in its own fold), so the
    published folds pass and a recording split across folds does not. `labelled` needs columns
    recording (fsID or <NA>), classID and fold; `test` (the Kaggle layout's unlabelled split, whose
    names may follow UrbanSound8K's naming, class field included) needs slice_file_name.
    `per_class=False` (data sets whose groups are the unit, e.g. ESC-50's src_file): the key is the
    recording alone, and a `test` with a recording column is checked on it.
    """
    problems = []
    known = labelled.dropna(subset=["recording"])
    keys = known["recording"].astype(str) + ("/" + known["classID"].astype(str) if per_class else "")
    folds_of = known.groupby(keys)["fold"].agg(lambda folds: sorted(set(folds)))
    spread = folds_of[folds_of.map(len) > 1]
    if len(spread):
        shown = "; ".join(f"{_recording(key, per_class)} in folds {','.join(map(str, folds))}"
                          for key, folds in spread.head(SHOWN_RECORDINGS).items())
        problems.append(f"{len(spread)} recording(s) appear in more than one fold (first: {shown})")
    if test is not None and len(test) and not per_class:
        shared = sorted(set(test["recording"].dropna().astype(str)) & set(folds_of.index))
        if shared:
            problems.append(f"{len(shared)} test recording(s) also appear in the training folds (first: "
                            f"{'; '.join(_recording(key, False) for key in shared[:SHOWN_RECORDINGS])})")
    elif test is not None and len(test):
        matches = test["slice_file_name"].str.extract(SLICE_NAME).dropna()
        shared = sorted(set(matches[0] + "/" + matches[1]) & set(folds_of.index))
        if shared:
            shown = "; ".join(f"{_recording(key, per_class)} (train folds {','.join(map(str, folds_of[key]))})"
                              for key in shared[:SHOWN_RECORDINGS])
            problems.append(f"{len(shared)} test recording(s) also appear in the training folds (first: {shown})")
    return "; ".join(problems) or None


def _recording(key: str, per_class: bool) -> str:
    if not per_class:
        return f"recording {key!r}"
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
                         in zip(train["fold"], train["slice_file_name"], strict=True)]
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
                    in zip(rows["fold"], rows["slice_file_name"], strict=True)]
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
                         f"class IDs are 0-{len(URBANSOUND8K_CLASSES) - 1}")
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
    targets = integers(labels, "TARGET", csv_name, CLASS_IDS, problems, f"class IDs are 0-{len(URBANSOUND8K_CLASSES) - 1}")
    check_unique(ids, csv_name, "ID", problems)
    known = ids.notna() & targets.notna()
    by_id = dict(zip(ids[known].astype(np.int64), targets[known].astype(np.int64), strict=True))
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
