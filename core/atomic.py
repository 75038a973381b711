"""Atomic file writes: a final name only ever holds a complete file (temp + fsync + rename)."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator

import pandas as pd


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """Open a temp file beside `path`; on success fsync it and rename it over `path`.

    On any exception the temp file is removed and `path` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with open(tmp_name, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def _fsync_dir(directory: Path) -> None:
    # The rename itself is durable only once the directory entry is flushed.
    with contextlib.suppress(OSError):
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def write_csv(frame: pd.DataFrame, path: str | os.PathLike, float_format: str | None = None) -> Path:
    """Write a DataFrame as CSV (no index) atomically; return the path."""
    with atomic_open(path, "w", newline="") as handle:
        frame.to_csv(handle, index=False, float_format=float_format)
    return Path(path)


def write_json(obj: Any, path: str | os.PathLike) -> Path:
    """Write an object as indented JSON atomically; return the path."""
    with atomic_open(path, "w") as handle:
        json.dump(obj, handle, indent=2, sort_keys=False)
        handle.write("\n")
    return Path(path)


def write_text(text: str, path: str | os.PathLike) -> Path:
    """Write text atomically; return the path."""
    with atomic_open(path, "w") as handle:
        handle.write(text)
    return Path(path)


def save_torch(obj: Any, path: str | os.PathLike) -> Path:
    """torch.save atomically (a checkpoint is either the old one or the complete new one)."""
    import torch

    with atomic_open(path, "wb") as handle:
        torch.save(obj, handle)
    return Path(path)


def save_figure(figure: Any, path: str | os.PathLike, dpi: int = 150) -> Path:
    """Save a matplotlib figure as PNG atomically."""
    with atomic_open(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=dpi, bbox_inches="tight")
    return Path(path)


def check_writable(directory: str | os.PathLike) -> None:
    """Fail fast (before hours of work) if `directory` cannot be created or written."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-probe-"):
            pass
    except OSError as error:
        raise PermissionError(
            f"cannot write to output folder {directory}: {error.strerror or error}. "
            "Choose another folder with --out or fix its permissions."
        ) from error
