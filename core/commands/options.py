"""Command-line options that train, tune and predict share: one definition and one help text each.

Use as `device: Device = "auto"` in a command's signature (typer reads the Annotated metadata).
"""
from __future__ import annotations

from typing import Annotated

import typer

Device = Annotated[str, typer.Option(help="auto | cpu | cuda[:N].")]
Precision = Annotated[str, typer.Option(help="auto (bf16/fp16 on CUDA, fp32 on CPU) | fp32 | bf16 | fp16.")]
def _check_workers(value: str) -> str:
    """--workers is auto or a count >= 0, checked where it enters."""
    if value != "auto" and not value.isdigit():
        raise typer.BadParameter(f"use auto or a number of processes >= 0, got {value!r}")
    return value


def workers_count(value: str) -> int | None:
    """The checked --workers value as TrainOptions holds it (None: auto, resolved with the device)."""
    return None if value == "auto" else int(value)


Workers = Annotated[str, typer.Option(callback=_check_workers, help=(
    "DataLoader worker processes: auto (on CUDA min(8, CPUs - 1), with pinned memory and prefetch; on CPU 0) "
    "| N (0: in this process)."))]
SkipBadAudio = Annotated[bool, typer.Option(
    help="Drop unreadable/empty/non-finite clips (listed in skipped_audio.csv) instead of stopping.")]
TestSalience = Annotated[int | None, typer.Option(
    help="Salience (1|2) to assume for a test split without a salience column.")]
MaxClipsPerFold = Annotated[int | None, typer.Option(
    help="Use only N clips of each train fold, spread over its classes (quick runs).")]
Progress = Annotated[bool, typer.Option(help="Show progress bars.")]
