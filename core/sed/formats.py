"""The one owner of SED file formats, written and read here only.

- Event list (DCASE): a TSV with header `filename onset offset event_label`, seconds.
- Score tables (sed_scores_eval): one TSV per audio file, `<audio id>.tsv`, columns `onset offset <classes>`;
  the audio id is the file name without its extension.
- URBAN-SED annotations: `annotations/<split>/<audio id>.txt`, lines `onset offset label`, no header, tabs.
- Reference given as a DIR: URBAN-SED's layout (an `annotations` folder, or the folder of the .txt files
  themselves) or a folder written by `soundscapes` (its `events.tsv`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from core.atomic import atomic_open
from core.errors import UserError

EVENT_COLUMNS = ["filename", "onset", "offset", "event_label"]
EVENT_LIST_NAME = "events.tsv"  # the event list `soundscapes` writes beside the audio


def audio_id(filename: str) -> str:
    """The id an event list's `filename` and a score file share: the file name without folder and extension."""
    return Path(str(filename)).stem


def write_event_list(events: pd.DataFrame, path: Path) -> None:
    """An event list (columns EVENT_COLUMNS) as a DCASE TSV, atomically."""
    _write_tsv(events[EVENT_COLUMNS], path)


def write_score_table(table: pd.DataFrame, folder: Path, audio: str) -> Path:
    """One file's scores (onset, offset, classes...) as `<folder>/<audio id>.tsv`."""
    path = Path(folder) / f"{audio_id(audio)}.tsv"
    _write_tsv(table, path)
    return path


def score_table_classes(folder: Path, files: list[str]) -> list[str]:
    """The class columns (`onset offset <classes>`) of the score table of the first of `files` in `folder`;
    none when that table is absent (psds_metrics names the missing tables)."""
    path = Path(folder) / f"{audio_id(files[0])}.tsv" if files else None
    if path is None or not path.is_file():
        return []
    header = pd.read_csv(path, sep="\t", nrows=0).columns
    return [str(column) for column in header if column not in ("onset", "offset")]


def read_event_list(path: Path) -> pd.DataFrame:
    """A DCASE event list TSV (header filename, onset, offset, event_label); rows without an event are kept out."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such event list (a TSV with columns {' '.join(EVENT_COLUMNS)})")
    table = pd.read_csv(path, sep="\t", dtype={"filename": str, "event_label": str})
    missing = [column for column in EVENT_COLUMNS if column not in table.columns]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)}; an event list has the header "
                        f"{' '.join(EVENT_COLUMNS)} (tab-separated)")
    table = table[EVENT_COLUMNS].dropna(subset=["event_label"])
    _check_times(table, path)
    return table.reset_index(drop=True)


def read_annotation_txt(path: Path) -> pd.DataFrame:
    """One URBAN-SED annotation file (onset offset label, no header) as event-list rows of `<id>.wav`."""
    try:
        table = pd.read_csv(path, sep=r"\s+", header=None, names=["onset", "offset", "event_label"],
                            dtype={"event_label": str})
    except pd.errors.EmptyDataError:
        table = pd.DataFrame(columns=["onset", "offset", "event_label"])
    table.insert(0, "filename", f"{Path(path).stem}.wav")
    _check_times(table, path)
    return table


def read_reference(source: Path) -> tuple[pd.DataFrame, list[str]]:
    """(reference events, every audio file name the reference covers, also those without events)."""
    source = Path(source)
    if source.is_file():
        table = read_event_list(source)
        return table, sorted(set(table["filename"]))
    if not source.is_dir():
        raise UserError(f"--reference {source}: no such file or folder")
    if (source / EVENT_LIST_NAME).is_file():
        table = read_event_list(source / EVENT_LIST_NAME)
        audio = sorted(path.name for path in (source / "audio").glob("*.wav")) if (source / "audio").is_dir() else []
        return table, sorted(set(audio) | set(table["filename"]))
    folder = source / "annotations" if (source / "annotations").is_dir() else source
    texts = sorted(folder.rglob("*.txt"))
    if not texts:
        raise UserError(f"--reference {source}: found neither {EVENT_LIST_NAME} nor URBAN-SED annotation files "
                        "(annotations/<split>/*.txt)")
    parts = [read_annotation_txt(path) for path in texts]
    names = [f"{path.stem}.wav" for path in texts]
    return pd.concat(parts, ignore_index=True)[EVENT_COLUMNS], names


def _check_times(table: pd.DataFrame, path: Path) -> None:
    onsets = pd.to_numeric(table["onset"], errors="coerce")
    offsets = pd.to_numeric(table["offset"], errors="coerce")
    bad = np.flatnonzero(onsets.isna().to_numpy() | offsets.isna().to_numpy() | (offsets < onsets).to_numpy())
    if len(bad):
        raise UserError(f"{path}: row {int(bad[0]) + 1} has no valid onset <= offset (seconds); "
                        f"{len(bad)} such row(s)")
    table["onset"], table["offset"] = onsets.astype(float), offsets.astype(float)


def _write_tsv(frame: pd.DataFrame, path: Path) -> None:
    with atomic_open(path, "w", newline="") as handle:
        frame.to_csv(handle, sep="\t", index=False, float_format="%.6f")
