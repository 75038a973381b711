"""Device and numeric precision: `--device auto|cpu|cuda`, `--precision auto|fp32|bf16|fp16`.

fp16 needs loss scaling; with SAM both passes must see unscaled gradients and a step whose
gradients overflow is skipped entirely (the reference stepped on still-scaled pass-2 gradients).
Each SAM pass unscales and checks its gradients in one fused kernel and costs one host
synchronisation (the skip decision); bf16 and fp32 keep the finiteness check with scale 1.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from core.runtime import autocast, configure_backends, resolve_device, resolve_precision  # noqa: F401  (moved; kept importable here)


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
