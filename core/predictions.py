"""Read and validate prediction files: probability CSVs, OOF CSVs, submissions, labels, ID lists.

Every reader returns arrays that are safe to use (no NaN, no duplicate keys, valid classes) or raises
a UserError naming the file, its first bad lines and what to do. Line numbers are file lines
(the header is line 1, the first data row line 2).
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from core import NUM_CLASSES, PROB_COLUMNS
from core.errors import UserError, format_problems
from core.folds import URBANSOUND8K_CLASSES

SHOWN_ROWS = 5  # how many bad rows an error message lists per problem
EXACT_INTEGER_LIMIT = 2 ** 53  # beyond this a number read as float64 may have been rounded to another integer


KEY_COLUMNS = ("ID", "slice_file_name", "fold", "classID", "TARGET")  # the non-probability columns of our files


def probability_columns(class_names: tuple[str, ...]) -> list[str]:
    """The probability columns of a prediction CSV for a model of `class_names`, in class order.

    UrbanSound8K keeps the competition's format (columns 0..9, the class IDs); any other data set's
    columns are its class names, so that the file explains itself.
    """
    if tuple(class_names) == URBANSOUND8K_CLASSES:
        return list(PROB_COLUMNS)
    clashing = sorted(set(class_names) & set(KEY_COLUMNS))
    if clashing:
        raise UserError(f"class name(s) {', '.join(clashing)} would clash with a column of the prediction files "
                        f"({', '.join(KEY_COLUMNS)}); rename those classes (folders or labels)")
    return list(class_names)


def class_columns_of(header: list[str]) -> list[str]:
    """The probability columns of a prediction file with this `header`, in file order.

    A header with any all-digit column is UrbanSound8K's format (columns 0..9, other columns
    ignored); otherwise every column that is not a key column (ID, slice_file_name, fold, classID,
    TARGET) is a class, named as `probability_columns` wrote it.
    """
    if any(name.strip().isdigit() for name in header):
        return list(PROB_COLUMNS)
    return [name for name in header if name not in KEY_COLUMNS]


def describe_classes(columns: list[str] | tuple[str, ...]) -> str:
    """Class columns as shown in messages: `0..9` for UrbanSound8K's, else the names."""
    return f"{PROB_COLUMNS[0]}..{PROB_COLUMNS[-1]}" if list(columns) == PROB_COLUMNS else ", ".join(columns)


@dataclass(frozen=True)
class ProbabilityTable:
    """A per-fold test probability file (`ID,TARGET,0..9` or `ID,TARGET,<class names>`); `probs` as read."""

    path: Path
    ids: np.ndarray     # int64, file order
    probs: np.ndarray   # float64, (rows, classes)
    classes: tuple[str, ...] = tuple(PROB_COLUMNS)  # the probability columns, in file order


@dataclass(frozen=True)
class OofTable:
    """One out-of-fold file (`slice_file_name,fold,classID,TARGET,0..9`)."""

    path: Path
    clips: np.ndarray   # slice_file_name (str), file order
    folds: np.ndarray   # int64
    labels: np.ndarray  # int64 true classID
    probs: np.ndarray   # float64, (rows, classes)
    classes: tuple[str, ...] = tuple(PROB_COLUMNS)  # the probability columns, in file order


@dataclass(frozen=True)
class LabelTable:
    """`ID` -> class index, from a submission (`ID,TARGET`) or a labels file (`ID,TARGET` or `ID,classID`)."""

    path: Path
    ids: np.ndarray     # int64, file order
    labels: np.ndarray  # int64 in [0, number of classes)
    classes: tuple[str, ...] | None = None  # the class columns a submission carries (blend --probs), in file order


def read_probabilities(path: str | os.PathLike) -> ProbabilityTable:
    """Read a probability CSV with columns `ID` and `0..9` (`TARGET` and other columns are ignored),
    or, from a data set other than UrbanSound8K, `ID`, `TARGET` and one column per class name."""
    path = Path(path)
    frame, classes = _read_csv(path, keys=["ID"], probabilities=True,
                               what="a probability file (ID,TARGET and 0..9 or one column per class)")
    ids = _integer_ids(frame, path)
    _refuse_duplicate_keys(ids, path, "ID")
    return ProbabilityTable(path, ids, _probability_matrix(frame, path, ids, classes), tuple(classes))


