"""Row checks shared by every metadata layout: each bad cell becomes one problem, all reported together.

The layouts (metadata.py: UrbanSound8K official and Kaggle; layouts.py: ESC-50, generic CSV, class
folders) collect problems with these helpers and raise one MetadataError before any work starts.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from core.errors import UserError, format_problems


class MetadataError(UserError):
    """The metadata cannot be used; `problems` lists every problem found (the message shows them)."""

    def __init__(self, header: str, problems: list[str]) -> None:
        super().__init__(format_problems(header, problems))
        self.problems = problems


def read_csv(root: Path, relative: Path, required: tuple[str, ...], problems: list[str],
             layout_name: str) -> pd.DataFrame | None:
    """The CSV as strings (exact cell text for messages); None (with a problem) if unusable."""
    path = root / relative
    if not path.is_file():
        problems.append(f"{relative} is missing: the {layout_name} layout needs it")
        return None
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        problems.append(f"{relative} cannot be read as CSV ({type(error).__name__}: {error}); fix or replace the file")
        return None
    missing = [column for column in required if column not in table.columns]
    if missing:
        problems.append(f"{relative}: missing column(s) {', '.join(missing)} (found: {', '.join(table.columns)}); "
                        f"the file needs {', '.join(required)}")
        return None
    if len(table) == 0:
        problems.append(f"{relative} has a header but no rows; it needs at least one clip")
    return table


def plain_file_names(table: pd.DataFrame, column: str, csv_name: str, problems: list[str]) -> pd.Series:
    """`column` values as plain file names; empty names or names with a folder part become <NA> with a problem."""
    names = table[column].str.strip()
    bad = names.map(lambda name: name in ("", ".", "..") or Path(name).name != name)
    for position, name in names[bad].items():
        problems.append(f"{csv_name} line {line_of(position)}, column {column}: {name!r} is not a plain "
                        "file name; write the audio file's name only (no folder)")
    names = names.where(~bad)
    check_unique(names, csv_name, column, problems)
    return names


def integers(table: pd.DataFrame, column: str, csv_name: str, allowed: tuple[int, ...] | None,
             problems: list[str], hint: str, allow_empty: bool = False) -> pd.Series:
    """`column` as nullable Int64; every cell that is not an allowed integer adds a problem and becomes <NA>."""
    text = table[column].str.strip()
    numbers = pd.to_numeric(text, errors="coerce")
    # float64 holds every integer only up to 2**53: a larger ID read as a float could silently change
    limit = 2 ** 63 - 1 if pd.api.types.is_signed_integer_dtype(numbers) else 2 ** 53
    is_integer = numbers.notna() & np.isfinite(numbers) & (numbers == np.round(numbers))
    representable = is_integer & (numbers.abs() <= limit)
    in_range = representable & (numbers.isin(allowed) if allowed is not None else True)
    empty = text == ""
    for position in table.index[~in_range & ~(empty & allow_empty)]:
        cell = text[position]
        if cell == "":
            what = "is empty"
        elif not is_integer[position]:
            what = f"{cell!r} is not an integer"
        elif not representable[position]:
            what = f"{cell!r} is too large"
        else:
            what = f"{cell!r} is out of range"
        problems.append(f"{csv_name} line {line_of(position)}, column {column}: {what} ({hint}); fix or delete the row")
    return numbers.where(in_range).astype("Int64")


def check_unique(values: pd.Series, csv_name: str, column: str, problems: list[str]) -> None:
    """One problem per repeated value, naming every line it appears on."""
    present = values.dropna()
    repeated = present[present.duplicated(keep=False)]
    for value, group in repeated.groupby(repeated, sort=False):
        lines = ", ".join(str(line_of(position)) for position in group.index)
        problems.append(f"{csv_name}, column {column}: '{value}' appears on lines {lines}; "
                        "each clip must be listed once, delete the extra rows")


def check_files(root: Path, rows: pd.DataFrame, csv_name: str, problems: list[str]) -> None:
    """Every listed audio file must exist; a missing folder is one problem, not one per file."""
    paths = [Path(path) for path in rows["path"]]
    folder_exists: dict[Path, bool] = {}
    missing_in_folder: dict[Path, int] = {}
    for path in paths:
        folder = path.parent
        if folder not in folder_exists:
            folder_exists[folder] = folder.is_dir()
        if not folder_exists[folder]:
            missing_in_folder[folder] = missing_in_folder.get(folder, 0) + 1
        elif not path.is_file():
            problems.append(f"{path.relative_to(root)} (listed in {csv_name}) does not exist; "
                            "restore the file or delete its row")
    for folder, count in missing_in_folder.items():
        problems.append(f"folder {folder.relative_to(root)} does not exist ({count} row(s) of {csv_name} point into "
                        "it); restore the audio folder or point --data at the right data folder")


def line_of(position: int) -> int:
    """CSV line number of a data row (line 1 is the header)."""
    return int(position) + 2
