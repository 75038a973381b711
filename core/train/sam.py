"""Sharpness-Aware Minimisation (Foret et al. 2021) around any base optimiser.

Usage per batch: loss(w).backward(); first_step() moves to w + e(w); loss(w + e).backward();
second_step() restores w and lets the base optimiser step with the gradient taken at w + e.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch


class SAM(torch.optim.Optimizer):
    """SAM / ASAM (adaptive=True) wrapper sharing its param_groups with the base optimiser."""

    def __init__(self, params: Iterable, base_optimizer_cls: type = torch.optim.AdamW,
                 rho: float = 0.05, adaptive: bool = False, **base_kwargs: Any) -> None:
        if rho < 0:
            raise ValueError(f"SAM rho must be >= 0, got {rho}")
        super().__init__(params, dict(rho=rho, adaptive=adaptive, **base_kwargs))
        self.base_optimizer = base_optimizer_cls(self.param_groups, **base_kwargs)
        self.param_groups = self.base_optimizer.param_groups  # one set of groups: schedulers see both
        self.defaults.update(self.base_optimizer.defaults)

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        """Perturb every parameter that has a gradient: w <- w + rho * g / ||g|| (ASAM: scaled by w^2)."""
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
    def second_step(self, zero_grad: bool = False) -> None:
        """Restore w and apply the base optimiser's step with the gradient taken at w + e."""
        self.restore()
        self.base_optimizer.step()
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def restore(self) -> None:
        """Undo first_step without stepping (used when a mixed-precision step is skipped)."""
        for group in self.param_groups:
            for param in group["params"]:
                old = self.state[param].pop("old_p", None)
                if old is not None:
                    param.copy_(old)

    def step(self, closure: Any = None) -> None:  # noqa: D102 - explicit two-step use only
        raise RuntimeError("SAM needs two forward/backward passes: call first_step() and second_step()")

    def grad_norm(self) -> torch.Tensor:
        """Global L2 norm of all gradients (ASAM: of |w| * g)."""
        norms = [
            ((param.abs() if group["adaptive"] else 1.0) * param.grad).norm(p=2)
            for group in self.param_groups
            for param in group["params"]
            if param.grad is not None
        ]
        if not norms:
            return torch.tensor(0.0)
        device = norms[0].device
        return torch.norm(torch.stack([norm.to(device) for norm in norms]), p=2)

    def state_dict(self) -> dict:
        """Only the base optimiser has lasting state (SAM's old_p lives within one step)."""
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.base_optimizer.load_state_dict(state_dict)
        self.param_groups = self.base_optimizer.param_groups
