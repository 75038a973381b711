"""The network builder: a recipe -> AudioClassifier (waveforms [+ salience] -> logits [B, classes]).

    waveforms -> PCEN frontend -> SpecAugment (train) -> input BN        (float32, core/model/frontend.py)
              -> timm backbone with CBAM                                 (core/model/backbone.py)
              -> FiLM(salience)                                          (fusion "film")
              -> mean over frequency -> BiGRU (optional) -> pooling (GAP | ASP | temporal ASP)
              -> BN1d (optional) -> dropout -> concat salience (fusion "concat") -> Linear(., classes)
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from core.folds import SALIENCE_VALUES
from core.model.backbone import AudioBackbone
from core.model.blocks import (
    AttentiveStatsPooling,
    BiGRU,
    FiLM,
    GlobalAveragePooling,
    SalienceEmbedding,
    TemporalAttentiveStatsPooling,
)
from core.model.frontend import AudioInput
from core.recipe import Head, Recipe


class AudioClassifier(nn.Module):
    """A solution's model; every choice comes from its recipe."""

    def __init__(self, recipe: Recipe) -> None:
        super().__init__()
        self.solution = recipe.name
        fusion = recipe.fusion
        self.uses_salience = fusion.uses_salience
        self.fusion_kind = fusion.kind
        self.audio_input = AudioInput(recipe.frontend, recipe.augment)
        self.backbone = AudioBackbone(recipe.backbone, recipe.frontend.channels)
        channels = self.backbone.out_channels
        self.salience = SalienceEmbedding(fusion.dim, fusion.padding_row) if fusion.uses_salience else None
        self.film = FiLM(channels, fusion.dim) if fusion.kind == "film" else None
        self.temporal = _temporal_model(recipe.head, channels)
        if self.temporal is not None:
            channels = self.temporal.out_channels
        self.pooling, pooled = _pooling(recipe.head, channels)
        self.embedding_bn = nn.BatchNorm1d(pooled) if recipe.head.embedding_bn else nn.Identity()
        self.dropout = nn.Dropout(recipe.head.dropout)
        head_inputs = pooled + (fusion.dim if fusion.kind == "concat" else 0)
        self.classifier = nn.Linear(head_inputs, recipe.num_classes)

    def forward(self, waveforms: Tensor, salience: Tensor | None = None,
                mix: tuple[float, Tensor] | None = None) -> Tensor:
        """waveforms float [B, num_samples] (or [B, 1, num_samples]) -> logits [B, len(recipe.classes)].

        salience: LongTensor [B] of raw metadata values (1 foreground, 2 background); required when the
        recipe fuses salience, ignored otherwise. mix: the batch's mixup (lam, index); the salience
        embedding is then mixed at embedding level with gradient (the waveforms arrive already mixed).
        """
        waveforms = _as_batch_of_clips(waveforms)
        if self.uses_salience:
            self.check_salience(salience, len(waveforms))
        return self.forward_energies(self.mel_energies(waveforms), salience, mix)

    def mel_energies(self, waveforms: Tensor) -> list[Tensor]:
        """[B, num_samples] -> the frontend's mel magnitudes (no trainable weights; shareable between models)."""
        return self.audio_input.frontend.mel_energies(waveforms)

    def forward_energies(self, energies: list[Tensor], salience: Tensor | None = None,
                         mix: tuple[float, Tensor] | None = None) -> Tensor:
        """Mel energies -> logits, without input checks (`forward` checks; exported graphs check outside)."""
        return self.forward_maps(self.backbone(self.audio_input(energies)), salience, mix)

    def forward_maps(self, maps: Tensor, salience: Tensor | None = None,
                     mix: tuple[float, Tensor] | None = None) -> Tensor:
        """Backbone feature maps [B, C, F', T'] -> logits: FiLM, frequency mean, temporal model, pooling, head.

        Also takes per-window slices of maps computed over a longer recording (core/model/ensemble.py).
        """
        condition = self.salience(salience.long(), mix) if self.uses_salience else None
        if self.film is not None:
            maps = self.film(maps, condition)
        sequence = maps.mean(dim=2)                                       # over frequency: [B, C, T]
        if self.temporal is not None:
            sequence = self.temporal(sequence)
        embedding = self.dropout(self.embedding_bn(self.pooling(sequence)))
        if self.fusion_kind == "concat":
            embedding = torch.cat([embedding, condition.to(embedding.dtype)], dim=1)
        return self.classifier(embedding)

    def check_salience(self, salience: Tensor | None, batch: int) -> None:
        """Salience must be an integer tensor [batch] of raw values 1 | 2; there is no default."""
        if salience is None:
            raise ValueError(f"{self.solution} fuses salience: pass salience (1 foreground, 2 background) for "
                             "every clip; there is no default")
        if salience.dtype.is_floating_point or salience.dtype == torch.bool or salience.shape != (batch,):
            raise ValueError(f"{self.solution}: salience must be an integer tensor of shape [{batch}] with raw "
                             f"values 1|2, got dtype {salience.dtype} shape {tuple(salience.shape)}")
        valid = (salience == SALIENCE_VALUES[0]) | (salience == SALIENCE_VALUES[1])
        if self.training:  # in a training step: asserted on the device, no host read (the metadata was checked on load)
            torch._assert_async(valid.all(), f"{self.solution}: salience values must be 1 (foreground) or 2 (background)")
            return
        if not bool(valid.all()):
            bad = sorted(set(salience[~valid].tolist()))
            raise ValueError(f"{self.solution}: salience values must be 1 (foreground) or 2 (background), "
                             f"got {bad}")


def _as_batch_of_clips(waveforms: Tensor) -> Tensor:
    """Accept [B, L] or [B, 1, L]; anything else is a caller error."""
    if waveforms.dim() == 3 and waveforms.shape[1] == 1:
        return waveforms[:, 0]
    if waveforms.dim() != 2:
        raise ValueError(f"waveforms must be [batch, samples] or [batch, 1, samples], got {tuple(waveforms.shape)}")
    return waveforms


def _temporal_model(head: Head, channels: int) -> nn.Module | None:
    """The sequence model over time (the recipe checked head.temporal when it was made)."""
    if head.temporal == "bigru":
        return BiGRU(channels, head.gru_hidden, head.gru_layers, head.gru_dropout)
    return None


def _pooling(head: Head, channels: int) -> tuple[nn.Module, int]:
    """The pooling module and its output width (the recipe checked head.pooling when it was made)."""
    if head.pooling == "gap":
        return GlobalAveragePooling(), channels
    pooling = AttentiveStatsPooling if head.pooling == "asp" else TemporalAttentiveStatsPooling
    return pooling(channels, head.asp_channels), 2 * channels


def build_model(recipe: Recipe) -> AudioClassifier:
    """The AudioClassifier of `recipe` (on the current default device, freshly initialised)."""
    return AudioClassifier(recipe)


def count_parameters(recipe: Recipe) -> int:
    """Number of parameters of `recipe`'s model (all of them take part in the forward pass).

    Built on the meta device: no memory is allocated and no initialisation is computed.
    """
    with torch.device("meta"):
        model = AudioClassifier(recipe)
    return sum(parameter.numel() for parameter in model.parameters())
