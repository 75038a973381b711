"""Device and numeric precision: `--device auto|cpu|cuda`, `--precision auto|fp32|bf16|fp16`.

fp16 needs loss scaling; with SAM both passes must see unscaled gradients and a step whose
gradients overflow is skipped entirely (the reference stepped on still-scaled pass-2 gradients).
Each SAM pass unscales and checks its gradients in one fused kernel and costs one host
synchronisation (the skip decision); bf16 and fp32 keep the finiteness check with scale 1.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from core.errors import UserError


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when available; asking for CUDA without it is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA device is visible; use --device cpu or auto")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise UserError(f"unknown --device {name!r}; use auto, cpu or cuda[:N]")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> str:
    """'auto': bf16 on a CUDA GPU with bf16 tensor cores (Ampere, compute capability 8, and newer; ROCm),
    fp16 on older CUDA GPUs, fp32 on CPU."""
    if name not in ("auto", "fp32", "bf16", "fp16"):
        raise UserError(f"unknown --precision {name!r}; use auto, fp32, bf16 or fp16")
    if name != "auto":
        return name
    if device.type == "cuda":
        # Not torch.cuda.is_bf16_supported(): it also says yes where bf16 is only emulated (V100, T4), slowly.
        native_bf16 = bool(torch.version.hip) or torch.cuda.get_device_capability(device)[0] >= 8
        return "bf16" if native_bf16 else "fp16"
    return "fp32"


def configure_backends(device: torch.device) -> None:
    """Speed settings for a CUDA run: cuDNN autotuning (every batch has the same shape, so the search pays off).

    TF32 matmuls stay off: the float32 frontend's mel filterbank product would lose precision.
    Nothing changes on CPU, where runs stay bit-reproducible.
    """
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The autocast context for a forward pass (a no-op in fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


@dataclass
class LossScaler:
    """Dynamic loss scaling for fp16 (disabled = scale 1 for fp32/bf16), SAM-aware.

    backward() scales the loss; unscale() divides the gradients back and reports whether they are
    all finite, so the caller can skip the whole SAM step on overflow.
    """

    enabled: bool
    scale: float = 2.0 ** 16
    growth_factor: float = 2.0
    backoff_factor: float = 0.5
    growth_interval: int = 2000
    good_steps: int = 0

    def backward(self, loss: torch.Tensor) -> None:
        (loss * self.scale if self.enabled else loss).backward()

    @torch.no_grad()
    def unscale(self, params: list[torch.nn.Parameter]) -> bool:
        """Unscale gradients in place; True when every gradient is finite."""
        return bool(self.unscale_and_check(params).item())

    @torch.no_grad()
    def unscale_and_check(self, params: list[torch.nn.Parameter]) -> torch.Tensor:
        """Unscale gradients in place and return a 0-dim tensor on their device: 1.0 if all are finite, else 0.0.

        No host synchronisation. fp16: one fused kernel (the one torch's GradScaler uses); the scale
        is a power of two, so unscaling is exact. Disabled (fp32/bf16): gradients are only read, via
        their max-abs norms (inf or NaN anywhere makes that norm non-finite).
        """
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return torch.ones(())
        if not self.enabled:
            return torch.stack(torch._foreach_norm(grads, float("inf"))).isfinite().all().to(torch.float32)
        device = grads[0].device
        found_non_finite = torch.zeros(1, device=device)
        inverse_scale = torch.full((1,), 1.0 / self.scale, device=device)
        torch._amp_foreach_non_finite_check_and_unscale_(grads, found_non_finite, inverse_scale)
        return (1.0 - found_non_finite).squeeze(0)

    def update(self, step_ok: bool) -> None:
        if not self.enabled:
            return
        if not step_ok:
            self.scale *= self.backoff_factor
            self.good_steps = 0
            return
        self.good_steps += 1
        if self.good_steps % self.growth_interval == 0:
            self.scale *= self.growth_factor

    def state_dict(self) -> dict:
        return {"scale": self.scale, "good_steps": self.good_steps}

    def load_state_dict(self, state: dict) -> None:
        self.scale = float(state["scale"])
        self.good_steps = int(state["good_steps"])
