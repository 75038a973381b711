"""One training run per output folder (or fold): an exclusive flock on `<folder>/.lock`, held for the run.

The lock file names its holder's PID while held (for the refusal message) and is removed on release
(while still locked; a process that opened the old file notices the removal and retries). A killed
run's flock is released by the kernel, so the next run takes it over; its file, naming the dead PID,
stays until then.

A file system without locks (NFS without a lock daemon) is refused with one line: without the lock two
runs could train the same fold into the same folder, so going on unlocked is not an option.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from core.atomic import NO_LOCK_ERRNOS, exclusive_lock
from core.errors import UserError


class FolderBusy(UserError):
    """Another live training run holds the folder's lock."""


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold `folder/.lock` for the duration; refuse at once if a live process holds it (FolderBusy) or if
    the file system offers no locks (UserError)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ".lock"

    def busy(holder: str) -> FolderBusy:
        return FolderBusy(f"{folder} is in use by another training run (PID {holder or 'unknown'}); wait for it to "
                          "finish or choose another --out")

    for _ in range(100):  # another run may remove the file between our open and our flock: take the new one
        with contextlib.ExitStack() as held:
            try:
                handle = held.enter_context(exclusive_lock(path, wait=False, busy=busy))
            except OSError as error:  # only taking the lock: an OSError of the run itself propagates unchanged
                if error.errno in NO_LOCK_ERRNOS:
                    raise _no_locks(path, error) from error
                raise
            if not _is_current(path, handle):
                continue
            _write(handle, str(os.getpid()))
            try:
                yield
            finally:
                path.unlink(missing_ok=True)  # still locked: nobody can hold the removed file's lock
            return
    raise FolderBusy(f"could not take the lock {path}; remove it if no training run is using {folder}")


def _no_locks(path: Path, error: OSError) -> UserError:
    return UserError(
        f"cannot lock {path}: its file system offers no file locks ({error.strerror or error}), and training needs "
        "one so that two runs never train the same fold into one folder; point --out at a local disk (one per "
        "machine, each with its own --folds) and copy the per-fold files into one folder afterwards (docs/gpu.md), "
        "or mount the share with its lock daemon running")


def _is_current(path: Path, handle) -> bool:
    """Whether the locked open file is still the one at `path` (not removed by its last holder)."""
    try:
        return os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
    except FileNotFoundError:
        return False


def _write(handle, text: str) -> None:
    handle.seek(0)
    handle.truncate()
    handle.write(text)
    handle.flush()
