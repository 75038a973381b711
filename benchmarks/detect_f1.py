"""Event-based F1 of detect's per-window path vs --backbone-once, on soundscapes, with sed_eval.

    .venv/bin/python benchmarks/detect_f1.py [--epochs 15] [--n 60] [--clips 4] [--threads 2]

No trained checkpoints or UrbanSound8K audio ship with the repo and this machine has no GPU, so this trains
a small stand-in on the synthetic demo set (official layout): `resnet34_pcen_sam_8fold`'s recipe (no mixup) on the tests'
small frontend (8 kHz, 32 mels, the same 100 mel frames per second) with timm's `test_resnet` backbone (same
stem and stage strides), kaggle fold model 1 (trains on folds 2-8). Soundscapes (URBAN-SED settings) are made
from folds 9-10, which it never saw; thresholds are tuned out of fold on soundscapes of fold 1 for each path
(tune-detect's grid), then both paths detect the test soundscapes at hop 0.5 s. The last line is
`RESULT {...}` with the event- and segment-based F1 of each path and their difference; the condition for
offering --backbone-once by default is |event F1 difference| <= 0.01.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from conftest import tiny  # noqa: E402  (the tests' small frontend)

BASELINE = "resnet34_pcen_sam_8fold"
HOP = 0.5


def main() -> None:
    import torch

    from core.data.metadata import load_source
    from core.data.soundscapes import SoundscapeSettings, write_soundscapes
    from core.demo.synth import write_synthetic_dataset
    from core.infer.detect import detect_files, events_frame
    from core.infer.events import PostProcessing, median_frames_for
    from core.infer.predictors import torch_predictor
    from core.infer.thresholds import choose_thresholds, score_out_of_fold
    from core.sed.evaluate import event_metrics
    from core.sed.formats import read_reference
    from core.train.options import TrainOptions
    from core.train.solution import train_solution

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--n", type=int, default=60, help="test soundscapes (folds 9-10) and tuning ones (fold 1)")
    parser.add_argument("--clips", type=int, default=4, help="demo clips per class and fold")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--keep", type=Path, help="keep the data, the solution and the soundscapes in this folder")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        root = args.keep if args.keep is not None else Path(scratch)
        data = write_synthetic_dataset(root / "data", seed=5, clips_per_class_fold=args.clips,
                                       test_clips_per_class=1, layout="official")
        recipe = tiny(BASELINE).derive(training=dict(epochs=args.epochs, batch_size=32),
                                       augment=dict(mixup_prob=0.0))   # a stand-in: learn fast
        options = TrainOptions(out=root / "solutions" / BASELINE, submissions=root / "submissions", folds=(1,),
                               epochs=args.epochs, device="cpu", precision="fp32", progress=False)
        summary = train_solution(recipe, load_source(data), options)
        print(f"trained fold model 1 in {time.perf_counter() - started:.0f} s: validation {summary.cv_mean}, "
              f"test {summary.test}", flush=True)
        spec = torch_predictor([BASELINE], [1.0], "mean", root / "solutions", "cpu", "fp32")
        settings = SoundscapeSettings()
        test = write_soundscapes(data, (9, 10), root / "test", args.n, 0, settings)
        tuning = write_soundscapes(data, (1,), root / "fold1", args.n, 1, settings, name_prefix="fold1")
        reference, files = read_reference(test)
        base = PostProcessing.uniform(0.5, 0.3, median_frames_for(1.5, HOP), 0.5, 0.5)
        results: dict[str, float] = {}
        for path_name, once in (("per_window", False), ("backbone_once", True)):
            def scoring(_key, once=once):  # the one fold model, in this path
                from dataclasses import replace

                return replace(spec, predict_strip=lambda *a, once=once: spec.predict_strip(*a[:4], once))

            runs = score_out_of_fold([1], "kaggle", scoring, lambda fold: tuning, base, HOP)
            tuned = choose_thresholds(runs, base).rules
            for label, rules in (("hand_set", base), ("tuned", tuned)):
                detected = detect_files([test / "audio" / name for name in files], spec, rules, hop_seconds=HOP,
                                        backbone_once=once)
                figures = event_metrics(events_frame(detected), reference, files)
                for kind in ("event", "segment"):  # sed_eval's F1 is NaN when nothing is detected: 0
                    value = figures[f"{kind}_based"]["overall"]["f1"]
                    results[f"{path_name}_{label}_{kind}_f1"] = round(value if value == value else 0.0, 4)
                print(f"{path_name:14s} {label:9s} event F1 {results[f'{path_name}_{label}_event_f1']:.4f}  "
                      f"segment F1 {results[f'{path_name}_{label}_segment_f1']:.4f}", flush=True)
        for label in ("hand_set", "tuned"):
            results[f"event_f1_difference_{label}"] = round(
                results[f"backbone_once_{label}_event_f1"] - results[f"per_window_{label}_event_f1"], 4)
        results.update({f"validation_{key}": round(float(value), 4) for key, value in summary.cv_mean.items()})
    print("RESULT " + json.dumps(results))


if __name__ == "__main__":
    main()
