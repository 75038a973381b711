"""One training run per output folder: a lock file holding the owner's PID (stale locks are taken over)."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from core.errors import UserError


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold `folder/.lock` for the duration; refuse if a live process holds it."""
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / ".lock"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            owner = _read_pid(lock)
            if owner is not None and owner != os.getpid() and _alive(owner):
                raise UserError(f"{folder} is in use by another training run (PID {owner}); wait for it to "
                                f"finish or choose another --out") from None
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()  # stale: its owner is gone
            continue
        with os.fdopen(fd, "w") as handle:
            handle.write(str(os.getpid()))
        break
    else:
        raise UserError(f"could not take the lock {lock}; remove it if no training run is using {folder}")
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            if _read_pid(lock) == os.getpid():
                lock.unlink()


def _read_pid(lock: Path) -> int | None:
    try:
        return int(lock.read_text().strip() or "0") or None
    except (FileNotFoundError, ValueError):
        return None
