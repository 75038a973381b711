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


def positive(value: float | None) -> float | None:
    """Callback: a finite number > 0 (or the option left out)."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise typer.BadParameter(f"{value:g} is not a finite number > 0.")
    return value


def fold_numbers(text: str, allowed: tuple[int, ...] | None) -> tuple[int, ...]:
    """'1,3' -> (1, 3), each fold in `allowed` (None: any fold number >= 1); a BadParameter names the problem."""
    try:
        folds = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise typer.BadParameter(f"takes comma-separated fold numbers like 1,3; got {text!r}.") from None
    if allowed is None:
        if not folds or min(folds) < 1:
            raise typer.BadParameter(f"fold numbers are integers >= 1; got {text!r}.")
        return folds
    outside = [fold for fold in folds if fold not in allowed]
    if not folds or outside:
        from core.folds import fold_span

        raise typer.BadParameter(f"folds must lie in {fold_span(allowed)}; got {text!r}.")
    return folds


def any_fold_list(value: str | None) -> str | None:
    """Callback: fold numbers >= 1, any data set's (the checkpoints present decide which exist: a fold
    without one is refused by name when the models load)."""
    if value is not None:
        fold_numbers(value, None)
    return value


def kaggle_fold_list(value: str | None) -> str | None:
    """Callback: a fold list within the kaggle protocol's train folds 1-8."""
    from core.folds import protocol_folds

    if value is not None:
        fold_numbers(value, protocol_folds("kaggle"))
    return value


# `train --folds`, `--protocol` and `--data` are parsed in the order they are typed, then the rest:
# each one's callback checks the fold list once the other two are known (the last one parsed does it).
_UNPARSED = object()


def train_fold_list(context: typer.Context, value: str | None) -> str | None:
    """Callback of `train --folds`: fold numbers >= 1, within the protocol's folds where they are known
    before the data is read (us8k-10fold: 1-10; the demo set: 1-8). Another data set's folds are
    checked once it is read (check_train_folds)."""
    if value is not None:
        fold_numbers(value, None)
        _check_known_folds(value, context.params.get("protocol"), context.params.get("data", _UNPARSED))
    return value


def train_protocol(context: typer.Context, value: str) -> str:
    """Callback of `train --protocol`: a known protocol, and --folds (if parsed first) within its folds."""
    from core.folds import PROTOCOLS

    if value not in PROTOCOLS:
        raise typer.BadParameter(f"must be one of {', '.join(PROTOCOLS)}; got {value!r}.")
    _check_known_folds(context.params.get("folds"), value, context.params.get("data", _UNPARSED))
    return value


def train_data(context: typer.Context, value: Path | None) -> Path | None:
    """Callback of `train --data`: without it (the demo set), --folds (if parsed first) within the demo's folds."""
    _check_known_folds(context.params.get("folds"), context.params.get("protocol"), value)
    return value


def _check_known_folds(text: str | None, protocol: str | None, data: object) -> None:
    from core.folds import TRAIN_FOLDS, fold_span, protocol_folds

    if text is None or protocol is None or data is _UNPARSED:
        return
    if protocol == "us8k-10fold":
        allowed, where = protocol_folds(protocol), "trains folds"
    elif data is None:  # the demo set is in UrbanSound8K's Kaggle layout: folds 1-8 beside its test split
        allowed, where = TRAIN_FOLDS, "on the demo set trains folds"
    else:
        return  # the data's folds: check_train_folds, once it is read
    try:
        fold_numbers(text, allowed)
    except typer.BadParameter as error:
        raise typer.BadParameter(f"{error.message.rstrip('.')}: --protocol {protocol} {where} {fold_span(allowed)}.",
                                 param_hint="'--folds'") from None


def tune_fold_list(context: typer.Context, value: str | None) -> str | None:
    """Callback of `tune --folds`: fold numbers >= 1; on the demo set (no --data, if parsed first) within
    its folds 1-8. Another data set's folds are checked once it is read (check_train_folds)."""
    if value is not None:
        fold_numbers(value, None)
        _check_demo_tune_folds(value, context.params.get("data", _UNPARSED))
    return value


def tune_data(context: typer.Context, value: Path | None) -> Path | None:
    """Callback of `tune --data`: without it (the demo set), --folds (if parsed first) within the demo's folds."""
    _check_demo_tune_folds(context.params.get("folds"), value)
    return value


def _check_demo_tune_folds(text: str | None, data: object) -> None:
    from core.folds import TRAIN_FOLDS, fold_span

    if text is None or data is not None:  # unparsed, or a data set's folds: checked once it is read
        return
    try:
        fold_numbers(text, TRAIN_FOLDS)
    except typer.BadParameter as error:
        raise typer.BadParameter(f"{error.message.rstrip('.')}: tune on the demo set validates on folds "
                                 f"{fold_span(TRAIN_FOLDS)}.", param_hint="'--folds'") from None


def check_train_folds(folds: tuple[int, ...] | None, protocol: str, allowed: tuple[int, ...], data: Path,
                      trains: str | None = None) -> None:
    """`train --folds` against the folds `protocol` trains on the data just read (before any work starts);
    `trains` words the folds' role for another command (default: "--protocol P trains")."""
    outside = [fold for fold in folds or () if fold not in allowed]
    if outside:
        from core.errors import UserError
        from core.folds import fold_span

        raise UserError(f"--folds {','.join(map(str, folds))}: fold(s) {','.join(map(str, outside))} outside the "
                        f"folds {trains or f'--protocol {protocol} trains'} on {data}: "
                        f"{fold_span(allowed) if allowed else 'none'}.")


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
