"""Input pipeline: one training epoch of batches from the float16 cache vs decoding + resampling every item.

    .venv/bin/python benchmarks/input.py [--clips-per-class-fold 13] [--reference-clips 256]

Builds a synthetic set (>= 1000 train clips at 22.05/44.1/48 kHz, mono/stereo, 16/24-bit) in a temp
folder, caches it once (timed separately: a one-time cost), then times the same DataLoader (batch 32,
shuffled, float32 torch batches, no worker processes) over
  - the cache: rows of the float16 memmap -> float32 (what every epoch does), and
  - the reference way: soundfile decode + torchaudio resample + pad/crop per item, every epoch
    (timed on `--reference-clips` clips of the same shuffled order; its rate does not depend on the count).
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips-per-class-fold", type=int, default=13, help="13 -> 1040 train clips")
    parser.add_argument("--reference-clips", type=int, default=256, help="clips decoded the reference way")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

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

        cached_rate, cached_clips = epoch_rate(CachedClips(cache.waveforms), args.seed)
        order = np.random.default_rng(args.seed).permutation(len(paths))[: args.reference_clips]
        reference_rate, reference_clips = epoch_rate(DecodedClips([paths[row] for row in order]), args.seed)

    ratio = cached_rate / reference_rate
    print(f"synthetic set: {len(paths)} train clips (written in {synth_seconds:.1f} s)")
    print(f"cache build (once, {cache.waveforms.nbytes / 1e6:.0f} MB): {build_seconds:.1f} s "
          f"= {len(paths) / build_seconds:.0f} clips/s")
    print(f"epoch from cache:      {cached_rate:9.0f} clips/s  ({cached_clips} clips, batches of {BATCH})")
    print(f"decode+resample/item:  {reference_rate:9.0f} clips/s  ({reference_clips} clips, batches of {BATCH})")
    print(f"ratio: {ratio:.1f}x (target >= {TARGET_RATIO:g}x)")
    print("RESULT " + json.dumps({"name": "input_pipeline_cache_vs_decode", "ratio": round(ratio, 2),
                                  "target": TARGET_RATIO, "pass": bool(ratio >= TARGET_RATIO)}))


if __name__ == "__main__":
    main()
