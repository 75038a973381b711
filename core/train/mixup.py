"""Batch mixup on waveforms (Zhang et al. 2018) with the mixed cross-entropy."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Mix:
    """One batch's mixup: x' = lam * x + (1 - lam) * x[index]."""

    lam: float
    index: torch.Tensor

    def as_tuple(self) -> tuple[float, torch.Tensor]:
        return self.lam, self.index


def draw_mix(batch_size: int, alpha: float, prob: float, rng: np.random.Generator,
             generator: torch.Generator) -> Mix | None:
    """lam ~ Beta(alpha, alpha) and a random partner permutation, with probability `prob`."""
    if alpha <= 0 or rng.random() >= prob:
        return None
    lam = float(rng.beta(alpha, alpha))
    return Mix(lam, torch.randperm(batch_size, generator=generator))


def mix_batch(waveforms: torch.Tensor, mix: Mix | None) -> torch.Tensor:
    if mix is None:
        return waveforms
    index = mix.index.to(waveforms.device)
    return mix.lam * waveforms + (1.0 - mix.lam) * waveforms[index]


def mixed_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, mix: Mix | None,
                        label_smoothing: float = 0.0) -> torch.Tensor:
    """lam * CE(logits, y) + (1 - lam) * CE(logits, y[index]); plain CE without mix."""
    logits = logits.float()
    loss_a = F.cross_entropy(logits, targets, label_smoothing=label_smoothing)
    if mix is None:
        return loss_a
    loss_b = F.cross_entropy(logits, targets[mix.index.to(targets.device)], label_smoothing=label_smoothing)
    return mix.lam * loss_a + (1.0 - mix.lam) * loss_b


def mixed_correct(logits: torch.Tensor, targets: torch.Tensor, mix: Mix | None) -> torch.Tensor:
    """Mixup-weighted count of correct predictions (the reference's train accuracy), a 0-dim float64 tensor.

    Stays on the logits' device (no host read); float64 so that it sums exactly as Python floats did.
    """
    predictions = logits.argmax(dim=1)
    correct_a = (predictions == targets).sum().to(torch.float64)
    if mix is None:
        return correct_a
    correct_b = (predictions == targets[mix.index.to(targets.device)]).sum().to(torch.float64)
    return correct_a * mix.lam + correct_b * (1.0 - mix.lam)
