"""Windows of a recording: clip-long, every `hop` samples, the last one ending at the recording's end."""
from __future__ import annotations

import numpy as np

from core.data.audio import fit_length


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
