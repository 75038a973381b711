"""The epoch race: training clips/s of our pipeline vs the reference pipeline as published, side by side.

    python benchmarks/epoch.py [--solution resnet34_pcen_sam_8fold] [--steps 20] [--warmup 3] [--batch N]
                               [--device auto] [--no-compile] [--wait-workers 0,auto] [--quick]

Both arms run the trainer's own SAM step (core.train.trainer.sam_step: mixup, two passes, AdamW) of the
solution's model at its reference batch size (--batch to override), on synthetic clips written
as WAV files (UrbanSound8K's durations and formats: 22.05-48 kHz, mono and stereo, mostly 4 s):
- ours: the float16 waveform cache (built once before timing, reported), the vectorised PCEN,
  bf16 autocast, channels_last and --device-cache on CUDA (the waveform noise + gain, where the
  recipe has it, applied to the batch on the device), with and without --compile (the backbone);
- reference: every item decoded + resampled + padded from its file in 4 DataLoader workers every
  epoch (core.data.audio.load_clip), PCEN as a loop over frames (the reference's recursion), fp32
  (fp16 autocast with loss scaling for resnet34_pcen_sam_8f_200e, as its script trained).
Clips/s = batch x timed steps / seconds, after --warmup steps (CUDA synchronised). Also printed: peak
GPU memory per arm and the projected hours of the full recipe on this device (8 folds x the
recipe's epochs x the 6194 clips a fold model trains on, training steps only). On a CPU use
--quick (batch 2, 2 steps, no workers): a smoke run of both arms, as the test suite does.

Data wait: every arm also reports the share of its step time spent blocked on the loader's next():
the host's wait for the next batch. The step makes no host read (docs/gpu.md), so on a GPU the host
may queue steps ahead of the device and this share is an upper bound on the device's idle time. The
same is measured for our DataLoader path (cache +
WaveformDataset, the recipe's waveform augmentation in the workers on CPU, on the device on CUDA)
with each --wait-workers count: `auto` is what --workers auto resolves to on this device (0 on CPU,
min(8, CPUs - 1) on CUDA).
Last line: `RESULT {...}` (ratio = ours / reference, target >= 3; projected hours target < 1 for
the baseline; data_wait = {arm or "workers N": share of step time}).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TARGET_RATIO = 3.0
TARGET_HOURS = 1.0
FOLDS = 8
CLIPS_PER_FOLD_MODEL = 6194  # UrbanSound8K folds 1-8 hold 7079 clips; a fold model trains on 7/8 of them


@dataclasses.dataclass
class Arm:
    name: str
    clips_per_s: float
    peak_memory_gib: float | None
    note: str = ""
    data_wait: float = 0.0  # share of the timed steps' time blocked on the loader's next()


def write_clips(folder: Path, count: int) -> list[str]:
    """At least `count` synthetic clips (Kaggle layout); their paths."""
    from core.demo.synth import write_synthetic_dataset

    per_class_fold = max(1, math.ceil(count / 80))
    root = write_synthetic_dataset(folder / "data", seed=11, clips_per_class_fold=per_class_fold,
                                   test_clips_per_class=1, workers=None)
    import pandas as pd

    table = pd.read_csv(root / "metadata" / "kaggle_train.csv")
    return [str(root / "audio" / f"fold{fold}" / name) for fold, name in zip(table["fold"], table["slice_file_name"], strict=True)]


class DecodingDataset:
    """The reference's dataset: decode, resample and pad every item from its file, every epoch."""

    def __init__(self, paths: list[str], sample_rate: int, num_samples: int) -> None:
        self.paths, self.sample_rate, self.num_samples = paths, sample_rate, num_samples

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, item: int):
        import torch

        from core.data.audio import load_clip

        waveform = load_clip(Path(self.paths[item]), self.sample_rate, self.num_samples)
        return torch.from_numpy(waveform), item % 10, 1 + item % 2


def time_steps(model, recipe, runtime, batches, steps: int, warmup: int, scaler,
               augment_batch=None) -> tuple[float, float]:
    """Clips/s of `steps` SAM steps after `warmup` ones, over an iterator of (waveforms, labels, salience),
    and the share of that time spent waiting for the next batch. `augment_batch`: the device augmentation."""
    import torch

    from core.train.mixup import draw_mix
    from core.train.sam import SAM
    from core.train.trainer import SkipGuard, sam_step

    training = recipe.training
    sam = SAM(model.parameters(), torch.optim.AdamW, rho=training.rho, lr=training.lr,
              weight_decay=training.weight_decay)
    guard = SkipGuard(model, sam)  # one per run, as the trainer keeps one per fold
    rng, generator = np.random.default_rng(0), torch.Generator().manual_seed(0)
    model.train()
    iterator = iter(batches)
    clips, started, waiting = 0, None, 0.0
    for step in range(warmup + steps):
        if step == warmup:
            synchronise(runtime.device)
            started = time.perf_counter()
        asked = time.perf_counter()
        waveforms, labels, salience = next(iterator)
        if step >= warmup:
            waiting += time.perf_counter() - asked
        waveforms = waveforms.to(runtime.device, non_blocking=True)
        labels = labels.to(runtime.device, non_blocking=True)
        salience = salience.to(runtime.device, non_blocking=True)
        if augment_batch is not None:
            waveforms = augment_batch(waveforms)
        mix = draw_mix(len(labels), recipe.augment.mixup_alpha, recipe.augment.mixup_prob, rng, generator)
        sam_step(model, sam, scaler, waveforms, labels, salience, mix, recipe, runtime, guard=guard)
        if step >= warmup:
            clips += len(labels)
    synchronise(runtime.device)
    elapsed = time.perf_counter() - started
    return clips / elapsed, waiting / elapsed


