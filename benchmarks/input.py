"""Input pipeline: one training epoch of batches from the float16 cache vs decoding + resampling every item.

    .venv/bin/python benchmarks/input.py [--clips-per-class-fold 13] [--reference-clips 256]

Builds a synthetic set (>= 1000 train clips at 22.05/44.1/48 kHz, mono/stereo, 16/24-bit) in a temp
folder, caches it once (timed separately: a one-time cost), then times one shuffled epoch of float32
torch batches of 32 (no worker processes) from
  - the cache: a batch of float16 memmap rows -> one float32 tensor (also shown: the same through a
    per-item DataLoader, the simplest way a trainer can consume it), and
  - the reference way, a per-item DataLoader: soundfile decode + torchaudio resample + pad/crop per item
    (timed on `--reference-clips` clips of the same shuffled order; its rate does not depend on the count).
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
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.data.audio import load_clip  # noqa: E402
from core.data.cache import load_waveforms  # noqa: E402
from core.data.metadata import load_source  # noqa: E402
from core.data.synth import write_synthetic_dataset  # noqa: E402

SAMPLE_RATE = 32000
NUM_SAMPLES = 128000
BATCH = 32
TARGET_RATIO = 20.0


class CachedClips(Dataset):
    """Items from the cache: one float16 row -> float32 tensor."""

    def __init__(self, waveforms: np.ndarray) -> None:
        self.waveforms = waveforms

    def __len__(self) -> int:
        return len(self.waveforms)

    def __getitem__(self, row: int) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.waveforms[row], dtype=np.float32))


class DecodedClips(Dataset):
    """Items decoded from their files every time (the reference scripts' way)."""

    def __init__(self, paths: list[str]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, row: int) -> torch.Tensor:
        return torch.from_numpy(load_clip(Path(self.paths[row]), SAMPLE_RATE, NUM_SAMPLES))


def epoch_rate(dataset: Dataset, seed: int) -> tuple[float, int]:
    """(clips/s, clips) of one shuffled pass in batches of BATCH."""
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(dataset, batch_size=BATCH, shuffle=True, generator=generator, num_workers=0)
    clips = 0
    start = time.perf_counter()
    for batch in loader:
        assert batch.dtype == torch.float32 and batch.shape[1] == NUM_SAMPLES
        clips += batch.shape[0]
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
        paths = list(load_source(root).train["path"])

        started = time.perf_counter()
        cache = load_waveforms(paths, SAMPLE_RATE, NUM_SAMPLES, cache_dir=temp_path / "cache", progress=True)
        build_seconds = time.perf_counter() - started

        cached_rate, cached_clips = direct_epoch_rate(cache.waveforms, args.seed)
        loader_rate, _ = epoch_rate(CachedClips(cache.waveforms), args.seed)
        order = np.random.default_rng(args.seed).permutation(len(paths))[: args.reference_clips]
        reference_rate, reference_clips = epoch_rate(DecodedClips([paths[row] for row in order]), args.seed)

    ratio = cached_rate / reference_rate
    print(f"synthetic set: {len(paths)} train clips (written in {synth_seconds:.1f} s)")
    print(f"cache build (once, {cache.waveforms.nbytes / 1e6:.0f} MB): {build_seconds:.1f} s "
          f"= {len(paths) / build_seconds:.0f} clips/s")
    print(f"torch threads: {args.threads}")
    print(f"epoch from cache:      {cached_rate:9.0f} clips/s  ({cached_clips} clips, batches of {BATCH}, "
          "direct batch indexing)")
    print(f"  same, per-item DataLoader: {loader_rate:9.0f} clips/s  (ratio {loader_rate / reference_rate:.1f}x)")
    print(f"decode+resample/item:  {reference_rate:9.0f} clips/s  ({reference_clips} clips, batches of {BATCH})")
    print(f"ratio: {ratio:.1f}x (target >= {TARGET_RATIO:g}x)")
    print("RESULT " + json.dumps({"name": "input_pipeline_cache_vs_decode", "ratio": round(ratio, 2),
                                  "target": TARGET_RATIO, "pass": bool(ratio >= TARGET_RATIO)}))


if __name__ == "__main__":
    main()