def read_oof(path: str | os.PathLike) -> OofTable:
    """Read an OOF CSV (`slice_file_name,fold,classID,TARGET` and 0..9 or class names); clips must be unique."""
    path = Path(path)
    frame, classes = _read_csv(path, keys=["slice_file_name", "fold", "classID"], probabilities=True,
                               what="an OOF file (slice_file_name,fold,classID,TARGET and 0..9 or one column per class)")
    clips = frame["slice_file_name"]
    empty = clips.isna() | (clips.astype(str).str.strip() == "")
    if empty.any():
        rows = np.flatnonzero(empty.to_numpy())
        raise UserError(f"{path}: empty slice_file_name in {len(rows)} row(s), first: "
                        f"{', '.join(_line(row, None) for row in rows[:SHOWN_ROWS])}; every row needs its clip's name.")
    clips = clips.astype(str).to_numpy()
    _refuse_duplicate_keys(clips, path, "slice_file_name")
    folds = _integer_column(frame, path, "fold", clips, low=1, high=None)
    labels = _integer_column(frame, path, "classID", clips, low=0, high=len(classes) - 1)
    return OofTable(path, clips, folds, labels, _probability_matrix(frame, path, clips, classes), tuple(classes))


CLASSES_ADVICE = ("Fix or regenerate the file; another data set's files are scored with its classes: pass --data "
                  "DIR (the data set), or score the blend's --probs file (it names the classes).")


def read_submission(path: str | os.PathLike, num_classes: int | None = None) -> LabelTable:
    """Read a submission `ID,TARGET` (TARGET = predicted class index), optionally with one probability
    column per class (blend --probs: 0..9 or the class names), which say the classes.

    TARGET must lie in 0..K-1: K is the number of class columns the file carries, else `num_classes`,
    else UrbanSound8K's 10.
    """
    path = Path(path)
    classes = tuple(class_columns_of(_header(path)))
    classes = classes if len(classes) >= 2 else None  # a lone extra column is not a class list
    frame, _ = _read_csv(path, keys=["ID", "TARGET"], what="a submission (ID,TARGET)")
    count = len(classes) if classes else num_classes or NUM_CLASSES
    table = _label_table(frame, path, "TARGET", count)
    return LabelTable(table.path, table.ids, table.labels, classes)


def read_labels(path: str | os.PathLike, num_classes: int = NUM_CLASSES) -> LabelTable:
    """Read true labels: `ID,TARGET` or `ID,classID` (exactly one of the two label columns), each a class
    index in 0..num_classes-1 (UrbanSound8K's 10 unless given)."""
    path = Path(path)
    header = _header(path)
    present = [column for column in ("TARGET", "classID") if column in header]
    if len(present) != 1:
        found = "both TARGET and classID" if present else f"neither (columns: {', '.join(header)})"
        raise UserError(f"{path}: a labels file needs exactly one label column, TARGET or classID; found {found}. "
                        "Keep the column that holds the true class.")
    frame, _ = _read_csv(path, keys=["ID", present[0]], what=f"a labels file (ID,{present[0]})")
    return _label_table(frame, path, present[0], num_classes)


def read_ids(path: str | os.PathLike) -> np.ndarray:
    """The `ID` column of a CSV (e.g. kaggle_test.csv), in file order; IDs must be unique integers."""
    path = Path(path)
    frame, _ = _read_csv(path, keys=["ID"], what="an ID list (a CSV with an ID column)")
    ids = _integer_ids(frame, path)
    _refuse_duplicate_keys(ids, path, "ID")
    return ids


def row_normalise(probs: np.ndarray) -> np.ndarray:
    """Each row divided by its sum (inputs are validated: finite, non-negative, no all-zero row)."""
    return probs / probs.sum(axis=1, keepdims=True)


def align_positions(reference: np.ndarray, keys: np.ndarray, keys_source: str, reference_source: str,
                    advice: str, key_name: str = "ID") -> np.ndarray:
    """Row positions `p` such that `keys[p]` equals `reference` (alignment by value, not by row).

    Both arrays must be free of duplicates. When the key sets differ, raises a UserError naming both
    sources, the first keys found in only one of them, and `advice`.
    """
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    found = np.minimum(np.searchsorted(sorted_keys, reference), len(sorted_keys) - 1)
    present = sorted_keys[found] == reference
    only_in_keys = np.setdiff1d(keys, reference)
    if not present.all() or len(only_in_keys):
        only_in_reference = reference[~present]
        problems = [f"{len(only)} {key_name}(s) only in {source}, first: {_first(only)}"
                    for only, source in ((only_in_reference, reference_source), (only_in_keys, keys_source)) if len(only)]
        raise UserError(format_problems(
            f"{keys_source} ({len(keys)} rows) and {reference_source} ({len(reference)} rows) "
            f"hold different {key_name} sets:", problems) + f"\n{advice}")
    return order[found]


