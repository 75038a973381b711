"""Input pipeline: one training epoch of batches from the float16 cache vs decoding + resampling every item.

    .venv/bin/python benchmarks/input.py [--clips-per-class-fold 13] [--reference-clips 256]

Builds a synthetic set (>= 1000 train clips at 22.05/44.1/48 kHz, mono/stereo, 16/24-bit) in a temp
folder, caches it once (timed separately: a one-time cost), then times one shuffled epoch of float32
torch batches of 32 (no worker processes) from
  - the cache, the way training reads it: core.train.data's WaveformDataset (one float16 memmap row ->
    float32 tensor, label, salience) through make_loader (also shown: whole batches indexed straight
    from the memmap, a ceiling), and
  - the reference way, the same loader over items decoded per item: soundfile decode + torchaudio
    resample + pad/crop (timed on `--reference-clips` clips of the same shuffled order; its rate does
    not depend on the count).
Both run with the same number of torch threads (--threads, default 1 as in a DataLoader worker).
Prints clips/s of each and their ratio; the last line is RESULT {...} (target ratio >= 20).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.data.audio import load_clip  # noqa: E402
from core.data.cache import load_waveforms  # noqa: E402
from core.data.metadata import load_source  # noqa: E402
from core.demo.synth import write_synthetic_dataset  # noqa: E402
from core.train.data import Split, WaveformDataset, make_loader  # noqa: E402

SAMPLE_RATE = 32000
NUM_SAMPLES = 128000
BATCH = 32
TARGET_RATIO = 20.0


class DecodedClips(Dataset):
    """Items decoded from their files every time (the reference scripts' way), shaped like the trainer's items."""

    def __init__(self, table) -> None:
        self.paths = list(table["path"])
        self.labels = table["classID"].to_numpy(dtype=np.int64)
        self.salience = table["salience"].to_numpy(dtype=np.int64)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, row: int):
        waveform = torch.from_numpy(load_clip(Path(self.paths[row]), SAMPLE_RATE, NUM_SAMPLES))
        return waveform, int(self.labels[row]), int(self.salience[row])


def epoch_rate(dataset: Dataset, seed: int) -> tuple[float, int]:
    """(clips/s, clips) of one shuffled pass in batches of BATCH through the trainer's own loader."""
    loader = make_loader(dataset, BATCH, shuffle=True, drop_last=False, workers=0, seed=seed, pin_memory=False)
    clips = 0
    start = time.perf_counter()
    for waveforms, _, _ in loader:
        assert waveforms.dtype == torch.float32 and waveforms.shape[1] == NUM_SAMPLES
        clips += waveforms.shape[0]
    return clips / (time.perf_counter() - start), clips


def direct_epoch_rate(waveforms: np.ndarray, seed: int) -> tuple[float, int]:
    """(clips/s, clips) of one shuffled pass, indexing the memmap a batch at a time (one float16 -> float32 cast)."""
    order = np.random.default_rng(seed).permutation(len(waveforms))
    clips = 0
    start = time.perf_counter()
    for first in range(0, len(order), BATCH):
        rows = np.sort(order[first:first + BATCH])  # sorted rows: sequential reads within the batch
        batch = torch.from_numpy(np.asarray(waveforms[rows])).float()
        assert batch.shape == (len(rows), NUM_SAMPLES)
        clips += batch.shape[0]
    return clips / (time.perf_counter() - start), clips


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips-per-class-fold", type=int, default=13, help="13 -> 1040 train clips")
    parser.add_argument("--reference-clips", type=int, default=256, help="clips decoded the reference way")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for both pipelines (1, as in a DataLoader worker; more threads on a "
                             "busy machine make torch.stack and resampling slower, not faster)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="bench-input-") as temp:
        temp_path = Path(temp)
        started = time.perf_counter()
        root = write_synthetic_dataset(temp_path / "data", seed=args.seed, clips_per_class_fold=args.clips_per_class_fold,
                                       test_clips_per_class=1, progress=True)
        synth_seconds = time.perf_counter() - started
        table = load_source(root).train
        paths = list(table["path"])

        started = time.perf_counter()
        cache = load_waveforms(paths, SAMPLE_RATE, NUM_SAMPLES, cache_dir=temp_path / "cache", progress=True)
        build_seconds = time.perf_counter() - started

        cached_rate, cached_clips = epoch_rate(WaveformDataset(Split(table, cache.waveforms), np.arange(len(table))),
                                               args.seed)
        direct_rate, _ = direct_epoch_rate(cache.waveforms, args.seed)
        order = np.random.default_rng(args.seed).permutation(len(paths))[: args.reference_clips]
        reference_rate, reference_clips = epoch_rate(DecodedClips(table.iloc[order]), args.seed)

    ratio = cached_rate / reference_rate
    print(f"synthetic set: {len(paths)} train clips (written in {synth_seconds:.1f} s)")
    print(f"cache build (once, {cache.waveforms.nbytes / 1e6:.0f} MB): {build_seconds:.1f} s "
          f"= {len(paths) / build_seconds:.0f} clips/s")
    print(f"torch threads: {args.threads}")
    print(f"epoch from cache:      {cached_rate:9.0f} clips/s  ({cached_clips} clips, batches of {BATCH}, "
          "the trainer's WaveformDataset + make_loader)")
    print(f"  same, whole batches straight from the memmap: {direct_rate:9.0f} clips/s "
          f"(ratio {direct_rate / reference_rate:.1f}x; a ceiling, not what training does)")
    print(f"decode+resample/item:  {reference_rate:9.0f} clips/s  ({reference_clips} clips, batches of {BATCH})")
    print(f"ratio: {ratio:.1f}x (target >= {TARGET_RATIO:g}x)")
    print("RESULT " + json.dumps({"name": "input_pipeline_cache_vs_decode", "ratio": round(ratio, 2),
                                  "target": TARGET_RATIO, "pass": bool(ratio >= TARGET_RATIO)}))


if __name__ == "__main__":
    main()
