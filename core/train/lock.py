"""One training run per output folder (or fold): an exclusive flock on `<folder>/.lock`, held for the run.

The lock file names its holder's PID while held (for the refusal message) and is emptied on release;
a killed run's lock is released by the kernel, so the next run takes it over (the file may still
show the dead PID until then).
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from core.atomic import exclusive_lock
from core.errors import UserError


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold `folder/.lock` for the duration; refuse at once if a live process holds it."""
    folder.mkdir(parents=True, exist_ok=True)

    def busy(holder: str) -> UserError:
        return UserError(f"{folder} is in use by another training run (PID {holder or 'unknown'}); wait for it to "
                         "finish or choose another --out")

    with exclusive_lock(folder / ".lock", wait=False, busy=busy) as handle:
        _write(handle, str(os.getpid()))
        try:
            yield
        finally:
            _write(handle, "")


def _write(handle, text: str) -> None:
    handle.seek(0)
    handle.truncate()
    handle.write(text)
    handle.flush()
