"""Classification speed: windows/s of an 8-fold ensemble on recordings, ours vs a scripted loop; ORT vs eager.

    .venv/bin/python benchmarks/classify.py [--solution resnet34_pcen_sam_8fold] [--files 4] [--seconds 12]
                                            [--folds 8] [--repeats 3] [--no-onnx]

Writes `--folds` checkpoints of the solution (fresh weights whose BatchNorm statistics saw real-looking
clips: the cost of a trained model is the same) and `--files` recordings of `--seconds` at 44.1 kHz
stereo, then times
- ours: `core.infer.classify.classify_files` (each file decoded once, windows of all files batched, each
  batch through every fold model, the mel spectrogram once per batch for all folds);
- the loop a user would script today: for each fold model, for each file: decode + resample, then
  one window at a time through the model;
- onnxruntime vs PyTorch eager on the same batched windows (the exported 8-fold graph vs the
  FoldEnsemble it was exported from), unless --no-onnx.
Prints windows/s (one window = one clip through all fold models) and the ratios; the last line is
`RESULT {...}` (ratio = ours / scripted; targets: ours >= 1.5x the loop, onnxruntime >= eager).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from conftest import demo_clip, save_fold_checkpoints  # noqa: E402  (the tests' stand-in checkpoints)
from timing import median_seconds  # noqa: E402 (benchmarks/timing.py)

TARGET_RATIO = 1.5


def write_recordings(folder: Path, files: int, seconds: float) -> list[Path]:
    import soundfile

    paths = []
    for index in range(files):
        clips = [demo_clip(index * 7 + part, 44100, 44100 * 4) for part in range(int(np.ceil(seconds / 4)))]
        signal = np.concatenate(clips)[: int(seconds * 44100)]
        path = folder / f"recording{index}.wav"
        soundfile.write(path, np.stack([signal, 0.7 * signal], axis=1), 44100)
        paths.append(path)
    return paths


def scripted_loop(models, files: list[Path], sample_rate: int, clip: int, hop: int) -> int:
    """What a user writes today: every fold model re-decodes every file and runs one window at a time."""
    import torch

    from core.data.audio import load_signal
    from core.infer.classify import cut_window, window_starts

    windows = 0
    with torch.inference_mode():
        for fold_model in models:
            for path in files:
                signal = load_signal(path, sample_rate)
                for start in window_starts(len(signal), clip, hop):
                    torch.softmax(fold_model.model(torch.from_numpy(cut_window(signal, start, clip))[None]), dim=1)
                    windows += 1
    return windows // len(models)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--solution", default="resnet34_pcen_sam_8fold")
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--folds", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-onnx", action="store_true")
    args = parser.parse_args()

    import torch

    from core.data.audio import load_signal
    from core.infer.classify import classify_files, cut_window, onnx_predictor, torch_predictor, window_starts
    from core.infer.fold_models import load_fold_models
    from core.runtime import Runtime

    with tempfile.TemporaryDirectory() as work:
        root = Path(work)
        save_fold_checkpoints(root, args.solution, folds=tuple(range(1, args.folds + 1)))
        files = write_recordings(root, args.files, args.seconds)
        spec = torch_predictor([args.solution], [1.0], "mean", root, device="cpu")
        models = load_fold_models(root / args.solution, args.solution,
                                  Runtime(torch.device("cpu"), "fp32", channels_last=False))
        hop = spec.sample_rate
        windows = sum(len(f.starts_s) for f in classify_files(files, spec, batch_size=args.batch_size).files)
        ours, scripted = median_seconds([
            lambda: classify_files(files, spec, batch_size=args.batch_size),
            lambda: scripted_loop(models, files, spec.sample_rate, spec.num_samples, hop),
        ], repeats=args.repeats)
        ratio = scripted / ours
        print(f"{args.folds}-fold {args.solution}, {args.files} files x {args.seconds:g} s at 44.1 kHz stereo, "
              f"{windows} windows, torch {torch.__version__}, {torch.get_num_threads()} threads")
        print(f"  ours (decode once, batched, mel shared): {windows / ours:7.2f} windows/s ({ours:.2f} s)")
        print(f"  scripted loop (per fold, per file, per window): {windows / scripted:7.2f} windows/s "
              f"({scripted:.2f} s)")
        print(f"  ratio {ratio:.2f}x (target >= {TARGET_RATIO}x)")
        result = {"name": "classify", "ratio": round(ratio, 2), "target": TARGET_RATIO, "pass": ratio >= TARGET_RATIO,
                  "ours_windows_per_s": round(windows / ours, 2), "scripted_windows_per_s": round(windows / scripted, 2)}
        if not args.no_onnx:
            from core.export import export_onnx

            started = time.perf_counter()
            export_onnx(root / args.solution, args.solution, root / "model.onnx")
            exported = time.perf_counter() - started
            batch = np.stack([cut_window(signal, start, spec.num_samples)
                              for signal in (load_signal(p, spec.sample_rate) for p in files)
                              for start in window_starts(len(signal), spec.num_samples, hop)])[: args.batch_size]
            runtime = onnx_predictor(root / "model.onnx")
            eager, onnx_time = median_seconds([lambda: spec.predict(batch, (1,)), lambda: runtime.predict(batch, (1,))],
                                              repeats=args.repeats)
            difference = float(np.abs(spec.predict(batch, (1,)) - runtime.predict(batch, (1,))).max())
            print(f"  same {len(batch)} windows: eager {len(batch) / eager:7.2f} windows/s, onnxruntime "
                  f"{len(batch) / onnx_time:7.2f} windows/s ({eager / onnx_time:.2f}x; export took {exported:.0f} s; "
                  f"max abs difference {difference:.1e})")
            result.update({"onnx_vs_eager": round(eager / onnx_time, 2), "onnx_pass": onnx_time <= eager,
                           "onnx_max_abs_difference": difference})
            result["pass"] = result["pass"] and result["onnx_pass"]
        print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
