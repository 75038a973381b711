"""Class scores over time -> sound events (onset, offset, label): the documented post-processing.

Scores come one frame per hop (frame k covers [k*hop, (k+1)*hop) seconds). Per class, in order:
1. median filter over `median_frames` frames (odd; edges repeat the first/last frame, as
   scipy.ndimage.median_filter(mode="nearest")), against one-window flickers;
2. hysteresis: an event opens at the first frame whose score reaches the class's `on` threshold and
   stays open while the score stays at or above `off` (off <= on), so a score wobbling around one
   threshold does not chop an event into pieces;
3. events of one class separated by a gap of at most `min_gap` seconds are merged;
4. events shorter than `min_length` seconds are dropped.
Each frame holds one score per class, so a class never has two overlapping events: overlapping
windows cannot produce duplicates. The same `EventTracker` runs offline (detect) and live (monitor),
frame by frame, so both give the same events for the same scores.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from core.errors import UserError
from core.folds import URBANSOUND8K_CLASSES


@dataclass(frozen=True)
class Event:
    onset: float
    offset: float
    label: str


@dataclass(frozen=True)
class PostProcessing:
    """Per-class hysteresis thresholds and the time rules (seconds) of the module docstring."""

    on: tuple[float, ...]           # one per class, in `classes` order
    off: tuple[float, ...]
    median_frames: int = 3
    min_length: float = 0.5
    min_gap: float = 0.5
    classes: tuple[str, ...] = URBANSOUND8K_CLASSES  # the model's classes (ModelSpec.class_names)

    def __post_init__(self) -> None:
        if len(self.on) != len(self.classes) or len(self.off) != len(self.classes):
            raise ValueError("PostProcessing needs one on and one off threshold per class")
        if self.median_frames < 1 or self.median_frames % 2 == 0:
            raise ValueError(f"median_frames must be odd and positive; got {self.median_frames}")

    @classmethod
    def uniform(cls, on: float, off: float, median_frames: int = 3, min_length: float = 0.5,
                min_gap: float = 0.5, classes: tuple[str, ...] = URBANSOUND8K_CLASSES) -> PostProcessing:
        """The same thresholds for every class."""
        count = len(classes)
        return cls((on,) * count, (off,) * count, median_frames, min_length, min_gap, tuple(classes))


def median_frames_for(seconds: float, hop: float) -> int:
    """The odd number of frames closest to `seconds` at `hop` (at least 1)."""
    frames = max(1, int(round(seconds / hop)))
    return frames if frames % 2 else frames + 1


def load_thresholds(path: Path, median_frames: int, min_length: float, min_gap: float,
                    classes: tuple[str, ...] = URBANSOUND8K_CLASSES) -> PostProcessing:
    """--thresholds FILE: a CSV with columns event_label,on,off and one row per class of the model (`classes`)."""
    if not Path(path).is_file():
        raise UserError(f"--thresholds {path}: no such file (a CSV with columns event_label,on,off)")
    table = pd.read_csv(path, dtype={"event_label": str})
    if not {"event_label", "on", "off"} <= set(table.columns):
        raise UserError(f"{path}: needs the columns event_label,on,off (found {', '.join(map(str, table.columns))})")
    rows = {label: (on, off) for label, on, off in zip(table["event_label"], table["on"], table["off"], strict=True)}
    unknown = sorted(set(rows) - set(classes))
    missing = [name for name in classes if name not in rows]
    if unknown or missing:
        raise UserError(f"{path}: one row per class is needed; " + "; ".join(
            part for part in (f"unknown: {', '.join(unknown)}" if unknown else "",
                              f"missing: {', '.join(missing)}" if missing else "") if part))
    for label, (on, off) in rows.items():
        if not (0 <= off <= on <= 1):
            raise UserError(f"{path}: {label}: thresholds must satisfy 0 <= off <= on <= 1; got on={on}, off={off}")
    return PostProcessing(tuple(float(rows[n][0]) for n in classes), tuple(float(rows[n][1]) for n in classes),
                          median_frames, min_length, min_gap, tuple(classes))


def write_thresholds(rules: PostProcessing, path: Path) -> Path:
    """The --thresholds CSV of `rules`: event_label,on,off, one row per class (what load_thresholds reads)."""
    from core.atomic import write_csv

    return write_csv(pd.DataFrame({"event_label": list(rules.classes), "on": list(rules.on), "off": list(rules.off)}),
                     path)


class _MedianFilter:
    """Streaming median over `size` frames, edges repeated (equal to scipy's mode="nearest" offline)."""

    def __init__(self, size: int) -> None:
        self.radius = size // 2
        self.buffer: deque[np.ndarray] = deque()

    def push(self, frame: np.ndarray) -> list[np.ndarray]:
        if not self.buffer:
            self.buffer.extend([frame] * self.radius)  # left edge: the first frame repeated
        self.buffer.append(frame)
        return self._ready()

    def close(self) -> list[np.ndarray]:
        if not self.buffer:
            return []
        last = self.buffer[-1]
        self.buffer.extend([last] * self.radius)  # right edge: the last frame repeated
        return self._ready()

    def _ready(self) -> list[np.ndarray]:
        out = []
        while len(self.buffer) >= 2 * self.radius + 1:
            out.append(np.median(np.stack(list(self.buffer)[: 2 * self.radius + 1]), axis=0))
            self.buffer.popleft()
        return out


class EventTracker:
    """Frame scores in (one [classes] row per hop), finished events out as soon as no rule can change them."""

    def __init__(self, rules: PostProcessing, hop: float, origin: float = 0.0) -> None:
        self.rules, self.hop, self.origin = rules, hop, origin  # origin: the time of frame 0 (seconds)
        self.median = _MedianFilter(rules.median_frames)
        self.frame = 0                                                 # frames through the filter so far
        self.open: dict[int, int] = {}                                 # class -> start frame
        self.pending: dict[int, tuple[int, int]] = {}                  # class -> (start, end) closed, may merge
        self.gap_frames = int(np.floor(rules.min_gap / hop + 1e-9))

    def push(self, scores: np.ndarray) -> list[Event]:
        """One raw frame of class scores; the events that ended for good."""
        events: list[Event] = []
        for filtered in self.median.push(np.asarray(scores, dtype=np.float64)):
            events.extend(self._step(filtered))
        return events

    def close(self, duration: float) -> list[Event]:
        """End of the recording (`duration`: its end time in seconds): flush the filter, close and emit every open event."""
        events: list[Event] = []
        for filtered in self.median.close():
            events.extend(self._step(filtered))
        for label in sorted(self.open):
            self._close(label, self.frame)
        for label in sorted(self.pending):
            events.extend(self._emit(label, *self.pending[label], duration))
        self.open.clear()
        self.pending.clear()
        return sorted(events, key=lambda e: (e.onset, e.label))

    def _step(self, filtered: np.ndarray) -> list[Event]:
        events: list[Event] = []
        frame = self.frame
        for label, score in enumerate(filtered):
            if label in self.open:
                if score < self.rules.off[label]:
                    self._close(label, frame)
            elif score >= self.rules.on[label]:
                start = frame
                if label in self.pending:
                    previous_start, previous_end = self.pending.pop(label)
                    if frame - previous_end <= self.gap_frames:
                        start = previous_start  # a short gap: continue the previous event
                    else:
                        events.extend(self._emit(label, previous_start, previous_end, None))
                self.open[label] = start
        for label in [c for c, (_, end) in self.pending.items() if frame - end >= self.gap_frames]:
            events.extend(self._emit(label, *self.pending.pop(label), None))  # no later onset can merge it now
        self.frame += 1
        return events

    def _close(self, label: int, end: int) -> None:
        self.pending[label] = (self.open.pop(label), end)

    def _emit(self, label: int, start: int, end: int, duration: float | None) -> list[Event]:
        onset, offset = self.origin + start * self.hop, self.origin + end * self.hop
        if duration is not None:
            offset = min(offset, duration)
        if offset - onset < self.rules.min_length - 1e-9:
            return []
        return [Event(round(onset, 6), round(offset, 6), self.rules.classes[label])]


def scores_to_events(frame_scores: np.ndarray, hop: float, duration: float, rules: PostProcessing) -> list[Event]:
    """Offline: all frames [frames, classes] of one recording -> its events, sorted by onset."""
    tracker = EventTracker(rules, hop)
    events: list[Event] = []
    for row in frame_scores:
        events.extend(tracker.push(row))
    events.extend(tracker.close(duration))
    return sorted(events, key=lambda e: (e.onset, e.label))
