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
        self.window_columns: dict[int, int] = {}  # backbone output length of one window, by its mel frames

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

    def window_probabilities(self, strip: Tensor, count: int, hop: int, saliences: list[Tensor | None],
                             backbone_once: bool = False) -> list[Tensor]:
        """Probabilities [count, 10] of the `count` clip-long windows that start every `hop` samples of `strip`
        [L = (count - 1) * hop + num_samples], under each salience tensor in `saliences`.

        Default: the mel frames the windows share are computed once (PCENFrontend.window_energies: the same
        energies as per window), then PCEN and the network run per window, as `probabilities` on the stacked
        windows. backbone_once: PCEN and the backbone run once over the whole strip and each window's slice of
        the feature maps (the columns nearest its frames) goes through the head (AudioClassifier.forward_maps).
        That is not the per-window computation: PCEN's smoother and the convolutions see the neighbouring
        audio instead of the window's edges, a window's slice is rounded to the maps' time grid, and CBAM's
        channel attention pools over the strip (core/infer/detect.py says when it is offered).
        """
        clip = self.models[0].audio_input.frontend.num_samples
        energies: dict[int, list[Tensor]] = {}
        maps: dict[int, Tensor] = {}
        results = []
        for salience in saliences:
            probabilities = []
            for index, model in enumerate(self.models):
                owner = self.mel_owner[index]
                frontend = self.models[owner].audio_input.frontend
                if owner not in energies:
                    energies[owner] = (frontend.mel_energies(strip[None]) if backbone_once
                                       else frontend.window_energies(strip, count, hop, clip))
                if not backbone_once:
                    logits = model.forward_energies(energies[owner], salience)
                else:
                    if index not in maps:  # salience enters after the backbone (FiLM, concat): once per model
                        maps[index] = self._window_maps(model, energies[owner], count, hop / frontend.hop_length)
                    logits = model.forward_maps(maps[index], salience)
                probabilities.append(torch.softmax(logits.float(), dim=1))
            results.append(torch.stack(probabilities).mean(dim=0))
        return results

    def _window_maps(self, model: AudioClassifier, strip_energies: list[Tensor], count: int,
                     hop_frames: float) -> Tensor:
        """The backbone once over the strip's energies, sliced per window: [count, C, F', columns of one window]."""
        strip_maps = model.backbone(model.audio_input(strip_energies))               # [1, C, F', T']
        frontend = model.audio_input.frontend
        window_frames = frontend.num_samples // frontend.hop_length + 1
        if window_frames not in self.window_columns:  # the backbone's output length for one window
            probe = strip_energies[0].new_zeros(1, len(strip_energies), strip_energies[0].shape[1], window_frames)
            self.window_columns[window_frames] = model.backbone(probe).shape[-1]
        columns, total = self.window_columns[window_frames], strip_maps.shape[-1]
        scale = total / strip_energies[0].shape[-1]                                 # map columns per mel frame
        starts = [min(max(0, round(window * hop_frames * scale)), total - columns) for window in range(count)]
        return torch.stack([strip_maps[0, :, :, start:start + columns] for start in starts])

    def use_plain_ops(self) -> FoldEnsemble:
        """PCEN in plain tensor ops (one matmul smoother) instead of the fused training kernel: for tracing."""
        set_pcen_ops(self, "plain")
        return self


def set_pcen_ops(module: nn.Module, ops: str) -> None:
    """Switch every TrainablePCEN inside `module` to `ops` ("fused" | "plain" | "loop"; same values)."""
    for child in module.modules():
        if isinstance(child, TrainablePCEN):
            child.ops = ops
