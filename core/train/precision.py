"""Device and numeric precision: `--device auto|cpu|cuda`, `--precision auto|fp32|bf16|fp16`.

fp16 needs loss scaling; with SAM both passes must see unscaled gradients and a step whose
gradients overflow is skipped entirely (the reference stepped on still-scaled pass-2 gradients).
Each SAM pass unscales and checks its gradients in one fused kernel; the skip decision and the
scale's update stay on the device (no host read); bf16 and fp32 keep the finiteness check with scale 1.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from core.runtime import autocast, configure_backends, resolve_device, resolve_precision  # noqa: F401  (moved; kept importable here)


@dataclass
class LossScaler:
    """Dynamic loss scaling for fp16 (disabled = scale 1 for fp32/bf16), SAM-aware, kept on the device.

    backward() scales the loss; unscale_and_check() divides the gradients back and returns a device
    flag saying whether they are all finite; update() halves or grows the scale from that flag on
    the device. Once a step has run, `scale` and `good_steps` are 0-dim tensors on the training
    device (no host read per step); state_dict() reads them once, when the resume state is saved.
    """

    enabled: bool
    scale: float | torch.Tensor = 2.0 ** 16
    growth_factor: float = 2.0
    backoff_factor: float = 0.5
    growth_interval: int = 2000
    good_steps: int | torch.Tensor = 0

    def backward(self, loss: torch.Tensor) -> None:
        (loss * self._scale_on(loss.device) if self.enabled else loss).backward()

    @torch.no_grad()
    def unscale(self, params: list[torch.nn.Parameter]) -> bool:
        """Unscale gradients in place; True when every gradient is finite (one host read: tests and tools)."""
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
        inverse_scale = (1.0 / self._scale_on(device)).reshape(1)
        torch._amp_foreach_non_finite_check_and_unscale_(grads, found_non_finite, inverse_scale)
        return (1.0 - found_non_finite).squeeze(0)

    @torch.no_grad()
    def update(self, step_ok: bool | torch.Tensor) -> None:
        """Halve the scale after a skipped step; grow it after `growth_interval` good steps in a row.

        `step_ok` may be a device flag (the trainer's): then the update is computed on the device.
        """
        if not self.enabled:
            return
        scale = self._scale_on(step_ok.device if isinstance(step_ok, torch.Tensor) else None)
        ok = torch.as_tensor(step_ok, device=scale.device).to(torch.bool)
        good_steps = torch.where(ok, torch.as_tensor(self.good_steps, device=scale.device) + 1, 0)
        grow = ok & (good_steps % self.growth_interval == 0)
        self.scale = torch.where(ok, torch.where(grow, scale * self.growth_factor, scale), scale * self.backoff_factor)
        self.good_steps = good_steps

    def _scale_on(self, device: torch.device | None) -> torch.Tensor:
        """The scale as a float32 tensor on `device` (moved there once; a power of two, so exact in float32)."""
        if not isinstance(self.scale, torch.Tensor) or (device is not None and self.scale.device != device):
            self.scale = torch.as_tensor(self.scale, dtype=torch.float32, device=device)
        return self.scale

    def state_dict(self) -> dict:
        return {"scale": float(self.scale), "good_steps": int(self.good_steps)}

    def load_state_dict(self, state: dict) -> None:
        self.scale = float(state["scale"])
        self.good_steps = int(state["good_steps"])
