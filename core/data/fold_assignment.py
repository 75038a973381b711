"""Folds for data sets that give none: a stratified, grouped split with a fixed seed, stored once.

`assign_folds` puts every group (the clips of one recording, or one clip when groups are unknown)
whole into one fold, choosing for each group the fold that so far holds the fewest clips of its
classes (ties: the smaller fold, then the lower number). Groups are placed largest first, in an
order shuffled by the seed, so for singleton groups each class's fold counts differ by at most 1.

`stored_or_assigned_folds` owns the folds file (`folds.csv`: file,group,fold): it reuses the stored
assignment when the data still lists the same files and groups, refuses a stale one (listing what
changed), and otherwise assigns and writes it atomically, so every later run uses the same folds.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from core.atomic import write_csv
from core.data.checks import MetadataError
from core.errors import UserError

DEFAULT_N_FOLDS = 5
FOLD_SEED = 0
FOLDS_FILE_NAME = "folds.csv"
FOLDS_COLUMNS = ["file", "group", "fold"]
SHOWN_FILES = 5


def assign_folds(labels: Sequence[int], groups: Sequence[str], n_folds: int, seed: int = FOLD_SEED) -> np.ndarray:
    """Fold numbers 1..n_folds (int64, one per clip): stratified by label, never splitting a group.

    The result depends only on the (label, group) pairs and the seed, not on the order of the clips.
    """
    if n_folds < 2:
        raise UserError(f"--n-folds must be at least 2 (cross-validation needs a fold to hold out); got {n_folds}")
    frame = pd.DataFrame({"label": np.asarray(labels, dtype=np.int64), "group": [str(group) for group in groups]})
    if frame["group"].nunique() < n_folds:
        raise UserError(f"{n_folds} folds need at least {n_folds} groups (recordings); the data has "
                        f"{frame['group'].nunique()}. Pass a smaller --n-folds.")
    counts = pd.crosstab(frame["group"], frame["label"]).sort_index()  # groups sorted: order-independent
    class_counts = counts.to_numpy(dtype=np.int64)
    sizes = class_counts.sum(axis=1)
    shuffled = np.random.default_rng(seed).permutation(len(counts))
    order = shuffled[np.argsort(-sizes[shuffled], kind="stable")]  # largest groups first, ties in seeded order
    fold_class = np.zeros((n_folds, class_counts.shape[1]), dtype=np.int64)
    fold_size = np.zeros(n_folds, dtype=np.int64)
    fold_of_group = np.zeros(len(counts), dtype=np.int64)
    for group in order:
        present = class_counts[group] > 0
        crowding = fold_class[:, present] @ class_counts[group, present]  # this group's classes already there
        fold = int(np.lexsort((np.arange(n_folds), fold_size, crowding))[0])
        fold_of_group[group] = fold
        fold_class[fold] += class_counts[group]
        fold_size[fold] += sizes[group]
    fold_by_name = dict(zip(counts.index, fold_of_group + 1, strict=True))
    return frame["group"].map(fold_by_name).to_numpy(dtype=np.int64)


def groups_from_pattern(files: pd.Series, pattern: str, problems: list[str]) -> pd.Series:
    """Each file's group from `pattern` searched in its name: the first capture group, else the whole match.

    A name the pattern does not match adds a problem (and gets <NA>).
    """
    try:
        compiled = re.compile(pattern)
    except re.error as error:
        raise UserError(f"--group-pattern {pattern!r} is not a valid regular expression ({error})") from error
    groups = []
    for file in files:
        match = compiled.search(Path(file).name)
        if match is None:
            problems.append(f"{file}: its name does not match --group-pattern {pattern!r}; fix the pattern "
                            "(it is searched in the file name) or rename the file")
            groups.append(pd.NA)
        else:
            groups.append(match.group(1) if compiled.groups else match.group(0))
    return pd.Series(groups, index=files.index, dtype=object)


def stored_or_assigned_folds(files: pd.Series, labels: pd.Series, groups: pd.Series, n_folds: int | None,
                             folds_file: Path | None, store: bool = True) -> tuple[np.ndarray, pd.DataFrame | None]:
    """The folds of `files` (unique relative names): from `folds_file` if it exists and still matches, else assigned.

    `groups`: <NA> where unknown (the clip is its own group). Returns the folds and, for a new
    assignment, its table (file,group,fold), which is written to `folds_file` (atomically) when one is
    given and `store`; else the caller stores it later with `store_folds` (once its other checks passed).
    `n_folds` None means DEFAULT_N_FOLDS for a new assignment and the stored count otherwise. Raises
    MetadataError when the stored folds no longer match the data.
    """
    known_groups = groups.where(groups.notna(), "file:" + files.astype(str)).astype(str)
    if folds_file is not None and Path(folds_file).is_file():
        return _stored_folds(files, known_groups, n_folds, Path(folds_file)), None
    folds = assign_folds(labels.to_numpy(), known_groups.to_list(), n_folds or DEFAULT_N_FOLDS)
    table = pd.DataFrame({"file": files.to_numpy(), "group": known_groups.to_numpy(), "fold": folds})
    if folds_file is not None and store:
        store_folds(table, folds_file)
    return folds, table


def store_folds(table: pd.DataFrame, folds_file: Path) -> None:
    """Write a new assignment (file,group,fold) to `folds_file` atomically; one stored there already must be it."""
    folds_file = Path(folds_file)
    if not folds_file.is_file():
        write_csv(table[FOLDS_COLUMNS], folds_file)
        return
    stored = _stored_folds(table["file"], table["group"].astype(str), None, folds_file)
    moved = table["file"][stored != table["fold"].to_numpy()].tolist()
    if moved:
        raise MetadataError(f"{folds_file} holds other folds than this run's assignment; read the data with that "
                            "file (train does), or delete it to keep the new folds:",
                            [f"{len(moved)} file(s) in another fold (first: {', '.join(moved[:SHOWN_FILES])})"])


def _stored_folds(files: pd.Series, groups: pd.Series, n_folds: int | None, folds_file: Path) -> np.ndarray:
    """The folds stored in `folds_file` for `files`; MetadataError listing every difference from the data."""
    header = (f"the folds stored in {folds_file} no longer match the data; delete the file to assign folds "
              "afresh (results trained on the old folds are then not comparable), or restore the data:")
    try:
        stored = pd.read_csv(folds_file, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise MetadataError(header, [f"it cannot be read as CSV ({type(error).__name__}: {error})"]) from error
    if list(stored.columns) != FOLDS_COLUMNS:
        raise MetadataError(header, [f"its columns are {', '.join(stored.columns)}; expected "
                                     f"{', '.join(FOLDS_COLUMNS)}"])
    stored_folds = pd.to_numeric(stored["fold"], errors="coerce")
    problems = []
    if stored_folds.isna().any() or (stored_folds < 1).any():
        problems.append("its fold column holds cells that are not fold numbers 1, 2, ...")
    fold_by_file = dict(zip(stored["file"], stored_folds, strict=True))
    group_by_file = dict(zip(stored["file"], stored["group"], strict=True))
    new = [file for file in files if file not in fold_by_file]
    gone = sorted(set(fold_by_file) - set(files))
    regrouped = [file for file, group in zip(files, groups, strict=True)
                 if file in group_by_file and group_by_file[file] != group]
    for count_files, what in ((new, "are new since it was written"), (gone, "it lists are gone"),
                              (regrouped, "changed group (another group column or --group-pattern?)")):
        if count_files:
            problems.append(f"{len(count_files)} file(s) {what} (first: {', '.join(count_files[:SHOWN_FILES])})")
    stored_count = int(stored_folds.max()) if stored_folds.notna().any() else 0
    if n_folds is not None and n_folds != stored_count:
        problems.append(f"it holds {stored_count} folds; --n-folds asks for {n_folds}")
    if problems:
        raise MetadataError(header, problems)
    return files.map(fold_by_file).to_numpy(dtype=np.int64)
