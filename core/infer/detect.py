"""Sound event detection in recordings of any length: class scores per hop, then events (core/infer/events.py).

Frames: frame k of a recording covers [k*hop, (k+1)*hop) seconds; there are ceil(duration/hop) of
them. Its scores are those of the clip-long window centred on the frame's middle, so a frame is
scored with the same amount of context on both sides. The recording is zero-padded by
(clip - hop)/2 samples at each end so the first and last frames have their centred window; zero
padding is what training does to short clips. The recording is decoded and resampled once; windows
of many files are batched.

Consecutive windows of a batch are one strip of the padded recording (PyTorch models). The mel frames
they share are computed once per strip: where the hop is a multiple of the mel hop, each window's mel
frames are the strip's, except the few frames at each window edge, which see the window's own reflection
padding and are computed per window; the energies are then those of the window on its own (bit for bit
here; tests/test_detect_speed.py). PCEN is not shared by default: its smoother starts at each window's
first frame, so a window's PCEN depends on where it starts. `backbone_once` (detect --backbone-once) runs
PCEN and the backbone once per strip and pools each window's slice of the feature maps: a different
computation (module core/model/ensemble.py), offered as an option with its measured F1 (benchmarks/README.md).
ONNX models take fixed-length windows: every window is transformed on its own.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from core.data.audio import AudioError, load_signal
from core.folds import URBANSOUND8K_CLASSES
from core.infer.events import Event, PostProcessing, scores_to_events
from core.infer.predictors import ModelSpec
from core.infer.salience import SaliencePolicy


@dataclass(frozen=True)
class FrameGrid:
    """How a recording is cut into hop-long frames, each scored by its centred clip-long window (samples)."""

    clip: int
    hop: int

    @property
    def left_pad(self) -> int:
        return max(0, (self.clip - self.hop) // 2)

    def frame_count(self, length: int) -> int:
        return max(1, math.ceil(length / self.hop))

    def window(self, signal: np.ndarray, frame: int) -> np.ndarray:
        """The window of `frame`: signal[frame*hop - left_pad : ... + clip], zeros outside the signal."""
        return self.strip(signal, frame, 1)

    def strip(self, signal: np.ndarray, first: int, count: int) -> np.ndarray:
        """The padded signal under the windows of frames first .. first+count-1: (count-1)*hop + clip samples."""
        start = first * self.hop - self.left_pad
        strip = np.zeros((count - 1) * self.hop + self.clip, dtype=np.float32)
        lo, hi = max(0, start), min(len(signal), start + len(strip))
        if hi > lo:
            strip[lo - start:hi - start] = signal[lo:hi]
        return strip


@dataclass
class FileDetection:
    path: Path
    duration_s: float
    hop_s: float
    frame_scores: np.ndarray        # [frames, classes]
    events: list[Event]
    class_names: tuple[str, ...] = URBANSOUND8K_CLASSES  # the score columns (the model's classes)


@dataclass
class Detection:
    files: list[FileDetection]
    bad: dict[str, str]             # path -> reason (no events for these)


def grid_for(spec: ModelSpec, hop_seconds: float) -> FrameGrid:
    """The frame grid of a model at `hop_seconds` (the hop is rounded to whole samples)."""
    return FrameGrid(spec.num_samples, max(1, int(round(hop_seconds * spec.sample_rate))))


def detect_files(files: Sequence[Path], spec: ModelSpec, rules: PostProcessing, *, hop_seconds: float = 0.5,
                 salience: SaliencePolicy = SaliencePolicy("marginal"), batch_size: int = 32,
                 on_progress: Callable[[int], None] | None = None, backbone_once: bool = False) -> Detection:
    """Decode each file once, score every frame's window in batches, turn each file's scores into events."""
    if tuple(rules.classes) != tuple(spec.class_names):
        raise ValueError("the post-processing rules are for other classes than the model's")
    grid = grid_for(spec, hop_seconds)
    hop = grid.hop / spec.sample_rate
    results, bad = [], {}
    for path in files:
        try:
            signal = load_signal(path, spec.sample_rate)
        except AudioError as error:
            bad[str(path)] = str(error)
        else:
            scores = score_frames(signal, grid, spec, salience.values_for(Path(path)), batch_size, backbone_once)
            duration = len(signal) / spec.sample_rate
            results.append(FileDetection(Path(path), duration, hop, scores, scores_to_events(scores, hop, duration,
                                                                                              rules), spec.class_names))
        if on_progress:
            on_progress(1)
    return Detection(results, bad)


def score_frames(signal: np.ndarray, grid: FrameGrid, spec: ModelSpec, salience_values: tuple[int, ...],
                 batch_size: int, backbone_once: bool = False) -> np.ndarray:
    """Class scores [frames, classes] of one decoded recording (strips of `batch_size` windows; module docstring)."""
    count = grid.frame_count(len(signal))
    parts = []
    for first in range(0, count, batch_size):
        size = min(count, first + batch_size) - first
        if spec.predict_strip is not None:
            scores = spec.predict_strip(grid.strip(signal, first, size), size, grid.hop, salience_values,
                                        backbone_once)
        else:
            scores = spec.predict(np.stack([grid.window(signal, frame) for frame in range(first, first + size)]),
                                  salience_values)
        parts.append(np.asarray(scores, dtype=np.float32))
    return np.concatenate(parts)


# ------------------------------------------------------------------------------------- outputs (DCASE formats)

def event_name(path: Path) -> str:
    """The `filename` column of the event list: the audio file's name, as in DCASE and URBAN-SED."""
    return Path(path).name


