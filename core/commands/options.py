"""Command-line options that train, tune and predict share: one definition and one help text each.

Use as `device: Device = "auto"` in a command's signature (typer reads the Annotated metadata).
"""
from __future__ import annotations

from typing import Annotated

import typer

Device = Annotated[str, typer.Option(help="auto | cpu | cuda[:N].")]
Precision = Annotated[str, typer.Option(help="auto (bf16/fp16 on CUDA, fp32 on CPU) | fp32 | bf16 | fp16.")]
Workers = Annotated[int, typer.Option(help="DataLoader worker processes.")]
SkipBadAudio = Annotated[bool, typer.Option(
    help="Drop unreadable/empty/non-finite clips (listed in skipped_audio.csv) instead of stopping.")]
TestSalience = Annotated[int | None, typer.Option(
    help="Salience (1|2) to assume for a test split without a salience column.")]
MaxClipsPerFold = Annotated[int | None, typer.Option(
    help="Use only N clips of each train fold, spread over its classes (quick runs).")]
Progress = Annotated[bool, typer.Option(help="Show progress bars.")]
