"""Full scale: synthesise an UrbanSound8K-sized set, cache it, and iterate one epoch; time, size and memory.

    .venv/bin/python benchmarks/scale.py [--like ../shared/data/UrbanSound8K.csv] [--workdir DIR] [--keep]

1. `python -m core synth --like UrbanSound8K.csv` (8732 clips, durations and folds as the real set).
2. Cache build of the train (folds 1-8) and test (folds 9-10) splits at 32 kHz x 4 s, in a fresh process.
3. Cache size on disk (target <= 2.3 GB of float16).
4. Peak RSS of a fresh process that opens the cache and iterates one shuffled epoch of float32 batches
   of 32 through the trainer's own dataset and loader (target <= 4 GB; memory-mapped pages it touched count towards RSS).
Takes many minutes (mostly step 1 and 2). The last line is RESULT {...}.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE_RATE = 32000
NUM_SAMPLES = 128000
BATCH = 32
TARGET_CACHE_GB = 2.3
TARGET_RSS_GB = 4.0


def stage_cache(data: Path, cache_dir: Path) -> dict:
    """(In a child process) build the caches of both splits; report the time."""
    from core.data.cache import load_waveforms
    from core.data.metadata import load_source

    source = load_source(data)
    started = time.perf_counter()
    for table in (source.train, source.test):
        load_waveforms(list(table["path"]), SAMPLE_RATE, NUM_SAMPLES, cache_dir=cache_dir, progress=True)
    return {"cache_build_s": time.perf_counter() - started, "clips": len(source.train) + len(source.test)}


def stage_epoch(data: Path, cache_dir: Path) -> dict:
    """(In a fresh child process) open the train cache and iterate one shuffled epoch; report time and peak RSS."""
    import numpy as np

    from core.data.cache import load_waveforms
    from core.data.metadata import load_source
    from core.train.data import Split, WaveformDataset, make_loader

    table = load_source(data).train
    cache = load_waveforms(list(table["path"]), SAMPLE_RATE, NUM_SAMPLES, cache_dir=cache_dir, progress=False)
    dataset = WaveformDataset(Split(table, cache.waveforms), np.arange(len(table)))  # the trainer's own items
    loader = make_loader(dataset, BATCH, shuffle=True, drop_last=False, workers=0, seed=0, pin_memory=False)
    started = time.perf_counter()
    clips = sum(waveforms.shape[0] for waveforms, _, _ in loader)
    seconds = time.perf_counter() - started
    peak_rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: kilobytes
    return {"epoch_s": seconds, "epoch_clips": clips, "peak_rss_gb": peak_rss_kb * 1024 / 1e9}


def run_stage(stage: str, data: Path, cache_dir: Path) -> dict:
    """Run a stage of this script in a fresh Python process; return its JSON report."""
    result = subprocess.run([sys.executable, __file__, "--stage", stage, "--data", str(data), "--cache-dir", str(cache_dir)],
                            cwd=REPO, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--like", type=Path, default=REPO.parent / "shared" / "data" / "UrbanSound8K.csv")
    parser.add_argument("--workdir", type=Path, default=None, help="where to write the set and cache [a temp folder]")
    parser.add_argument("--keep", action="store_true", help="keep the synthetic set and cache afterwards")
    parser.add_argument("--stage", choices=("cache", "epoch"), help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    if args.stage:
        report = stage_cache(args.data, args.cache_dir) if args.stage == "cache" else stage_epoch(args.data, args.cache_dir)
        print(json.dumps(report))
        return
    if not args.like.is_file():
        sys.exit(f"{args.like} not found; pass --like PATH/TO/UrbanSound8K.csv")

    workdir = Path(tempfile.mkdtemp(prefix="bench-scale-", dir=args.workdir))
    try:
        data, cache_dir = workdir / "data", workdir / "cache"
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "core", "synth", "--out", str(data), "--like", str(args.like)],
                       cwd=REPO, check=True)
        synth_seconds = time.perf_counter() - started
        data_gb = sum(path.stat().st_size for path in data.rglob("*.wav")) / 1e9
        cache_report = run_stage("cache", data, cache_dir)
        cache_gb = sum(path.stat().st_size for path in cache_dir.glob("*.f16")) / 1e9
        epoch_report = run_stage("epoch", data, cache_dir)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    clips = cache_report["clips"]
    print(f"synth --like: {clips} clips, {data_gb:.2f} GB of WAV in {synth_seconds / 60:.1f} min "
          f"({os.cpu_count()} cores)")
    print(f"cache build:  {cache_report['cache_build_s'] / 60:.1f} min ({clips / cache_report['cache_build_s']:.0f} clips/s)")
    print(f"cache size:   {cache_gb:.3f} GB (target <= {TARGET_CACHE_GB} GB)")
    print(f"one epoch:    {epoch_report['epoch_clips']} clips in {epoch_report['epoch_s']:.1f} s; "
          f"peak RSS {epoch_report['peak_rss_gb']:.2f} GB (target <= {TARGET_RSS_GB} GB)")
    if args.keep:
        print(f"kept: {workdir}")
    values = {"synth_min": round(synth_seconds / 60, 2), "cache_build_min": round(cache_report["cache_build_s"] / 60, 2),
              "cache_gb": round(cache_gb, 3), "peak_rss_gb": round(epoch_report["peak_rss_gb"], 3)}
    passed = cache_gb <= TARGET_CACHE_GB and epoch_report["peak_rss_gb"] <= TARGET_RSS_GB
    print("RESULT " + json.dumps({"name": "data_scale_urbansound8k", "value": values,
                                  "target": {"cache_gb": TARGET_CACHE_GB, "peak_rss_gb": TARGET_RSS_GB},
                                  "pass": bool(passed)}))


if __name__ == "__main__":
    main()