def matched_labels(predicted: LabelTable, truth: LabelTable) -> tuple[np.ndarray, np.ndarray]:
    """(y_true, y_pred) aligned by ID; the two files must hold the same ID set."""
    positions = align_positions(predicted.ids, truth.ids, f"labels {truth.path}", f"submission {predicted.path}",
                                "The labels file must hold exactly the submission's IDs.")
    return truth.labels[positions], predicted.labels


# --- reading -------------------------------------------------------------------------------------

def _header(path: Path) -> list[str]:
    if not path.is_file():
        raise UserError(f"{path}: file not found (or not a file). Check the path.")
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            return next(csv.reader(handle), [])
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"{path}: cannot read it as a UTF-8 CSV file ({error}).") from None


def _read_csv(path: Path, keys: list[str], what: str,
              probabilities: bool = False) -> tuple[pd.DataFrame, list[str]]:
    """The validated frame and, with `probabilities`, its probability columns (`class_columns_of`)."""
    header = _header(path)
    classes = class_columns_of(header) if probabilities else []
    problems = []
    duplicated = sorted({name for name in header if header.count(name) > 1})
    if duplicated:
        problems.append(f"duplicate column(s): {', '.join(duplicated)}")
    missing = [name for name in [*keys, *(classes if classes == PROB_COLUMNS else [])] if name not in header]
    if missing:
        problems.append(f"missing column(s): {', '.join(missing)}")
    if probabilities and len(classes) < 2:
        problems.append(f"no class columns: expected {PROB_COLUMNS[0]}..{PROB_COLUMNS[-1]} (UrbanSound8K) or one "
                        "column per class name")
    stray_classes = [name for name in header if name.strip().isdigit() and name not in PROB_COLUMNS]
    if stray_classes:
        problems.append(f"unexpected class column(s) {', '.join(stray_classes)}: there are {NUM_CLASSES} classes, "
                        f"columns {PROB_COLUMNS[0]}..{PROB_COLUMNS[-1]}")
    if problems:
        raise UserError(format_problems(f"{path}: not {what}; found columns: {', '.join(header) or 'none'}",
                                        problems))
    try:
        # Blank lines are kept (as empty rows) so that row i is always file line i + 2.
        frame = pd.read_csv(path, skip_blank_lines=False, keep_default_na=True)
    except (pd.errors.ParserError, ValueError, OSError) as error:
        raise UserError(f"{path}: cannot parse the CSV ({error}). Check the file.") from None
    if frame.empty:
        raise UserError(f"{path}: has a header but no rows. Regenerate the file.")
    return frame, classes


# --- validating ----------------------------------------------------------------------------------

def _integer_ids(frame: pd.DataFrame, path: Path) -> np.ndarray:
    return _integer_column(frame, path, "ID", None, low=None, high=None)


def _integer_column(frame: pd.DataFrame, path: Path, column: str, keys: np.ndarray | None,
                    low: int | None, high: int | None, advice: str = "Fix or regenerate the file.") -> np.ndarray:
    raw = frame[column]
    if pd.api.types.is_signed_integer_dtype(raw):
        numbers = raw.to_numpy(dtype=np.int64)  # exact: large IDs never pass through float64
        bad = np.zeros(len(numbers), dtype=bool)
    else:  # text, floats or uint64 beyond int64: only integers float64 holds exactly are accepted
        floats = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64)
        bad = ~np.isfinite(floats) | (floats != np.round(floats)) | (np.abs(floats) > EXACT_INTEGER_LIMIT)
        numbers = np.where(bad, 0, floats).astype(np.int64)
    if low is not None:
        bad |= numbers < low
    if high is not None:
        bad |= numbers > high
    if bad.any():
        allowed = "an integer" + (f" in {low}..{high}" if high is not None else f" >= {low}" if low is not None
                                  else " (at most 2^53 in magnitude unless written as a plain integer column)")
        rows = np.flatnonzero(bad)
        details = [f"{_line(row, keys)}: {column} = {_shown(raw.iloc[row])}" for row in rows[:SHOWN_ROWS]]
        raise UserError(format_problems(f"{path}: column {column} must be {allowed}; {len(rows)} bad row(s), first:",
                                        details) + f"\n{advice}")
    return numbers.astype(np.int64)