def synchronise(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory(device) -> float | None:
    import torch

    if device.type != "cuda":
        return None
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 30
    torch.cuda.reset_peak_memory_stats(device)
    return peak


def run_ours(recipe, paths, device, batch, steps, warmup, compile_backbone: bool, cache_dir: Path,
             loader_workers: int | None = None) -> Arm:
    """Our pipeline: the device cache on CUDA (a DataLoader without workers on CPU); with `loader_workers`,
    the DataLoader path with that many workers instead (the data-wait rows)."""
    import pandas as pd
    import torch

    from core.data.cache import load_waveforms
    from core.train.data import ResidentBatches, Split, WaveformDataset, make_loader, make_resident, worker_augment
    from core.train.device_augment import epoch_augmenter, runs_on_device
    from core.train.fold import Runtime, build_on_device
    from core.train.fold import compile_backbone as compile_in_place
    from core.train.options import TrainOptions
    from core.train.precision import LossScaler, configure_backends, resolve_precision

    frontend = recipe.frontend
    started = time.perf_counter()
    cache = load_waveforms(paths, frontend.sample_rate, frontend.num_samples, cache_dir=cache_dir, progress=False)
    cache_seconds = time.perf_counter() - started
    table = pd.DataFrame({"classID": np.arange(len(paths)) % 10, "salience": 1 + np.arange(len(paths)) % 2})
    split = Split(table, cache.waveforms)
    runtime = Runtime(device, resolve_precision("auto", device), channels_last=device.type == "cuda")
    configure_backends(device)
    model = build_on_device(recipe, runtime, 0, 1)
    if compile_backbone:
        compile_in_place(model)
    rows = np.arange(len(paths))
    options = TrainOptions(out=cache_dir)  # the defaults: the augmentation runs where training runs it
    on_device = runs_on_device(recipe.augment, device, options)
    use_resident = device.type == "cuda" and loader_workers is None
    workers = loader_workers if loader_workers is not None else 0
    if use_resident:
        batches = ResidentBatches(make_resident(split, device), rows, batch, shuffle=True, drop_last=True, seed=0)
    else:
        dataset = WaveformDataset(split, rows, worker_augment(recipe.augment, device, options), frontend.sample_rate)
        batches = make_loader(dataset, batch, shuffle=True, drop_last=True, workers=workers, seed=0,
                              pin_memory=device.type == "cuda")
    scaler = LossScaler(enabled=runtime.precision == "fp16")
    clips_per_s, data_wait = time_steps(model, recipe, runtime, batches, steps, warmup, scaler,
                                        epoch_augmenter(recipe.augment, device, options, 0))
    augment = ("" if recipe.augment.wave_prob <= 0 else
               ", waveform augmentation on the device" if on_device else ", waveform augmentation in the workers")
    note = (f"{runtime.precision}, {'device cache' if use_resident else f'cache + DataLoader, {workers} workers'}"
            f"{augment}{', channels_last' if runtime.channels_last else ''}{', compiled' if compile_backbone else ''}"
            f"; cache built in {cache_seconds:.1f} s")
    del model, batches
    if device.type == "cuda":
        torch.cuda.empty_cache()
    name = f"workers {workers}" if loader_workers is not None else "ours" + (" + compile" if compile_backbone else "")
    return Arm(name, clips_per_s, peak_memory(device), note, data_wait)


def run_reference(recipe, paths, device, batch, steps, warmup, workers: int) -> Arm:
    import torch

    from core.model.ensemble import set_pcen_ops
    from core.train.data import make_loader
    from core.train.fold import Runtime, build_on_device
    from core.train.precision import LossScaler

    precision = "fp16" if recipe.name == "resnet34_pcen_sam_8f_200e" and device.type == "cuda" else "fp32"
    runtime = Runtime(device, precision, channels_last=False)
    model = build_on_device(recipe, runtime, 0, 1)
    set_pcen_ops(model, "loop")
    dataset = DecodingDataset(paths, recipe.frontend.sample_rate, recipe.frontend.num_samples)
    loader = make_loader(dataset, batch, shuffle=True, drop_last=True, workers=workers, seed=0,
                         pin_memory=device.type == "cuda")
    clips_per_s, data_wait = time_steps(model, recipe, runtime, loader, steps, warmup,
                                        LossScaler(enabled=precision == "fp16"))
    del model, loader
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return Arm("reference", clips_per_s, peak_memory(device),
               f"{precision}, decode + resample per item in {workers} workers, loop PCEN", data_wait)


def wait_worker_counts(text: str, auto_workers: int) -> list[int]:
    """--wait-workers "0,auto,2" -> [0, auto's count, 2] without repeats (auto is 0 on CPU)."""
    counts = []
    for item in text.split(","):
        item = item.strip()
        if item != "auto" and not item.isdigit():
            raise SystemExit(f"--wait-workers takes numbers or auto, comma-separated; got {item!r}")
        count = auto_workers if item == "auto" else int(item)
        if count not in counts:
            counts.append(count)
    return counts


def projected_hours(recipe, clips_per_s: float) -> float:
    return FOLDS * recipe.training.epochs * CLIPS_PER_FOLD_MODEL / clips_per_s / 3600


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--solution", default="resnet34_pcen_sam_8fold")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=None, help="[default: the recipe's batch size]")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=4, help="the reference's DataLoader workers")
    parser.add_argument("--no-compile", action="store_true", help="skip the --compile arm")
    parser.add_argument("--wait-workers", default="0,auto",
                        help="DataLoader worker counts whose data wait is measured (numbers or auto, comma-separated)")
    parser.add_argument("--quick", action="store_true", help="tiny settings for a CPU smoke run")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.warmup, args.batch, args.workers, args.no_compile = 2, 1, args.batch or 2, 0, True

    import torch

    from core import registry
    from core.train.data import resolve_workers
    from core.train.precision import resolve_device

    recipe = registry.get(args.solution)
    device = resolve_device(args.device)
    batch = args.batch or recipe.training.batch_size
    auto_workers = resolve_workers(None, device)
    wait_workers = wait_worker_counts(args.wait_workers, auto_workers)
    with tempfile.TemporaryDirectory() as work:
        paths = write_clips(Path(work), batch * (args.steps + args.warmup))
        arms = [run_ours(recipe, paths, device, batch, args.steps, args.warmup, False, Path(work) / "cache")]
        if not args.no_compile:
            arms.append(run_ours(recipe, paths, device, batch, args.steps, args.warmup, True, Path(work) / "cache"))
        arms.append(run_reference(recipe, paths, device, batch, args.steps, args.warmup, args.workers))
        wait_arms = [run_ours(recipe, paths, device, batch, args.steps, args.warmup, False, Path(work) / "cache",
                              loader_workers=workers) for workers in wait_workers]
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"{recipe.name}: batch {batch}, {args.steps} timed SAM steps after {args.warmup}, on {where}, "
          f"torch {torch.__version__}")
    for arm in arms:
        memory = "-" if arm.peak_memory_gib is None else f"{arm.peak_memory_gib:.1f} GiB"
        print(f"  {arm.name:<16} {arm.clips_per_s:9.1f} clips/s  peak GPU memory {memory:>9}  "
              f"full recipe {projected_hours(recipe, arm.clips_per_s):8.2f} h  data wait {arm.data_wait:6.2%}  "
              f"({arm.note})")
    print(f"  data wait of our DataLoader path (share of step time blocked on next(); --workers auto = "
          f"{auto_workers} on {device.type}):")
    for arm in wait_arms:
        auto = " = auto" if int(arm.name.split()[-1]) == auto_workers else ""
        print(f"    {arm.name + auto:<18} {arm.data_wait:6.2%} of the step time, {arm.clips_per_s:9.2f} clips/s  "
              f"({arm.note})")
    best = max(arms[:-1], key=lambda arm: arm.clips_per_s)
    reference = arms[-1]
    ratio = best.clips_per_s / reference.clips_per_s
    hours = projected_hours(recipe, best.clips_per_s)
    print(f"  ratio ({best.name} / reference): {ratio:.2f}x (target >= {TARGET_RATIO:g}x); full {FOLDS}-fold "
          f"x {recipe.training.epochs}-epoch recipe projected at {hours:.2f} h")
    print("RESULT " + json.dumps({
        "name": "epoch", "solution": recipe.name, "device": where, "torch": torch.__version__, "batch": batch,
        "ratio": round(ratio, 3), "target": TARGET_RATIO, "projected_hours": round(hours, 3),
        "clips_per_s": {arm.name: float(f"{arm.clips_per_s:.4g}") for arm in arms},  # 4 digits: CPU rates are < 1
        "peak_gib": {arm.name: arm.peak_memory_gib for arm in arms}, "quick": args.quick,
        "data_wait": {arm.name: round(arm.data_wait, 4) for arm in arms + wait_arms}, "auto_workers": auto_workers,
        "pass": ratio >= TARGET_RATIO and (recipe.name != "resnet34_pcen_sam_8fold" or hours < TARGET_HOURS)}))


if __name__ == "__main__":
    main()
