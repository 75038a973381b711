"""User-facing errors: the CLI prints them as one clear message (no traceback) and exits non-zero."""
from __future__ import annotations


class UserError(Exception):
    """Bad input or a refused action; the message names the file/row/column and what to do."""

    exit_code = 2


def format_problems(header: str, problems: list[str], limit: int = 50) -> str:
    """One message listing every problem (the first `limit`, then a count of the rest)."""
    lines = [header] + [f"  - {problem}" for problem in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"  ... and {len(problems) - limit} more")
    return "\n".join(lines)
