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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from core import CLASS_NAMES
from core.data.audio import AudioError, fit_length, load_signal
from core.errors import UserError
from core.folds import SALIENCE_VALUES

AGGREGATES = ("mean", "max")
EXTRA_EXTENSIONS = {"aif", "aifc", "oga", "opus", "mp3"}  # spellings soundfile reads beside its format names


@dataclass(frozen=True)
class SaliencePolicy:
    """How fusion models get a salience for audio that has none (see the module docstring)."""

    kind: str                                   # "marginal" | "fixed" | "per_file"
    value: int | None = None                    # fixed: 1 | 2
    by_file: dict[str, int] = field(default_factory=dict)  # per_file: resolved path or name -> 1 | 2

    def values_for(self, path: Path) -> tuple[int, ...]:
        """The salience values to average over for one file."""
        if self.kind == "marginal":
            return SALIENCE_VALUES
        if self.kind == "fixed":
            return (int(self.value),)
        return (self.by_file[_file_key(path, self.by_file)],)


def _file_key(path: Path, table: dict[str, int]) -> str:
    resolved = str(Path(path).resolve())
    return resolved if resolved in table else Path(path).name


def parse_salience(option: str, files: Sequence[Path]) -> SaliencePolicy:
    """--salience marginal | 1 | 2 | FILE.csv (columns file,salience; file = a path or a file name)."""
    if option == "marginal":
        return SaliencePolicy("marginal")
    allowed = [str(value) for value in SALIENCE_VALUES]
    if option in allowed:
        return SaliencePolicy("fixed", int(option))
    path = Path(option)
    if not path.is_file():
        raise UserError(f"--salience takes marginal, 1, 2 or a CSV file (file,salience); {option!r} is none of them")
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    if not {"file", "salience"} <= set(table.columns):
        raise UserError(f"{path}: the salience CSV needs the columns file,salience (found {', '.join(table.columns)})")
    by_file: dict[str, int] = {}
    for line, (name, value) in enumerate(zip(table["file"], table["salience"], strict=True), start=2):
        if value.strip() not in allowed:
            raise UserError(f"{path} line {line}: salience {value!r} must be 1 (foreground) or 2 (background)")
        candidate = Path(name.strip())
        key = str(candidate.resolve()) if candidate.parent != Path(".") else candidate.name
        by_file[key] = int(value)
    missing = [str(f) for f in files if str(Path(f).resolve()) not in by_file and Path(f).name not in by_file]
    if missing:
        raise UserError(f"{path} gives no salience for {len(missing)} file(s) (first: {', '.join(missing[:5])}); "
                        "add them, or use --salience marginal | 1 | 2")
    return SaliencePolicy("per_file", by_file=by_file)


# ------------------------------------------------------------------------------------- sources

def audio_extensions() -> set[str]:
    """File extensions of the formats soundfile can read here (lower case, no dot)."""
    import soundfile

    return {name.lower() for name in soundfile.available_formats()} | EXTRA_EXTENSIONS


def find_audio(sources: Sequence[Path]) -> list[Path]:
    """The files named, and the audio files under the folders named (recursively), in a stable order."""
    extensions = audio_extensions()
    files: list[Path] = []
    for source in sources:
        source = Path(source)
        if source.is_dir():
            found = sorted(path for path in source.rglob("*")
                           if path.is_file() and path.suffix.lower().lstrip(".") in extensions)
            if not found:
                raise UserError(f"{source} holds no audio files (looked for {', '.join(sorted(extensions))}, "
                                "recursively)")
            files.extend(found)
        elif source.exists():
            files.append(source)
        else:
            raise UserError(f"{source}: no such file or folder")
    unique = list(dict.fromkeys(files))
    if not unique:
        raise UserError("no audio to classify: pass audio files or folders")
    return unique


# ------------------------------------------------------------------------------------- windows

def window_starts(length: int, clip: int, hop: int) -> list[int]:
    """Start samples of the windows of a signal of `length` samples (see the module docstring)."""
    if length <= clip:
        return [0]
    starts = list(range(0, length - clip + 1, hop))
    if starts[-1] + clip < length:
        starts.append(length - clip)  # the last window ends at the end of the file
    return starts


def cut_window(signal: np.ndarray, start: int, clip: int) -> np.ndarray:
    """One window; a signal shorter than the clip is right zero-padded, as in training."""
    return fit_length(signal[start:start + clip], clip)


# ------------------------------------------------------------------------------------- models

Predictor = Callable[[np.ndarray, tuple[int, ...]], np.ndarray]  # (windows [B, L], salience values) -> [B, 10]


@dataclass
class ModelSpec:
    """What a predictor needs as input, and how to call it."""

    sample_rate: int
    num_samples: int
    predict: Predictor
    uses_salience: bool
    description: str


