"""Classify recordings of any length with trained solutions (PyTorch) or an exported model (ONNX).

Each file is decoded once with the one audio loader (mono, resampled to the model's rate). A file no
longer than the model's clip is one window, right zero-padded as in training. A longer file is cut
into clip-length windows every `hop` seconds, plus a last window that ends at the file's end.
Windows of many files are batched together; each batch goes through every fold model of every
solution, the mel spectrogram once per batch for all models that share its settings.

Per window, a solution's probabilities are the mean of its fold models' softmax; several solutions
are combined with the rule of `blend` (weighted mean of row-normalised probabilities, or geomean).
Salience (fusion solutions only): "marginal" averages the probabilities under salience 1 and 2 (the
expectation under an even prior over foreground/background), or a fixed 1 | 2, or per file from a
CSV. A file's probabilities are the mean over its windows ("mean": how much of the recording sounds
like each class) or the per-class maximum ("max": the strongest single window; rows then need not
sum to 1).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from core.data.audio import AudioError, load_signal
from core.errors import UserError
from core.infer.predictors import ModelSpec, check_same_input, onnx_predictor, torch_predictor  # noqa: F401
from core.infer.salience import SaliencePolicy, parse_salience  # noqa: F401
from core.infer.sources import audio_extensions, find_audio  # noqa: F401
from core.infer.windows import cut_window, window_starts  # noqa: F401

AGGREGATES = ("mean", "max")


# ------------------------------------------------------------------------------------- running

@dataclass
class FileResult:
    path: Path
    duration_s: float
    starts_s: np.ndarray            # window start times (s)
    window_probs: np.ndarray        # [windows, classes]
    probs: np.ndarray               # [classes], aggregated

    @property
    def target(self) -> int:
        return int(np.argmax(self.probs))


@dataclass
class Classification:
    files: list[FileResult]
    bad: dict[str, str]             # path -> reason (no row for these)
    clip_seconds: float
    class_names: tuple[str, ...]    # the probabilities' order (from the model)


@dataclass
class _Pending:
    file_index: int
    signal: np.ndarray
    start: int


def classify_files(files: Sequence[Path], spec: ModelSpec, *, hop_seconds: float = 1.0, aggregate: str = "mean",
                   salience: SaliencePolicy = SaliencePolicy("marginal"), batch_size: int = 32,
                   on_progress: Callable[[int], None] | None = None) -> Classification:
    """Decode each file once, classify all windows in batches, aggregate per file (see the module docstring)."""
    if hop_seconds <= 0:
        raise UserError(f"--hop must be positive (seconds between window starts); got {hop_seconds:g}")
    if aggregate not in AGGREGATES:
        raise UserError(f"--aggregate must be one of {', '.join(AGGREGATES)}; got {aggregate!r}")
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1; got {batch_size}")
    clip, rate = spec.num_samples, spec.sample_rate
    hop = max(1, int(round(hop_seconds * rate)))
    window_probs: dict[int, list[np.ndarray]] = {}
    starts: dict[int, list[int]] = {}
    lengths: dict[int, int] = {}
    bad: dict[str, str] = {}
    pending: list[_Pending] = []

    def flush(group: list[_Pending]) -> None:
        # One batch per salience setting: every window of a batch shares its values (files may differ).
        by_values: dict[tuple[int, ...], list[_Pending]] = {}
        for item in group:
            by_values.setdefault(salience.values_for(files[item.file_index]), []).append(item)
        for values, items in by_values.items():
            batch = np.stack([cut_window(item.signal, item.start, clip) for item in items])
            for item, probs in zip(items, spec.predict(batch, values), strict=True):
                window_probs[item.file_index].append(probs)

    for index, path in enumerate(files):
        try:
            signal = load_signal(path, rate)
        except AudioError as error:
            bad[str(path)] = str(error)
            if on_progress:
                on_progress(1)
            continue
        lengths[index] = len(signal)
        starts[index] = window_starts(len(signal), clip, hop)
        window_probs[index] = []
        pending.extend(_Pending(index, signal, start) for start in starts[index])
        while len(pending) >= batch_size:
            flush(pending[:batch_size])
            pending = pending[batch_size:]
        if on_progress:
            on_progress(1)
    if pending:
        flush(pending)
    results = []
    for index in sorted(window_probs):
        probs = np.stack(window_probs[index])
        aggregated = probs.mean(axis=0) if aggregate == "mean" else probs.max(axis=0)
        results.append(FileResult(Path(files[index]), lengths[index] / rate, np.asarray(starts[index]) / rate,
                                  probs, aggregated))
    return Classification(results, bad, clip / rate, spec.class_names)


# ------------------------------------------------------------------------------------- outputs

def file_frame(result: Classification) -> pd.DataFrame:
    """One row per file: file,duration_s,TARGET (class name),<class names...>."""
    names = result.class_names
    rows = [{"file": str(f.path), "duration_s": round(f.duration_s, 6), "TARGET": names[f.target],
             **dict(zip(names, map(float, f.probs), strict=True))} for f in result.files]
    return pd.DataFrame(rows, columns=["file", "duration_s", "TARGET", *names])


def window_frame(result: Classification) -> pd.DataFrame:
    """One row per window: file,start_s,end_s,TARGET (class name),<class names...>."""
    rows, names = [], result.class_names
    for f in result.files:
        for start, probs in zip(f.starts_s, f.window_probs, strict=True):
            rows.append({"file": str(f.path), "start_s": round(float(start), 6),
                         "end_s": round(min(float(start) + result.clip_seconds, f.duration_s)
                                        if f.duration_s > result.clip_seconds else f.duration_s, 6),
                         "TARGET": names[int(np.argmax(probs))], **dict(zip(names, map(float, probs), strict=True))})
    return pd.DataFrame(rows, columns=["file", "start_s", "end_s", "TARGET", *names])


def as_json(result: Classification, top: int = 3) -> dict:
    """For tools: every file with its class probabilities, window count and top classes; the bad files."""
    names = result.class_names
    return {
        "files": [{"file": str(f.path), "duration_s": f.duration_s, "target": names[f.target],
                   "top": [[names[c], float(f.probs[c])] for c in top_classes(f.probs, top)],
                   "probabilities": dict(zip(names, map(float, f.probs), strict=True)), "windows": len(f.starts_s)}
                  for f in result.files],
        "bad": [{"file": path, "reason": reason} for path, reason in result.bad.items()],
    }


def top_classes(probs: np.ndarray, count: int = 3) -> list[int]:
    return [int(c) for c in np.argsort(-probs, kind="stable")[:count]]


def plot_names(files: Iterable[Path], folder: Path) -> Iterator[tuple[Path, Path]]:
    """(file, PNG path) with unique PNG names: <stem>.png, or <stem>-<n>.png when stems repeat."""
    used: set[str] = set()
    for path in files:
        name, number = Path(path).stem, 1
        while name in used:
            number += 1
            name = f"{Path(path).stem}-{number}"
        used.add(name)
        yield Path(path), Path(folder) / f"{name}.png"


def write_timelines(result: Classification, folder: Path) -> list[Path]:
    """A PNG timeline of the class probabilities per file longer than one clip."""
    from core.plots import plot_timeline

    longer = [f for f in result.files if f.duration_s > result.clip_seconds]
    written = []
    for (_, png), f in zip(plot_names([f.path for f in longer], folder), longer, strict=True):
        written.append(plot_timeline(f.starts_s, f.window_probs, result.clip_seconds, f.duration_s, result.class_names,
                                     f"{f.path.name}: class probabilities per {result.clip_seconds:g} s window",
                                     png))
    return written


def estimated_windows(files: Sequence[Path], clip_seconds: float, hop_seconds: float) -> int:
    """Windows the files will give, from their headers (for the progress decision; bad files count 1)."""
    import soundfile

    total = 0
    for path in files:
        try:
            info = soundfile.info(str(path))
            seconds = info.frames / info.samplerate
        except Exception:  # decoding reports the real problem later
            seconds = 0.0
        total += 1 if seconds <= clip_seconds else math.ceil((seconds - clip_seconds) / hop_seconds) + 1
    return total
