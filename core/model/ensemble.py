"""A solution's fold models as one module: waveforms [+ salience] -> fold-averaged class probabilities.

The mel spectrogram has no trainable weights, so it is computed once per batch for every fold model
with the same mel settings; each model then runs its own PCEN and network. Used by `classify`
(PyTorch) and traced whole by `export` (ONNX).
"""
from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from core.model.network import AudioClassifier
from core.model.pcen import TrainablePCEN
from core.recipe import Frontend


def mel_settings(frontend: Frontend) -> tuple:
    """What the mel spectrogram depends on (everything but PCEN): equal settings give equal energies."""
    return tuple(value for name, value in dataclasses.asdict(frontend).items() if name != "pcen")


class FoldEnsemble(nn.Module):
    """Mean of the fold models' softmax probabilities [B, 10] (inputs are not checked here: callers do)."""

    def __init__(self, models: list[AudioClassifier], frontends: list[Frontend]) -> None:
        super().__init__()
        if not models:
            raise ValueError("a FoldEnsemble needs at least one model")
        self.models = nn.ModuleList(models)
        keys = [mel_settings(frontend) for frontend in frontends]
        self.mel_owner = [keys.index(key) for key in keys]  # the first model with these mel settings computes them
        self.uses_salience = any(model.uses_salience for model in models)

    def forward(self, waveforms: Tensor, salience: Tensor | None = None) -> Tensor:
        """waveforms float [B, num_samples], salience int64 [B] (1 | 2; fusion models) -> probabilities [B, 10]."""
        return self.probabilities(waveforms, [salience])[0]

    def probabilities(self, waveforms: Tensor, saliences: list[Tensor | None]) -> list[Tensor]:
        """The ensemble's probabilities under each salience tensor in `saliences`, computing the mels once."""
        energies: dict[int, list[Tensor]] = {}
        results = []
        for salience in saliences:
            probabilities = []
            for index, model in enumerate(self.models):
                owner = self.mel_owner[index]
                if owner not in energies:
                    energies[owner] = self.models[owner].mel_energies(waveforms)
                logits = model.forward_energies(energies[owner], salience).float()
                probabilities.append(torch.softmax(logits, dim=1))
            results.append(torch.stack(probabilities).mean(dim=0))
        return results

    def use_plain_ops(self) -> FoldEnsemble:
        """PCEN in plain tensor ops (one matmul smoother) instead of the fused training kernel: for tracing."""
        set_pcen_ops(self, "plain")
        return self


def set_pcen_ops(module: nn.Module, ops: str) -> None:
    """Switch every TrainablePCEN inside `module` to `ops` ("fused" | "plain" | "loop"; same values)."""
    for child in module.modules():
        if isinstance(child, TrainablePCEN):
            child.ops = ops