def torch_predictor(solution_names: Sequence[str], weights: Sequence[float], method: str, solutions: Path,
                    device: str = "auto", precision: str = "auto") -> ModelSpec:
    """Every fold model of each solution in `solutions/<name>/`, blended with `method` and `weights`."""
    import torch

    from core.blend import combine
    from core.model.ensemble import FoldEnsemble
    from core.solution_folder import SolutionFolder
    from core.train.fold import Runtime
    from core.train.precision import autocast, configure_backends
    from core.train.predict import load_fold_models

    runtime = Runtime.resolve(device, precision)
    configure_backends(runtime.device)
    ensembles, rates, lengths = [], {}, {}
    for name in solution_names:
        models = load_fold_models(SolutionFolder.of(solutions, name).root, name, runtime)
        frontend = models[0].recipe.frontend
        rates[name], lengths[name] = frontend.sample_rate, frontend.num_samples
        ensembles.append(FoldEnsemble([m.model for m in models], [m.recipe.frontend for m in models]).eval())
    check_same_input(rates, lengths)

    def predict(windows: np.ndarray, salience_values: tuple[int, ...]) -> np.ndarray:
        waveforms = torch.from_numpy(windows).to(runtime.device, non_blocking=True)
        per_solution = []
        with torch.inference_mode(), autocast(runtime.device, runtime.precision):
            for ensemble in ensembles:
                values = salience_values if ensemble.uses_salience else (None,)
                saliences = [None if v is None else torch.full((len(windows),), v, dtype=torch.int64,
                                                                device=runtime.device) for v in values]
                runs = ensemble.probabilities(waveforms, saliences)
                per_solution.append(torch.stack(runs).mean(dim=0).float().cpu().numpy())
        return per_solution[0] if len(per_solution) == 1 else combine(per_solution, weights, method)

    name = next(iter(rates))
    return ModelSpec(rates[name], lengths[name], predict, any(e.uses_salience for e in ensembles),
                     " + ".join(f"{n} ({w:g})" if len(solution_names) > 1 else n
                                for n, w in zip(solution_names, weights, strict=True)))


def check_same_input(rates: dict[str, int], lengths: dict[str, int]) -> None:
    """Solutions blended together must take the same sample rate and clip length."""
    if len(set(rates.values())) > 1 or len(set(lengths.values())) > 1:
        shown = ", ".join(f"{name}: {rates[name]} Hz x {lengths[name]} samples" for name in rates)
        raise UserError(f"the solutions disagree on sample rate or clip length ({shown}); classify them separately")


def onnx_predictor(path: Path) -> ModelSpec:
    """An exported model (core/export.py) run by onnxruntime on the CPU."""
    import onnxruntime

    from core.export import read_metadata

    if not Path(path).is_file():
        raise UserError(f"--onnx {path}: no such file; write one with `python -m core export SOLUTION --out FILE`")
    try:
        metadata = read_metadata(path)
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as error:
        raise UserError(f"--onnx {path}: not a model onnxruntime can load ({type(error).__name__})") from error
    if "sample_rate" not in metadata or "num_samples" not in metadata:
        raise UserError(f"--onnx {path}: no sample_rate/num_samples metadata; export it with `python -m core export`")
    inputs = [item.name for item in session.get_inputs()]
    uses_salience = "salience" in inputs

    def predict(windows: np.ndarray, salience_values: tuple[int, ...]) -> np.ndarray:
        runs = []
        for value in (salience_values if uses_salience else (None,)):
            feeds = {"waveforms": windows}
            if value is not None:
                feeds["salience"] = np.full(len(windows), value, dtype=np.int64)
            runs.append(session.run(None, feeds)[0])
        return np.mean(runs, axis=0)

    return ModelSpec(int(metadata["sample_rate"]), int(metadata["num_samples"]), predict, uses_salience,
                     f"{path} ({metadata.get('solution', '?')}, folds {metadata.get('folds', '?')})")


# ------------------------------------------------------------------------------------- running

@dataclass
class FileResult:
    path: Path
    duration_s: float
    starts_s: np.ndarray            # window start times (s)
    window_probs: np.ndarray        # [windows, 10]
    probs: np.ndarray               # [10], aggregated

    @property
    def target(self) -> int:
        return int(np.argmax(self.probs))


@dataclass
class Classification:
    files: list[FileResult]
    bad: dict[str, str]             # path -> reason (no row for these)
    clip_seconds: float


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
    return Classification(results, bad, clip / rate)


# ------------------------------------------------------------------------------------- outputs

def file_frame(result: Classification) -> pd.DataFrame:
    """One row per file: file,duration_s,TARGET (class name),<class names...>."""
    rows = [{"file": str(f.path), "duration_s": round(f.duration_s, 6), "TARGET": CLASS_NAMES[f.target],
             **dict(zip(CLASS_NAMES, map(float, f.probs), strict=True))} for f in result.files]
    return pd.DataFrame(rows, columns=["file", "duration_s", "TARGET", *CLASS_NAMES])


def window_frame(result: Classification) -> pd.DataFrame:
    """One row per window: file,start_s,end_s,TARGET (class name),<class names...>."""
    rows = []
    for f in result.files:
        for start, probs in zip(f.starts_s, f.window_probs, strict=True):
            rows.append({"file": str(f.path), "start_s": round(float(start), 6),
                         "end_s": round(min(float(start) + result.clip_seconds, f.duration_s)
                                        if f.duration_s > result.clip_seconds else f.duration_s, 6),
                         "TARGET": CLASS_NAMES[int(np.argmax(probs))], **dict(zip(CLASS_NAMES, map(float, probs), strict=True))})
    return pd.DataFrame(rows, columns=["file", "start_s", "end_s", "TARGET", *CLASS_NAMES])


def as_json(result: Classification, top: int = 3) -> dict:
    """For tools: every file with its class probabilities, window count and top classes; the bad files."""
    return {
        "files": [{"file": str(f.path), "duration_s": f.duration_s, "target": CLASS_NAMES[f.target],
                   "top": [[CLASS_NAMES[c], float(f.probs[c])] for c in top_classes(f.probs, top)],
                   "probabilities": dict(zip(CLASS_NAMES, map(float, f.probs), strict=True)), "windows": len(f.starts_s)}
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
        written.append(plot_timeline(f.starts_s, f.window_probs, result.clip_seconds, f.duration_s, CLASS_NAMES,
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
