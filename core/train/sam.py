"""Sharpness-Aware Minimisation (Foret et al. 2021) around any base optimiser.

Usage per batch: loss(w).backward(); first_step() moves to w + e(w); loss(w + e).backward();
second_step() restores w and lets the base optimiser step with the gradient taken at w + e.

The perturbation, its norm and the restore run as `torch._foreach_*` ops over the parameters of one
group, device and dtype at a time: a handful of fused kernels a step on CUDA instead of ~4 per
parameter tensor. Element for element they compute what the per-parameter loop computed, so the
update is bit-identical to it in fp32 on the CPU (tests/test_sam_fused.py).
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

NORM_EPSILON = 1e-12  # keeps rho / ||g|| finite when every gradient is zero


@dataclass
class _Bucket:
    """Parameters of one param group sharing a device and dtype, with their gradients (one foreach call each)."""

    params: list[torch.Tensor]
    grads: list[torch.Tensor]
    positions: list[int]  # where each parameter's norm sits in the global, per-parameter order


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
        self._saved_weights: dict[torch.Tensor, torch.Tensor] = {}  # reused buffers: w before first_step
        self._perturbed: list[tuple[list[torch.Tensor], list[torch.Tensor]]] = []  # (params, saved) to restore

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        """Perturb every parameter that has a gradient: w <- w + rho * g / ||g|| (ASAM: scaled by w^2)."""
        self._perturbed = []  # as before: a repeated first_step saves the weights it finds
        buckets = self._buckets()
        grad_norm = self._global_norm(buckets)
        for group, group_buckets in zip(self.param_groups, buckets, strict=True):
            scale = group["rho"] / (grad_norm + NORM_EPSILON)
            for bucket in group_buckets:
                saved = [self._saved_buffer(param) for param in bucket.params]
                torch._foreach_copy_(saved, bucket.params)
                self._perturbed.append((bucket.params, saved))
                steps = torch._foreach_mul(bucket.grads, scale.to(bucket.params[0]))
                if group["adaptive"]:
                    torch._foreach_mul_(steps, torch._foreach_pow(bucket.params, 2))
                torch._foreach_add_(bucket.params, steps)
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
        """Undo first_step without stepping (used when a mixed-precision step is skipped); no-op otherwise."""
        for params, saved in self._perturbed:
            torch._foreach_copy_(params, saved)
        self._perturbed = []

    def step(self, closure: Any = None) -> None:  # noqa: D102 - explicit two-step use only
        raise RuntimeError("SAM needs two forward/backward passes: call first_step() and second_step()")

    @torch.no_grad()
    def grad_norm(self) -> torch.Tensor:
        """Global L2 norm of all gradients (ASAM: of |w| * g)."""
        return self._global_norm(self._buckets())

    def _buckets(self) -> list[list[_Bucket]]:
        """Per param group, its parameters with a gradient split by (device, dtype), in parameter order."""
        buckets: list[list[_Bucket]] = []
        position = 0
        for group in self.param_groups:
            by_kind: dict[tuple[torch.device, torch.dtype], _Bucket] = {}
            for param in group["params"]:
                if param.grad is None:
                    continue
                bucket = by_kind.setdefault((param.device, param.dtype), _Bucket([], [], []))
                bucket.params.append(param)
                bucket.grads.append(param.grad)
                bucket.positions.append(position)
                position += 1
            buckets.append(list(by_kind.values()))
        return buckets

    def _global_norm(self, buckets: list[list[_Bucket]]) -> torch.Tensor:
        """The L2 norm of the per-parameter norms, stacked in parameter order (the loop's summation order)."""
        norms: dict[int, torch.Tensor] = {}
        for group, group_buckets in zip(self.param_groups, buckets, strict=True):
            for bucket in group_buckets:
                weighted = (torch._foreach_mul(torch._foreach_abs(bucket.params), bucket.grads)
                            if group["adaptive"] else bucket.grads)
                norms.update(zip(bucket.positions, torch._foreach_norm(weighted, 2), strict=True))
        if not norms:
            return torch.tensor(0.0)
        ordered = [norms[position] for position in range(len(norms))]
        device = ordered[0].device
        # .to() only across devices: even a same-device .to() is one dispatcher call per parameter
        return torch.norm(torch.stack([norm if norm.device == device else norm.to(device) for norm in ordered]), p=2)

    def _saved_buffer(self, param: torch.Tensor) -> torch.Tensor:
        """A buffer shaped like `param` to hold w during the perturbation, allocated once per parameter."""
        buffer = self._saved_weights.get(param)
        if buffer is None or (buffer.shape, buffer.dtype, buffer.device) != (param.shape, param.dtype, param.device):
            buffer = torch.empty_like(param, memory_format=torch.preserve_format)
            self._saved_weights[param] = buffer
        return buffer

    def state_dict(self) -> dict:
        """Only the base optimiser has lasting state (SAM's saved weights live within one step)."""
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        """The base optimiser's state, keeping this machine's `capturable` (the trainer's CUDA setting).

        `capturable` says where AdamW keeps its step counts (the GPU on CUDA, so a skipped step is undone
        there), not what the state holds: a fold begun on CUDA resumes on the CPU, where a saved True would
        fail AdamW's device check, and a CPU-begun one resumes on CUDA without a host read per step.
        """
        if "capturable" in self.base_optimizer.defaults:
            ours = self.base_optimizer.defaults["capturable"]
            state_dict = {**state_dict, "param_groups": [{**group, "capturable": ours}
                                                         for group in state_dict["param_groups"]]}
        self.base_optimizer.load_state_dict(state_dict)
        self.param_groups = self.base_optimizer.param_groups
