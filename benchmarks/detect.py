"""Detection speed: real-time factor (audio seconds per second of computation) of `detect` and `monitor`.

    .venv/bin/python benchmarks/detect.py [--solution resnet34_pcen_sam_8fold] [--seconds 30] [--folds 8]
                                          [--threads 1,2] [--repeats 1] [--warmup 1]
                                          [--no-onnx]

Writes `--folds` stand-in checkpoints (fresh weights: same cost as trained ones) and one recording of
`--seconds` at 44.1 kHz, then times at hop 0.5 s, for each torch thread count, the paths of one step
interleaved in the same process (benchmarks/timing.py), so a shared machine's load hits them alike:
- detect, ours (core.infer.detect.detect_files: decoded and resampled once, windows batched as strips whose
  shared mel frames are computed once, models in their inference form: BatchNorm folded, channels_last) vs
  the same with the models as trained ("trained") vs the naive path (every window decoded, resampled and run
  on its own, models as trained) vs --backbone-once (PCEN and backbone once per strip), for one fold and for
  the `--folds` ensemble;
- monitor (core.infer.stream.StreamDetector) for one fold, fed hop-long blocks (live) and blocks of 32 hops (a
  pipe that is ahead);
- one fold through onnxruntime (per window, `threads` intra-op threads), unless --no-onnx.
The last line is `RESULT {...}` (with nproc and the load average before and after); targets: one fold >= 20x
real time on one thread, the 8-fold ensemble >= 5x on two threads, ours >= 1.5x naive. It also gives the
model's GFLOP per window, this CPU's sgemm GFLOP/s per thread count, and `ceiling_<k>fold_t<threads>`: the
real-time factor if the network ran at sgemm speed (a practical ceiling for fp32 per-window scoring by direct
convolution, not a hard bound).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from conftest import demo_clip, save_fold_checkpoints  # noqa: E402  (the tests' stand-in checkpoints)
from timing import median_seconds  # noqa: E402 (benchmarks/timing.py)

HOP = 0.5


def naive_detect(path: Path, spec, hop_seconds: float) -> None:
    """Every window decoded, resampled and classified on its own."""
    from core.data.audio import load_signal
    from core.infer.detect import grid_for

    grid = grid_for(spec, hop_seconds)
    count = grid.frame_count(len(load_signal(path, spec.sample_rate)))
    for frame in range(count):
        signal = load_signal(path, spec.sample_rate)  # what a per-window script does: decode for each window
        spec.predict(grid.window(signal, frame)[None], (1, 2))


def stream(path: Path, spec, rules, hops_per_block: int) -> None:
    """monitor's detector fed blocks of `hops_per_block` hops, in process: 1 = a live source, 32 = a pipe that is
    ahead (monitor reads up to a batch of 32 hops at a time, from a pipe it widens to hold them: run_pipe)."""
    from core.data.audio import load_signal
    from core.infer.stream import StreamDetector

    signal = load_signal(path, spec.sample_rate)
    detector = StreamDetector(spec, rules, HOP, (1, 2), batch_size=32)
    block = detector.grid.hop * hops_per_block
    for start in range(0, len(signal), block):
        detector.feed(signal[start:start + block])
    detector.finish()


def window_gflop(spec_solution: str) -> float:
    """GFLOP of one window through the solution's model (torch's flop counter: convolutions and matmuls)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from core import registry
    from core.model.network import build_model

    recipe = registry.get(spec_solution)
    model = build_model(recipe).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, recipe.frontend.num_samples), torch.ones(1, dtype=torch.int64))
    return counter.get_total_flops() / 1e9


def sgemm_gflops(size: int = 2048, repeats: int = 5) -> float:
    """This CPU's float32 matrix-multiply speed on torch's current thread count: a practical ceiling for
    convolutions, which oneDNN runs as blocked matrix multiplies."""
    import time

    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size ** 3 * repeats / (time.perf_counter() - start) / 1e9


