"""Command-line options that several commands share, and the domain checks every option gets at the door.

Use as `device: Device = "auto"` in a command's signature (typer reads the Annotated metadata). A value
outside an option's domain is a usage error (exit 2, one line) before the command body runs, so the code
below trusts what it receives. typer's `min=`/`max=` include their bounds; strict bounds use callbacks.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer

SEED_MAX = 2 ** 31 - 1  # numpy's legacy seeding takes < 2**32; leaves room for per-epoch / per-trial offsets
OPSET_MIN, OPSET_MAX = 18, 23  # the dynamo exporter writes opset 18 and up; torch 2.14's ONNX_MAX_OPSET is 23
ANY_FOLD = tuple(range(1, 11))  # UrbanSound8K's folds: the domain of a fold list when no protocol narrows it


def positive(value: float | None) -> float | None:
    """Callback: a finite number > 0 (or the option left out)."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise typer.BadParameter(f"{value:g} is not a finite number > 0.")
    return value


def fold_numbers(text: str, allowed: tuple[int, ...]) -> tuple[int, ...]:
    """'1,3' -> (1, 3), each fold in `allowed`; a BadParameter names the problem."""
    try:
        folds = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise typer.BadParameter(f"takes comma-separated fold numbers like 1,3; got {text!r}.") from None
    outside = [fold for fold in folds if fold not in allowed]
    if not folds or outside:
        raise typer.BadParameter(f"folds must lie in {allowed[0]}-{allowed[-1]}; got {text!r}.")
    return folds


def any_fold_list(value: str | None) -> str | None:
    """Callback: a fold list within UrbanSound8K's folds 1-10."""
    if value is not None:
        fold_numbers(value, ANY_FOLD)
    return value


def kaggle_fold_list(value: str | None) -> str | None:
    """Callback: a fold list within the kaggle protocol's train folds 1-8."""
    from core.folds import protocol_folds

    if value is not None:
        fold_numbers(value, protocol_folds("kaggle"))
    return value


def train_fold_list(context: typer.Context, value: str | None) -> str | None:
    """Callback of `train --folds`: within the protocol's folds once --protocol is known (see train_protocol)."""
    if value is not None:
        fold_numbers(value, ANY_FOLD)
        protocol = context.params.get("protocol")
        if protocol is not None:
            _check_protocol_folds(value, protocol)
    return value


def train_protocol(context: typer.Context, value: str) -> str:
    """Callback of `train --protocol`: a known protocol, and --folds (if parsed first) within its folds."""
    from core.folds import PROTOCOLS

    if value not in PROTOCOLS:
        raise typer.BadParameter(f"must be one of {', '.join(PROTOCOLS)}; got {value!r}.")
    folds = context.params.get("folds")
    if folds is not None:
        _check_protocol_folds(folds, value)
    return value


def _check_protocol_folds(text: str, protocol: str) -> None:
    from core.folds import protocol_folds

    if protocol == "kfold":  # the data's folds: checked once the data is read (core/folds.py fold_roles)
        return

    allowed = protocol_folds(protocol)
    try:
        fold_numbers(text, allowed)
    except typer.BadParameter as error:
        raise typer.BadParameter(f"{error.message.rstrip('.')}: --protocol {protocol} trains folds "
                                 f"{allowed[0]}-{allowed[-1]}.",
                                 param_hint="'--folds'") from None


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
    min=1, max=2, help="Salience (1|2) to assume for a test split without a salience column.")]
MaxClipsPerFold = Annotated[int | None, typer.Option(
    min=1, help="Use only N clips of each train fold, spread over its classes (quick runs).")]
Progress = Annotated[bool, typer.Option(help="Show progress bars.")]
CacheDir = Annotated[Path | None, typer.Option(
    help="Folder of the decoded-audio cache; may be shared by machines (NFS) [default: $US8K_CACHE_DIR, "
         "else <repo>/cache].")]