def events_frame(result: Detection) -> pd.DataFrame:
    """The DCASE event list: filename, onset, offset, event_label (seconds), one row per event."""
    rows = [{"filename": event_name(f.path), "onset": e.onset, "offset": e.offset, "event_label": e.label}
            for f in result.files for e in f.events]
    return pd.DataFrame(rows, columns=["filename", "onset", "offset", "event_label"])


def scores_frame(detected: FileDetection) -> pd.DataFrame:
    """One file's score table as sed_scores_eval reads it: onset, offset, then one column per class."""
    starts = np.arange(len(detected.frame_scores)) * detected.hop_s
    table = pd.DataFrame({"onset": np.round(starts, 6),
                          "offset": np.round(np.minimum(starts + detected.hop_s, detected.duration_s), 6)})
    for index, name in enumerate(detected.class_names):
        table[name] = detected.frame_scores[:, index]
    return table


def score_file_names(result: Detection) -> Iterator[tuple[FileDetection, str]]:
    """(file, score TSV name): <stem>.tsv, the audio id sed_scores_eval matches with the event list."""
    for detected in result.files:
        yield detected, f"{Path(detected.path).stem}.tsv"


def as_json(result: Detection) -> dict:
    """For tools: every file with its duration, hop and events; the bad files."""
    return {"files": [{"file": str(f.path), "duration_s": f.duration_s, "hop_s": f.hop_s, "frames": len(f.frame_scores),
                       "events": [{"onset": e.onset, "offset": e.offset, "event_label": e.label} for e in f.events]}
                      for f in result.files],
            "bad": [{"file": path, "reason": reason} for path, reason in result.bad.items()]}


# ------------------------------------------------------------------------------------- fold-leakage guard

def seen_folds(fold_keys: tuple[int, ...]) -> set[int]:
    """The folds fold models with these keys trained or validated on (core/folds.py's protocols).

    Checkpoints do not record their protocol: keys within 1-8 are read as the kaggle protocol (every
    model saw folds 1-8), a key 9 or 10 as us8k-10fold (each model saw every fold but its test fold).
    """
    from core.folds import TRAIN_FOLDS, fold_roles

    if all(key in TRAIN_FOLDS for key in fold_keys):
        return set(TRAIN_FOLDS) if fold_keys else set()
    seen: set[int] = set()
    for key in fold_keys:
        roles = fold_roles("us8k-10fold", key)
        seen.update(roles.train + (roles.validation,))
    return seen


def check_soundscape_leakage(files: Sequence[Path], fold_keys: tuple[int, ...], allowed: bool) -> str | None:
    """Refuse soundscapes made from folds the models saw (UserError), unless `allowed`; then say so."""
    from core.data.soundscapes import soundscape_folds
    from core.errors import UserError

    seen = seen_folds(fold_keys)
    for path in files:
        folds = soundscape_folds(Path(path).parent)
        overlap = sorted(seen & set(folds or ()))
        if overlap:
            message = (f"{path} is a soundscape made from fold(s) {', '.join(map(str, folds))}, and the fold "
                       f"models ({', '.join(map(str, fold_keys))}) trained or validated on fold(s) "
                       f"{', '.join(map(str, overlap))}: its scores would be optimistic")
            if not allowed:
                raise UserError(message + "; make soundscapes from unseen folds (e.g. --folds 9,10 for kaggle "
                                "fold models) or pass --allow-fold-leakage")
            return message
    return None
