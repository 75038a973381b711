"""The one audio loader: soundfile decode -> mono (channel mean) -> resample -> fixed length.

Any rate, channel count and WAV sample format soundfile reads (8-bit unsigned, 16/24/32-bit PCM,
float). Resampling is torchaudio.functional.resample with its defaults (sinc_interp_hann, width 6,
rolloff 0.99), as in the reference. The reference resamples each channel and then averages them;
both steps are linear, so averaging first gives the same signal (to float rounding) for less work.
Unreadable, empty or non-finite audio raises AudioError: it is never replaced by silence.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


class AudioError(Exception):
    """A clip that cannot be used; the message is the reason ("empty file (0 samples)", ...)."""


def read_mono(path: Path) -> tuple[np.ndarray, int]:
    """Decode `path` to a float32 mono signal (mean over channels) and its sample rate.

    Raises AudioError when the file is missing, unreadable, empty or holds NaN/inf samples.
    """
    import soundfile

    path = Path(path)
    if not path.is_file():
        raise AudioError("file not found")
    try:
        samples, sample_rate = soundfile.read(path, dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, ValueError, TypeError) as error:
        raise AudioError(f"corrupt header or unsupported format: {_one_line(error)}") from error
    declared = declared_wav_frames(path)
    if declared is not None and samples.shape[0] < declared:  # libsndfile silently reads what is left
        raise AudioError(f"truncated: the WAV header declares {declared} frames, the file holds {samples.shape[0]}")
    if samples.shape[0] == 0:
        raise AudioError("empty file (0 samples)")
    if not np.isfinite(samples).all():
        bad = int(np.count_nonzero(~np.isfinite(samples)))
        raise AudioError(f"non-finite samples (NaN/inf): {bad} of {samples.size}")
    mono = samples[:, 0] if samples.shape[1] == 1 else samples.mean(axis=1, dtype=np.float32)
    return np.ascontiguousarray(mono, dtype=np.float32), int(sample_rate)


def declared_wav_frames(path: Path) -> int | None:
    """Frames the data chunk of a RIFF/WAVE header declares (size // block align).

    None for other formats, a missing fmt chunk, or a placeholder size (0 or 0xFFFFFFFF, streamed files).
    """
    with open(path, "rb") as handle:
        header = handle.read(12)
        if len(header) < 12 or header[:4] != b"RIFF" or header[8:12] != b"WAVE":
            return None
        block_align = 0
        while True:
            chunk = handle.read(8)
            if len(chunk) < 8:
                return None
            chunk_id, size = chunk[:4], int.from_bytes(chunk[4:], "little")
            if chunk_id == b"data":
                return size // block_align if block_align and size not in (0, 0xFFFFFFFF) else None
            if chunk_id == b"fmt ":
                body = handle.read(size)
                block_align = int.from_bytes(body[12:14], "little") if len(body) >= 14 else 0
            else:
                handle.seek(size, 1)
            handle.seek(size & 1, 1)  # chunks are padded to an even size


def resample(signal: np.ndarray, orig_rate: int, target_rate: int) -> np.ndarray:
    """torchaudio.functional.resample with default arguments; float32 in, float32 out."""
    if orig_rate == target_rate:
        return signal
    import torch
    import torchaudio.functional as audio_functional

    with torch.inference_mode():
        resampled = audio_functional.resample(torch.from_numpy(signal), orig_rate, target_rate)
    return resampled.numpy()


def fit_length(signal: np.ndarray, num_samples: int) -> np.ndarray:
    """Right zero-pad, or centre-crop from the integer start (L - N) // 2, to exactly `num_samples`."""
    length = signal.shape[-1]
    if length < num_samples:
        return np.pad(signal, (0, num_samples - length))
    start = (length - num_samples) // 2
    return signal[start:start + num_samples]


def load_signal(path: Path, sample_rate: int) -> np.ndarray:
    """The whole recording at `path` as float32 mono at `sample_rate` (any length).

    Raises AudioError with the reason when the file cannot be used.
    """
    mono, rate = read_mono(path)
    return np.ascontiguousarray(resample(mono, rate, sample_rate), dtype=np.float32)


def load_clip(path: Path, sample_rate: int, num_samples: int) -> np.ndarray:
    """The clip at `path` as float32 [num_samples]: mono, at `sample_rate`, padded or centre-cropped.

    Raises AudioError with the reason when the file cannot be used.
    """
    return np.ascontiguousarray(fit_length(load_signal(path, sample_rate), num_samples), dtype=np.float32)


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split()) or type(error).__name__


@dataclass(frozen=True)
class RateSummary:
    """How many clips have each native sample rate; `unreadable`: files whose header soundfile cannot read."""

    counts: dict[int, int]
    unreadable: int = 0

    @property
    def rates(self) -> tuple[int, ...]:
        """The distinct native rates, ascending."""
        return tuple(sorted(self.counts))

    def describe(self) -> str:
        """One line, e.g. '44100 Hz: 12 clips, 22050 Hz: 3 clips'."""
        parts = [f"{rate} Hz: {count} clips" for rate, count in sorted(self.counts.items())]
        return ", ".join(parts + ([f"{self.unreadable} unreadable"] if self.unreadable else [])) or "no clips"


def native_rates(paths: list[str]) -> RateSummary:
    """The native sample rates of `paths` from their headers (no decoding); unreadable ones are counted."""
    import soundfile

    counts: dict[int, int] = {}
    unreadable = 0
    for path in paths:
        try:
            rate = int(soundfile.info(path).samplerate)
        except (soundfile.LibsndfileError, RuntimeError, ValueError, TypeError, OSError):
            unreadable += 1  # the loader reports why when the clip is used (AudioError)
            continue
        counts[rate] = counts.get(rate, 0) + 1
    return RateSummary(counts, unreadable)