def _refuse_duplicate_keys(keys: np.ndarray, path: Path, column: str) -> None:
    duplicated = pd.Series(keys).duplicated(keep=False).to_numpy()
    if duplicated.any():
        rows = np.flatnonzero(duplicated)
        details = [f"line {row + 2}: {column} {_shown(keys[row])}" for row in rows[:2 * SHOWN_ROWS]]
        raise UserError(format_problems(
            f"{path}: {len(np.unique(keys[rows]))} duplicate {column}(s) in {len(rows)} rows, first:", details)
            + f"\nEach {column} must appear once; remove the duplicates or regenerate the file.")


def _probability_matrix(frame: pd.DataFrame, path: Path, keys: np.ndarray, classes: list[str]) -> np.ndarray:
    columns = frame[classes]
    if not all(pd.api.types.is_float_dtype(dtype) or pd.api.types.is_integer_dtype(dtype) for dtype in columns.dtypes):
        columns = columns.apply(pd.to_numeric, errors="coerce")
    probs = columns.to_numpy(dtype=np.float64)
    finite = np.isfinite(probs)
    problems = []
    non_finite = np.flatnonzero(~finite.all(axis=1))
    if len(non_finite):
        problems.append(_first_rows("empty, non-numeric, NaN or infinite values", non_finite, keys,
                                    lambda row: _bad_cells(frame, row, ~finite[row], classes)))
    negative = np.flatnonzero((probs < 0).any(axis=1))
    if len(negative):
        problems.append(_first_rows("negative values", negative, keys,
                                    lambda row: _bad_cells(frame, row, probs[row] < 0, classes)))
    all_zero = np.flatnonzero((probs == 0).all(axis=1))
    if len(all_zero):
        problems.append(_first_rows("all-zero rows", all_zero, keys, lambda row: "every class is 0"))
    with np.errstate(over="ignore"):
        overflowing = np.flatnonzero(finite.all(axis=1) & ~np.isfinite(probs.sum(axis=1)))
    if len(overflowing):  # the row sum overflows: normalising would silently turn the row into zeros
        problems.append(_first_rows("values too large to add up (the row sum overflows)", overflowing, keys,
                                    lambda row: f"max {probs[row].max():g}"))
    if problems:
        raise UserError(format_problems(f"{path}: invalid probabilities in columns {describe_classes(classes)}:",
                                        problems)
                        + "\nProbabilities must be finite, non-negative and not all zero in a row; "
                          "fix or regenerate the file.")
    return probs


def _label_table(frame: pd.DataFrame, path: Path, column: str, num_classes: int) -> LabelTable:
    ids = _integer_ids(frame, path)
    _refuse_duplicate_keys(ids, path, "ID")
    labels = _integer_column(frame, path, column, ids, low=0, high=num_classes - 1, advice=CLASSES_ADVICE)
    return LabelTable(path, ids, labels)


# --- message helpers -----------------------------------------------------------------------------

def _line(row: int, keys: np.ndarray | None) -> str:
    if keys is None:
        return f"line {row + 2}"
    key = keys[row]
    return f"line {row + 2} (" + (f"ID {key}" if isinstance(key, (int, np.integer)) else str(key)) + ")"


def _first_rows(problem: str, rows: np.ndarray, keys: np.ndarray, describe) -> str:
    shown = "; ".join(f"{_line(row, keys)}: {describe(row)}" for row in rows[:SHOWN_ROWS])
    return f"{problem} in {len(rows)} row(s), first: {shown}"


def _bad_cells(frame: pd.DataFrame, row: int, mask: np.ndarray, classes: list[str]) -> str:
    return ", ".join(f"{column}={_shown(frame[column].iloc[row])}" for column, bad in zip(classes, mask, strict=True) if bad)


def _shown(value: object) -> str:
    # Quote text so that 'abc' or '' stands out from numbers; numbers print plainly (nan, -0.25).
    return repr(value) if isinstance(value, str) else str(value)


def _first(values: np.ndarray) -> str:
    shown = ", ".join(str(value) for value in values[:SHOWN_ROWS])
    return shown + (", ..." if len(values) > SHOWN_ROWS else "")
