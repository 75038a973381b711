"""Classify one recording with a model exported by `python -m core export` (no torch, no import of this repo).

    pip install numpy soundfile onnxruntime
    python examples/onnx_classify.py model.onnx street.wav [--salience 1|2] [--hop 1.0]

Reads the sample rate, clip length and class names from the model's metadata; decodes the file with
soundfile (mono: the mean of its channels), resamples it to the model's rate (FFT resampling here;
training used torchaudio's sinc resampler, so a resampled file can differ slightly), cuts clip-length
windows every --hop seconds (the last one ends at the end of the file; a short file is right
zero-padded) and prints the mean probabilities over the windows. Fusion models take a salience per
clip (1 foreground, 2 background); without --salience both are averaged (an even prior).
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import onnxruntime
import soundfile


def read_mono(path: str) -> tuple[np.ndarray, int]:
    samples, rate = soundfile.read(path, dtype="float32", always_2d=True)
    if samples.shape[0] == 0 or not np.isfinite(samples).all():
        raise SystemExit(f"{path}: empty or non-finite audio")
    return samples.mean(axis=1, dtype=np.float32), int(rate)


def resample(signal: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Band-limited resampling through the FFT (numpy only)."""
    if rate == target:
        return signal
    length = int(round(len(signal) * target / rate))
    spectrum = np.fft.rfft(signal)
    bins = length // 2 + 1
    resized = np.zeros(bins, dtype=spectrum.dtype)
    keep = min(bins, len(spectrum))
    resized[:keep] = spectrum[:keep]
    return (np.fft.irfft(resized, n=length) * (length / len(signal))).astype(np.float32)


def windows(signal: np.ndarray, clip: int, hop: int) -> np.ndarray:
    if len(signal) <= clip:
        return np.pad(signal, (0, clip - len(signal)))[None, :]
    starts = list(range(0, len(signal) - clip + 1, hop))
    if starts[-1] + clip < len(signal):
        starts.append(len(signal) - clip)
    return np.stack([signal[start:start + clip] for start in starts])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("audio")
    parser.add_argument("--salience", type=int, choices=(1, 2), default=None)
    parser.add_argument("--hop", type=float, default=1.0, help="seconds between window starts")
    args = parser.parse_args()

    session = onnxruntime.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    rate, clip = int(meta["sample_rate"]), int(meta["num_samples"])
    classes = json.loads(meta["class_names"])
    signal, file_rate = read_mono(args.audio)
    batch = windows(resample(signal, file_rate, rate), clip, max(1, int(round(args.hop * rate))))
    needs_salience = any(item.name == "salience" for item in session.get_inputs())
    runs = []
    for value in ([args.salience] if args.salience else [1, 2]) if needs_salience else [None]:
        feeds = {"waveforms": batch.astype(np.float32)}
        if value is not None:
            feeds["salience"] = np.full(len(batch), value, dtype=np.int64)
        runs.append(session.run(["probabilities"], feeds)[0])
    probabilities = np.mean(runs, axis=0).mean(axis=0)
    print(json.dumps({"file": args.audio, "windows": len(batch), "target": classes[int(np.argmax(probabilities))],
                      "probabilities": dict(zip(classes, map(float, probabilities), strict=True))}))


if __name__ == "__main__":
    main()
