"""Salience for fusion models on audio that has none: marginal (both values averaged), fixed 1 | 2, or per file."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from core.errors import UserError
from core.folds import SALIENCE_VALUES


@dataclass(frozen=True)
class SaliencePolicy:
    """How fusion models get a salience for audio that has none (see the module docstring)."""

    kind: str                                   # "marginal" | "fixed" | "per_file"
    value: int | None = None                    # fixed: 1 | 2
    by_file: dict[str, int] = field(default_factory=dict)  # per_file: resolved path or name -> 1 | 2

    def values_for(self, path: Path) -> tuple[int, ...]:
        """The salience values to average over for one file."""
        if self.kind == "marginal":
            return SALIENCE_VALUES
        if self.kind == "fixed":
            return (int(self.value),)
        return (self.by_file[_file_key(path, self.by_file)],)


def _file_key(path: Path, table: dict[str, int]) -> str:
    resolved = str(Path(path).resolve())
    return resolved if resolved in table else Path(path).name


def parse_salience(option: str, files: Sequence[Path]) -> SaliencePolicy:
    """--salience marginal | 1 | 2 | FILE.csv (columns file,salience; file = a path or a file name)."""
    if option == "marginal":
        return SaliencePolicy("marginal")
    allowed = [str(value) for value in SALIENCE_VALUES]
    if option in allowed:
        return SaliencePolicy("fixed", int(option))
    path = Path(option)
    if not path.is_file():
        raise UserError(f"--salience takes marginal, 1, 2 or a CSV file (file,salience); {option!r} is none of them")
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    if not {"file", "salience"} <= set(table.columns):
        raise UserError(f"{path}: the salience CSV needs the columns file,salience (found {', '.join(table.columns)})")
    by_file: dict[str, int] = {}
    for line, (name, value) in enumerate(zip(table["file"], table["salience"], strict=True), start=2):
        if value.strip() not in allowed:
            raise UserError(f"{path} line {line}: salience {value!r} must be 1 (foreground) or 2 (background)")
        candidate = Path(name.strip())
        key = str(candidate.resolve()) if candidate.parent != Path(".") else candidate.name
        by_file[key] = int(value)
    missing = [str(f) for f in files if str(Path(f).resolve()) not in by_file and Path(f).name not in by_file]
    if missing:
        raise UserError(f"{path} gives no salience for {len(missing)} file(s) (first: {', '.join(missing[:5])}); "
                        "add them, or use --salience marginal | 1 | 2")
    return SaliencePolicy("per_file", by_file=by_file)