def main() -> None:
    import soundfile
    import torch

    from core.export import export_onnx
    from core.infer.detect import detect_files
    from core.infer.events import PostProcessing
    from core.infer.predictors import onnx_predictor, torch_predictor

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--solution", default="resnet34_pcen_sam_8fold")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--folds", type=int, default=8)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (oneDNN builds its kernels)")
    parser.add_argument("--no-onnx", action="store_true")
    args = parser.parse_args()
    rules = PostProcessing.uniform(0.5, 0.3)
    results: dict[str, float | str] = {"nproc": os.cpu_count(), "load_before": " ".join(
        f"{value:.2f}" for value in os.getloadavg())}
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        save_fold_checkpoints(root / "one", args.solution, folds=(1,))
        save_fold_checkpoints(root / "many", args.solution, folds=tuple(range(1, args.folds + 1)))
        signal = np.concatenate([demo_clip(part, 44100, 44100 * 4) for part in range(int(np.ceil(args.seconds / 4)))])
        path = root / "street.wav"
        soundfile.write(path, np.stack([signal, signal], axis=1)[: int(args.seconds * 44100)], 44100)
        one = torch_predictor([args.solution], [1.0], "mean", root / "one", "cpu", "fp32")
        many = torch_predictor([args.solution], [1.0], "mean", root / "many", "cpu", "fp32")
        # The models as trained (no inference form): the default before it, and what the naive script runs.
        one_trained = torch_predictor([args.solution], [1.0], "mean", root / "one", "cpu", "fp32", optimise=False)
        many_trained = torch_predictor([args.solution], [1.0], "mean", root / "many", "cpu", "fp32", optimise=False)
        if not args.no_onnx:
            export_onnx(root / "one" / args.solution, args.solution, root / "one.onnx")
        n = args.folds
        gflop = window_gflop(args.solution)
        results["gflop_per_window"] = round(gflop, 3)
        for threads in [int(t) for t in args.threads.split(",")]:
            torch.set_num_threads(threads)
            steps = {f"detect_1fold_t{threads}": lambda: detect_files([path], one, rules, hop_seconds=HOP),
                     f"trained_1fold_t{threads}": lambda: detect_files([path], one_trained, rules, hop_seconds=HOP),
                     f"naive_1fold_t{threads}": lambda: naive_detect(path, one_trained, HOP),
                     f"once_1fold_t{threads}": lambda: detect_files([path], one, rules, hop_seconds=HOP,
                                                                    backbone_once=True),
                     f"monitor_live_1fold_t{threads}": lambda: stream(path, one, rules, 1),
                     f"monitor_pipe_1fold_t{threads}": lambda: stream(path, one, rules, 32),
                     f"detect_{n}fold_t{threads}": lambda: detect_files([path], many, rules, hop_seconds=HOP),
                     f"trained_{n}fold_t{threads}": lambda: detect_files([path], many_trained, rules, hop_seconds=HOP),
                     f"naive_{n}fold_t{threads}": lambda: naive_detect(path, many_trained, HOP),
                     f"once_{n}fold_t{threads}": lambda: detect_files([path], many, rules, hop_seconds=HOP,
                                                                     backbone_once=True)}
            if not args.no_onnx:  # per window (fixed-length input), onnxruntime's own pool of `threads` threads
                ort = onnx_predictor(root / "one.onnx", threads)
                steps[f"onnxruntime_1fold_t{threads}"] = lambda ort=ort: detect_files([path], ort, rules,
                                                                                      hop_seconds=HOP)
            seconds = median_seconds(list(steps.values()), args.repeats, args.warmup)
            # The real-time factor at which the network alone would run at sgemm speed: how close a row is to
            # what fp32 per-window scoring can reach on this CPU (windows per audio second = 1 / hop).
            results[f"sgemm_gflops_t{threads}"] = round(sgemm_gflops(), 1)
            for folds in (1, n):
                results[f"ceiling_{folds}fold_t{threads}"] = round(
                    results[f"sgemm_gflops_t{threads}"] / (gflop * folds / HOP), 2)
            for name, took in zip(steps, seconds, strict=True):
                results[name] = float(f"{args.seconds / took:.4g}")
                print(f"{name:24s} {results[name]:8.4g}x real time", flush=True)
        for key in [k for k in results if k.startswith("detect_")]:
            for other in ("naive", "trained", "once"):
                results[f"ratio_{key.removeprefix('detect_')}_vs_{other}"] = round(
                    results[key] / results[key.replace("detect_", f"{other}_")], 2)
    results["load_after"] = " ".join(f"{value:.2f}" for value in os.getloadavg())
    print("RESULT " + json.dumps(results))


if __name__ == "__main__":
    main()
