"""Atomic file writes: a final name only ever holds a complete file (temp + fsync + rename)."""
from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pandas as pd

from core.errors import UserError

TEMP_SUFFIX = ".tmp"  # every temp file is hidden (".<name>.<random>.tmp"): no glob of final names matches it
# Failures of the disk or folder rather than of the program: reported as a UserError naming the file.
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG})
# flock unsupported by the file system (NFS without a lock daemon: ENOLCK; some FUSE mounts: EOPNOTSUPP)
NO_LOCK_ERRNOS = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP})


class OutputWriteError(UserError, OSError):
    """An output file could not be written (disk full, read-only, no permission); still an OSError."""


class UnwritableFolder(UserError, PermissionError):
    """An output folder cannot be created or written; raised before any work starts."""


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """Open a temp file beside `path`; on success fsync it and rename it over `path`.

    On any exception the temp file is removed and `path` is left untouched.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    except OSError as error:
        _raise_storage_error(error, path)
        raise
    os.close(fd)
    try:
        with open(tmp_name, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
        os.replace(tmp_name, path)
        fsync_dir(path.parent)
    except BaseException as error:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        if isinstance(error, OSError) and not isinstance(error, UserError):
            _raise_storage_error(error, path)
        raise


def publish(staged: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Rename the complete file `staged` (written atomically beside it) over `path`, durably."""
    path = Path(path)
    try:
        os.replace(staged, path)
        fsync_dir(path.parent)
    except OSError as error:
        _raise_storage_error(error, path)
        raise
    return path


def _raise_storage_error(error: OSError, path: Path) -> None:
    """Raise a disk/permission failure as an OutputWriteError naming `path`; return for any other OSError."""
    if error.errno not in STORAGE_ERRNOS:
        return
    wrapped = OutputWriteError(
        f"cannot write {path}: {error.strerror or error} (errno {errno.errorcode.get(error.errno, error.errno)}). "
        f"Nothing partial was left and an earlier {path.name}, if any, is unchanged. Free disk space or fix "
        "the folder's permissions (or choose another output folder), then rerun the same command.")
    wrapped.errno = error.errno  # only errno: with strerror/filename set, OSError would print its own text
    raise wrapped from error


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(directory: Path) -> None:
    """Flush a folder's entries: a rename into it is durable only then (best effort: some file systems refuse)."""
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

    # Serialise in memory first: torch reports a failed file write (disk full) as an opaque RuntimeError.
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with atomic_open(path, "wb") as handle:
        handle.write(buffer.getbuffer())
    return Path(path)


def save_figure(figure: Any, path: str | os.PathLike, dpi: int = 150, metadata: dict[str, str] | None = None) -> Path:
    """Save a matplotlib figure as PNG atomically; `metadata` becomes PNG text chunks."""
    with atomic_open(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=dpi, bbox_inches="tight", metadata=metadata)
    return Path(path)


def check_writable(directory: str | os.PathLike) -> None:
    """Fail fast (before hours of work) if `directory` cannot be created or written."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=directory, prefix=".write-probe-", suffix=TEMP_SUFFIX)
        try:
            os.write(fd, b"probe")  # creating a file can succeed on a full disk; writing data cannot
            os.fsync(fd)
        finally:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):  # the folder's owner may clean temp files
                os.unlink(probe)
    except OSError as error:
        raise UnwritableFolder(
            f"cannot write to output folder {directory}: {error.strerror or error}. Nothing was started; "
            "choose another folder (e.g. --out), fix its permissions or free disk space."
        ) from error


@contextlib.contextmanager
def exclusive_lock(lock_path: str | os.PathLike, *, wait: bool = True,
                   busy: Callable[[str], Exception] | None = None) -> Iterator[IO]:
    """Hold an exclusive advisory lock (flock) on `lock_path`; yields the open lock file.

    wait=True: concurrent processes wait for one another. wait=False: if another process holds it,
    raise busy(text of the lock file). The kernel drops the lock of a process that dies, so a lock
    is never stale, whatever the file still says.
    """
    import fcntl

    with open(lock_path, "a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            handle.seek(0)
            raise (busy or (lambda text: UserError(f"{lock_path} is locked by another process")))(
                handle.read().strip()) from None
        try:
            yield handle
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
