"""One SAM training step of resnet34_pcen_sam_8fold at batch 16 on CPU, split into the frontend and the rest.

    .venv/bin/python benchmarks/step.py [--batch 16] [--repeats 5] [--threads 1] [--precision fp32]

Three timings, alternated within each round so that a shared machine's drift hits them alike
(medians of --repeats rounds after one warm-up round):
- step:     the trainer's own sam_step (mixup, two forward/backward passes, SAM perturbation, AdamW);
- frontend: what that step spends in the frontend, on its own: two passes (one per SAM pass) of
            mel spectrogram (no grad) + trainable PCEN + SpecAugment, forward and PCEN's backward;
- rest:     the same sam_step on a copy of the model whose frontend is replaced by precomputed
            features (a leaf that still receives its input gradient, as PCEN's output does).
Prints the medians, frontend share = frontend / step (target <= 5%) and (frontend + rest) / step as a
consistency check.

Then the launch count of SAM's own work (gradient norm, perturbation, restore) and of the whole step,
with SAM's fused `torch._foreach_*` ops and with the per-parameter loop they replaced (`PerParameterSAM`
below): top-level operator calls in a torch.profiler trace on the CPU, each of which is at least one
kernel launch on CUDA (a fused foreach op is one launch per chunk of tensors there; on the CPU it loops
inside the one call). The last line is `RESULT {"name": "step", "ratio": <frontend share>, "target": 0.05,
"pass": <share <= target>}`. One thread by default: on a busy machine two OpenMP threads wait on each
other and the medians stop meaning anything; pass --threads N on a quiet machine.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from timing import median_seconds  # noqa: E402 (benchmarks/timing.py)
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from core import registry  # noqa: E402
from core.model.network import build_model  # noqa: E402
from core.recipe import Recipe  # noqa: E402
from core.train.fold import Runtime  # noqa: E402
from core.train.mixup import Mix, mix_batch  # noqa: E402
from core.train.precision import LossScaler  # noqa: E402
from core.train.sam import SAM  # noqa: E402
from core.train.trainer import SkipGuard, sam_step  # noqa: E402

SOLUTION = "resnet34_pcen_sam_8fold"
TARGET_SHARE = 0.05


class PrecomputedFeatures(nn.Module):
    """Stands in for the frontend: returns fixed features (a leaf with requires_grad, like PCEN's output)."""

    def __init__(self, features: torch.Tensor) -> None:
        super().__init__()
        self.features = features.detach().requires_grad_(True)

    def mel_energies(self, waveforms: torch.Tensor) -> list[torch.Tensor]:
        return [waveforms]  # the model asks its frontend for mel energies first; the features stand for both

    def forward(self, inputs: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        self.features.grad = None
        return self.features


class PerParameterSAM(SAM):
    """SAM before the fused ops (the reference for the launch count): every stage walks the parameters."""

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        grad_norm = self.grad_norm()
        for group in self.param_groups:
            scale = group["rho"] / (grad_norm + 1e-12)
            for param in group["params"]:
                if param.grad is None:
                    continue
                self.state[param]["old_p"] = param.detach().clone()
                step = param.grad * scale.to(param)
                if group["adaptive"]:
                    step = step * param.pow(2)
                param.add_(step)
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def restore(self) -> None:
        for group in self.param_groups:
            for param in group["params"]:
                old = self.state[param].pop("old_p", None)
                if old is not None:
                    param.copy_(old)

    @torch.no_grad()
    def grad_norm(self) -> torch.Tensor:
        norms = [((param.abs() if group["adaptive"] else 1.0) * param.grad).norm(p=2)
                 for group in self.param_groups for param in group["params"] if param.grad is not None]
        if not norms:
            return torch.tensor(0.0)
        return torch.norm(torch.stack([norm.to(norms[0].device) for norm in norms]), p=2)


def top_level_calls(work: Callable[[], object]) -> int:
    """Operator calls made directly by `work` (nested ones, e.g. a foreach op's per-tensor loop, not counted)."""
    with profile(activities=[ProfilerActivity.CPU]) as trace:
        work()
    return sum(1 for event in trace.events() if event.cpu_parent is None)


def launch_counts(recipe: Recipe, size: int) -> dict[str, dict[str, int]]:
    """{"fused" | "loop": {"sam": calls of first_step + restore, "step": calls of a whole sam_step}}."""
    return {name: _launch_counts_of(cls, recipe, size) for name, cls in (("fused", SAM), ("loop", PerParameterSAM))}


def _launch_counts_of(sam_cls: type, recipe: Recipe, size: int) -> dict[str, int]:
    runtime = Runtime(torch.device("cpu"), "fp32", channels_last=False)
    waveforms, labels, salience, mix = batch(recipe, size)
    torch.manual_seed(0)
    model = build_model(recipe).train()
    sam = sam_cls(model.parameters(), torch.optim.AdamW, rho=recipe.training.rho, lr=recipe.training.lr,
                  weight_decay=recipe.training.weight_decay)
    scaler = LossScaler(enabled=False)
    guard = SkipGuard(model, sam)  # the trainer keeps one per fold

    def step() -> object:
        return sam_step(model, sam, scaler, waveforms, labels, salience, mix, recipe, runtime, guard=guard)

    def perturb_and_restore() -> None:
        sam.first_step()
        sam.restore()

    step()  # warm-up: AdamW's state and SAM's buffers exist from here on
    step()  # and the skip guard's mirrors of that state
    model(waveforms, salience).logsumexp(1).mean().backward()
    return {"sam": top_level_calls(perturb_and_restore), "step": top_level_calls(step)}


def batch(recipe: Recipe, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Mix]:
    """Noise clips with log-uniform gains, labels, salience and one fixed mixup draw."""
    generator = torch.Generator().manual_seed(0)
    gains = 10 ** (-2 * torch.rand(size, 1, generator=generator))
    waveforms = torch.randn(size, recipe.frontend.num_samples, generator=generator) * gains
    labels = torch.randint(0, 10, (size,), generator=generator)
    mix = Mix(0.4, torch.randperm(size, generator=generator))
    return waveforms, labels, torch.ones(size, dtype=torch.int64), mix


def make_steps(recipe: Recipe, size: int, precision: str) -> dict[str, Callable[[], object]]:
    """The three timed callables: the full step, the frontend's share of it, and the step without it."""
    runtime = Runtime(torch.device("cpu"), precision, channels_last=False)
    waveforms, labels, salience, mix = batch(recipe, size)
    model = build_model(recipe).train()
    rest_model = copy.deepcopy(model)
    audio_input = model.audio_input
    with torch.no_grad():
        features = audio_input.spec_augment(audio_input.frontend(mix_batch(waveforms, mix)))
    rest_model.audio_input.frontend = PrecomputedFeatures(features)
    rest_model.audio_input.spec_augment = nn.Identity()
    optimisers = {name: SAM(net.parameters(), torch.optim.AdamW, rho=recipe.training.rho, lr=recipe.training.lr,
                            weight_decay=recipe.training.weight_decay)
                  for name, net in (("step", model), ("rest", rest_model))}
    scaler = LossScaler(enabled=precision == "fp16")
    gradient = torch.randn_like(features)
    guards = {name: SkipGuard(net, optimisers[name]) for name, net in (("step", model), ("rest", rest_model))}

    def full_step() -> object:
        return sam_step(model, optimisers["step"], scaler, waveforms, labels, salience, mix, recipe, runtime,
                        guard=guards["step"])

    def frontend_only() -> object:
        inputs = mix_batch(waveforms, mix)
        for _ in range(2):  # one per SAM pass, each with new masks and PCEN's backward (float32 under any autocast)
            output = audio_input.spec_augment(audio_input.frontend(inputs))
            output.backward(gradient)
        return output

    def rest_only() -> object:
        return sam_step(rest_model, optimisers["rest"], scaler, waveforms, labels, salience, mix, recipe, runtime,
                        guard=guards["rest"])

    return {"step": full_step, "frontend": frontend_only, "rest": rest_only}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    recipe = registry.get(SOLUTION)
    steps = make_steps(recipe, args.batch, args.precision)
    step, frontend, rest = median_seconds(list(steps.values()), args.repeats)
    share = frontend / step
    print(f"{SOLUTION}, one SAM step at batch {args.batch} on CPU ({args.precision}, {args.threads} thread(s)), "
          f"medians of {args.repeats} rounds:")
    print(f"  step      {step * 1000:9.1f} ms")
    print(f"  frontend  {frontend * 1000:9.1f} ms   (mel + PCEN + SpecAugment, both SAM passes, with PCEN's backward)")
    print(f"  rest      {rest * 1000:9.1f} ms   (input BN, backbone, head, loss, SAM + AdamW)")
    print(f"  frontend share {share:.2%} of the step (target <= {TARGET_SHARE:.0%}); "
          f"(frontend + rest) / step = {(frontend + rest) / step:.3f}")
    counts = launch_counts(recipe, args.batch)
    parameters = sum(1 for _ in build_model(recipe).parameters())
    for stage, what in (("sam", "SAM's norm + perturbation + restore"), ("step", "whole SAM step")):
        fused, loop = counts["fused"][stage], counts["loop"][stage]
        print(f"  launches, {what}: {loop} per-parameter -> {fused} fused ({loop / fused:.1f}x fewer; "
              f"{parameters} parameter tensors)")
    print("RESULT " + json.dumps({"name": "step", "ratio": round(share, 4), "target": TARGET_SHARE,
                                  "pass": share <= TARGET_SHARE}))


if __name__ == "__main__":
    main()
