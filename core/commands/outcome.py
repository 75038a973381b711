"""How a command over many audio files ends (classify, detect): the files it could not read, what it
wrote, and exit code 2 for unreadable files unless --skip-bad-audio."""
from __future__ import annotations

import sys

from rich.console import Console
from rich.markup import escape


def finish(console: Console, bad: dict, total: int, written: list[str], failed: str, missing: str,
           skip_bad_audio: bool) -> None:
    """Print one line per unreadable file (`failed` names the action), what was written, and the count of
    unreadable files (`missing`: what they did not get); exit 2 for unreadable files unless skipped."""
    for path, reason in bad.items():
        console.print(f"[bold red]{failed}[/] {escape(str(path))}: {escape(str(reason))}", highlight=False)
    if written:
        console.print("wrote " + ", ".join(written), highlight=False, markup=False)  # paths, not markup
    if bad:
        console.print(f"{len(bad)} of {total} file(s) could not be decoded and got {missing}", highlight=False)
        if not skip_bad_audio:
            sys.exit(2)
