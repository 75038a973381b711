"""Live detection on a continuous stream of audio: the frames, windows and events of `detect`, as they come.

The stream is the recording that `detect` would read: frame k's window is the same slice of the same
zero-padded signal (core/infer/detect.py), and the same EventTracker turns scores into events, so a
stream gives exactly the events `detect` finds in a file holding the same samples (windows scored in
other batch groupings may differ in the last float bits on a real model). An event is reported as soon
as no later frame can change it (its class fell below `off` and the merge gap has passed).
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from core.errors import UserError
from core.infer.detect import FrameGrid
from core.infer.events import Event, EventTracker, PostProcessing
from core.infer.predictors import ModelSpec

SAMPLE_FORMATS = {"s16le": (np.dtype("<i2"), 32768.0), "f32le": (np.dtype("<f4"), 1.0)}


@dataclass
class StreamStats:
    audio_seconds: float = 0.0
    compute_seconds: float = 0.0
    windows: int = 0
    dropped_windows: int = 0
    trailing_bytes: int = 0       # bytes of an incomplete sample frame at the end of the stream (ignored)

    @property
    def speed(self) -> float:
        """Audio seconds per second of computation (> 1: faster than real time)."""
        return self.audio_seconds / self.compute_seconds if self.compute_seconds > 0 else float("inf")


def read_pcm(stream: BinaryIO, sample_format: str, channels: int, block_frames: int,
             stats: StreamStats) -> Iterator[np.ndarray]:
    """Float32 mono blocks (mean over channels) from raw interleaved PCM; a cut sample frame at the end is dropped.

    A block is what the stream has ready, up to `block_frames` (read1 where the stream has it): a live
    producer's audio comes as soon as it is written, a producer ahead of us (a file piped in) in blocks as
    large as the pipe holds (64 KiB by default on Linux, about 2 hops of 16-bit mono at 32 kHz; `widen_pipe`
    raises that to a whole block where it can), whose windows are then scored together.
    """
    dtype, scale = SAMPLE_FORMATS[sample_format]
    frame_bytes = dtype.itemsize * channels
    read = getattr(stream, "read1", stream.read)
    leftover = b""
    while True:
        chunk = read(block_frames * frame_bytes)
        if not chunk:
            break
        data = leftover + chunk
        whole = len(data) - len(data) % frame_bytes
        leftover = data[whole:]
        if whole:
            samples = np.frombuffer(data[:whole], dtype=dtype).astype(np.float32) / scale
            yield samples.reshape(-1, channels).mean(axis=1, dtype=np.float32) if channels > 1 else samples
    stats.trailing_bytes = len(leftover)


def widen_pipe(stream: BinaryIO, size: int) -> int:
    """Best effort: the capacity of the pipe `stream` reads raised to `size` bytes (Linux F_SETPIPE_SZ, up to
    /proc/sys/fs/pipe-max-size, 1 MiB by default), so that a producer ahead of us leaves up to a whole block
    for one read. Returns the capacity after; 0 where `stream` is not a pipe or the capacity cannot be set
    (other systems): reads then get what the pipe holds."""
    import os
    import stat

    try:
        import fcntl

        descriptor = stream.fileno()
        if not stat.S_ISFIFO(os.fstat(descriptor).st_mode):
            return 0
        if fcntl.fcntl(descriptor, fcntl.F_GETPIPE_SZ) < size:
            try:
                fcntl.fcntl(descriptor, fcntl.F_SETPIPE_SZ, size)
            except OSError:  # above pipe-max-size (unprivileged): as large as allowed
                with open("/proc/sys/fs/pipe-max-size") as limit:
                    fcntl.fcntl(descriptor, fcntl.F_SETPIPE_SZ, min(size, int(limit.read())))
        return fcntl.fcntl(descriptor, fcntl.F_GETPIPE_SZ)
    except (ImportError, AttributeError, OSError, ValueError):  # no fcntl / no fileno / not Linux
        return 0


class StreamDetector:
    """Feed samples (model rate, mono); get finished events back; `finish` flushes the open ones."""

    def __init__(self, spec: ModelSpec, rules: PostProcessing, hop_seconds: float, salience_values: tuple[int, ...],
                 batch_size: int = 32, on_frame: Callable[[int, np.ndarray], None] | None = None) -> None:
        self.spec, self.salience_values, self.batch_size, self.on_frame = spec, salience_values, batch_size, on_frame
        self.grid = FrameGrid(spec.num_samples, max(1, int(round(hop_seconds * spec.sample_rate))))
        self.hop = self.grid.hop / spec.sample_rate
        self.tracker = EventTracker(rules, self.hop)
        self.buffer = np.zeros(self.grid.left_pad, dtype=np.float32)  # padded signal from frame `next_frame` on
        self.next_frame = 0
        self.received = 0             # samples since the (re)start
        self.origin_samples = 0       # samples of the stream before the (re)start, read or dropped
        self.stats = StreamStats()

    def feed(self, samples: np.ndarray) -> list[Event]:
        """New samples; the events that ended for good."""
        self.buffer = np.concatenate([self.buffer, np.asarray(samples, dtype=np.float32)])
        self.received += len(samples)
        self.stats.audio_seconds += len(samples) / self.spec.sample_rate
        ready = 0
        while ready * self.grid.hop + self.grid.clip <= len(self.buffer):
            ready += 1
        return self._score(ready)

    def finish(self) -> list[Event]:
        """End of stream: the remaining frames (zero-padded as in detect) and every open event."""
        total = self.grid.frame_count(self.received) if self.received else 0
        remaining = total - self.next_frame
        if remaining > 0:
            needed = (remaining - 1) * self.grid.hop + self.grid.clip
            if len(self.buffer) < needed:
                self.buffer = np.concatenate([self.buffer, np.zeros(needed - len(self.buffer), dtype=np.float32)])
        events = self._score(max(0, remaining))
        return events + self.tracker.close(self.tracker.origin + self.received / self.spec.sample_rate)

    def restart_after_gap(self, gap_samples: int) -> list[Event]:
        """`gap_samples` of audio will not be read (a microphone while computation is behind): the audio so far
        is finished as at the end of a stream, and detection starts again after the gap, times kept."""
        events = self.finish()
        self.stats.dropped_windows += max(0, gap_samples // self.grid.hop)
        self.origin_samples += self.received + gap_samples
        self.tracker = EventTracker(self.tracker.rules, self.hop, self.origin_samples / self.spec.sample_rate)
        self.buffer = np.zeros(self.grid.left_pad, dtype=np.float32)
        self.received, self.next_frame = 0, 0
        return events

    def _score(self, count: int) -> list[Event]:
        events: list[Event] = []
        started = time.perf_counter()
        for first in range(0, count, self.batch_size):
            size = min(self.batch_size, count - first)
            start, hop, clip = first * self.grid.hop, self.grid.hop, self.grid.clip
            if self.spec.predict_strip is not None:  # the windows' shared mel frames once (core/infer/detect.py)
                scores = self.spec.predict_strip(self.buffer[start:start + (size - 1) * hop + clip], size, hop,
                                                 self.salience_values, False)
            else:
                scores = self.spec.predict(np.stack([self.buffer[start + i * hop:start + i * hop + clip]
                                                     for i in range(size)]), self.salience_values)
            scores = np.asarray(scores, dtype=np.float32)
            for row in scores:
                if self.on_frame:
                    self.on_frame(self.next_frame, row)
                events.extend(self.tracker.push(row))
                self.next_frame += 1
        self.buffer = self.buffer[count * self.grid.hop:]
        self.stats.windows += count
        self.stats.compute_seconds += time.perf_counter() - started
        return events


def check_stream_format(sample_format: str, rate: int, channels: int, spec: ModelSpec) -> None:
    """The stream must be raw PCM at the model's rate (resampling a stream is not done here)."""
    if sample_format not in SAMPLE_FORMATS:
        raise UserError(f"--format must be one of {', '.join(SAMPLE_FORMATS)}; got {sample_format!r}")
    if rate != spec.sample_rate:
        raise UserError(f"--rate {rate}: the model takes {spec.sample_rate} Hz; have the producer resample "
                        f"(arecord -r {spec.sample_rate}, sox ... -r {spec.sample_rate}, ffmpeg ... -ar "
                        f"{spec.sample_rate}) and pass --rate {spec.sample_rate}")
    if channels < 1:
        raise UserError(f"--channels must be at least 1; got {channels}")
