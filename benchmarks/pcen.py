"""PCEN speed: our vectorised trainable PCEN vs a plain Python loop over frames (forward + backward).

    .venv/bin/python benchmarks/pcen.py [--threads 2] [--repeats 15]
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/pcen.py  # on a machine shared with other jobs

Inputs are real magnitude mel spectrograms (the recipe's mel transform) of 128 noise clips with
log-uniform gains, shapes (128, 1, 64, 401) and (128, 1, 128, 401). Both versions compute
gradients for alpha, delta and r. Prints median times after warm-up, the float32 max abs
difference, and a final `RESULT {...}` line (ratio = the smaller of the two speed-ups; target 4).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

# OpenMP's wait policy is the caller's (unset: workers spin briefly between parallel ops, as in a training
# run). Idle, PASSIVE (sleeping workers) makes ours ~2x slower (each of its many parallel ops wakes them);
# under heavy load, spinning workers steal the main thread's core and PASSIVE is the better choice.
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from timing import median_seconds  # noqa: E402 (benchmarks/timing.py)

from core.model.pcen import TrainablePCEN, pcen_loop, smoother_coefficient  # noqa: E402

TARGET_SPEEDUP = 4.0
TOLERANCE = 1e-5
SHAPES = ((64, 1024), (128, 2048))  # (n_mels, n_fft) of the baseline and of the 200e+ recipes
BATCH = 128


def mel_energies(n_mels: int, n_fft: int, batch: int, seed: int = 0) -> torch.Tensor:
    """Magnitude mel spectrograms [batch, 1, n_mels, 401] of white noise with gains in [1e-3, 1]."""
    from torchaudio.transforms import MelSpectrogram

    generator = torch.Generator().manual_seed(seed)
    gains = 10 ** (-3 * torch.rand(batch, 1, generator=generator))
    waveforms = torch.randn(batch, 128000, generator=generator) * gains
    mel = MelSpectrogram(sample_rate=32000, n_fft=n_fft, hop_length=320, n_mels=n_mels, f_min=20,
                         f_max=16000, power=1.0)
    with torch.no_grad():
        return mel(waveforms).unsqueeze(1).contiguous()


def measure(n_mels: int, n_fft: int, repeats: int) -> dict:
    """Timings and agreement of the two versions on one shape."""
    energy = mel_energies(n_mels, n_fft, BATCH)
    s = float(torch.tensor(smoother_coefficient(320, 32000, 0.06)))  # the float32 buffer value
    ours = TrainablePCEN(s)
    loop_params = [torch.nn.Parameter(torch.tensor(value)) for value in (0.98, 2.0, 0.5)]
    grad_output = torch.randn_like(energy)

    def run_ours() -> torch.Tensor:
        ours.zero_grad(set_to_none=True)
        out = ours(energy)
        out.backward(grad_output)
        return out

    def run_loop() -> torch.Tensor:
        for param in loop_params:
            param.grad = None
        out = pcen_loop(energy, s, *loop_params)
        out.backward(grad_output)
        return out

    max_diff = (run_ours() - run_loop()).abs().max().item()
    grad_diff = max(abs(a.grad.item() - b.grad.item()) / max(abs(b.grad.item()), 1.0)
                    for a, b in zip((ours.alpha, ours.delta, ours.r), loop_params, strict=True))
    loop_time, ours_time = median_seconds([run_loop, run_ours], repeats, warmup=3)
    return {"shape": list(energy.shape), "loop_ms": 1e3 * loop_time, "ours_ms": 1e3 * ours_time,
            "speedup": loop_time / ours_time, "max_abs_diff": max_diff, "grad_rel_diff": grad_diff}


def main() -> None:
    """Run both shapes, print the table and the RESULT line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"PCEN forward+backward, float32, {args.threads} threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset (the default, as in training)')}, "
          f"median of {args.repeats} after warm-up")
    print(f"{'shape':>22} {'loop ms':>9} {'ours ms':>9} {'speed-up':>9} {'max|diff|':>10} {'grad rel':>9}")
    rows = [measure(n_mels, n_fft, args.repeats) for n_mels, n_fft in SHAPES]
    for row in rows:
        print(f"{str(tuple(row['shape'])):>22} {row['loop_ms']:9.1f} {row['ours_ms']:9.1f} "
              f"{row['speedup']:8.2f}x {row['max_abs_diff']:10.2e} {row['grad_rel_diff']:9.1e}")
    ratio = min(row["speedup"] for row in rows)
    accurate = all(row["max_abs_diff"] <= TOLERANCE for row in rows)
    passed = ratio >= TARGET_SPEEDUP and accurate
    print("RESULT " + json.dumps({"name": "pcen", "ratio": round(ratio, 2), "target": TARGET_SPEEDUP,
                                  "pass": passed}))


if __name__ == "__main__":
    main()
