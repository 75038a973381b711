"""A timm ResNet-family CNN as an audio feature extractor, with the lineage's edits.

Edits (all from the recipe's Backbone section): n-channel input, optional deep audio stem, optional
removal of the stem max-pool, CBAM after every stage or after the last one, the res2net first-block
quirk, torchvision-style init (zero_init_last=False). The classifier and global pool are not built.
"""
from __future__ import annotations

import timm
from torch import Tensor, nn

from core.model.blocks import CBAM, DeepAudioStem
from core.recipe import Backbone

STAGE_NAMES = ("layer1", "layer2", "layer3", "layer4")


RESNET_FAMILY_MODULES = ("timm.models.resnet", "timm.models.res2net")  # both build timm's ResNet class


def create_timm_features(arch: str, in_channels: int, zero_init_last: bool) -> nn.Module:
    """timm model `arch` without classifier or pooling; must be a ResNet-family model (conv1 ... layer4)."""
    if not timm.is_model(arch):
        raise ValueError(f"backbone arch {arch!r} is not a timm model name; e.g. resnet34, wide_resnet50_2, "
                         "res2net50_26w_4s")
    if timm.models.model_entrypoint(arch).__module__ not in RESNET_FAMILY_MODULES:
        raise ValueError(f"backbone arch {arch!r} is not a timm ResNet-family model (stem, layer1..layer4); "
                         "use e.g. resnet34, wide_resnet50_2 or res2net50_26w_4s")
    return timm.create_model(arch, pretrained=False, in_chans=in_channels, num_classes=0, global_pool="",
                             zero_init_last=zero_init_last)


class AudioBackbone(nn.Module):
    """Spectrogram [B, C_in, F, T] -> last-stage feature map [B, C_out, F/16 or /32, T/16 or /32]."""

    def __init__(self, config: Backbone, in_channels: int) -> None:
        super().__init__()
        body = create_timm_features(config.arch, in_channels, config.zero_init_last)
        if config.stem == "deep":
            body.conv1 = DeepAudioStem(in_channels)
            body.bn1 = nn.Identity()   # the deep stem has its own BN + ReLU
            body.act1 = nn.Identity()
        if not config.maxpool:
            body.maxpool = nn.Identity()
        if config.seed_first_block:
            _hierarchical_first_block(body)
        self.body = body
        channels = {info["module"]: info["num_chs"] for info in body.feature_info}
        widths = [channels[name] for name in STAGE_NAMES]
        self.attention = nn.ModuleDict({
            name: CBAM(width, config.cbam_ratio, config.cbam_kernel, config.cbam_min_hidden)
            for name, width in zip(STAGE_NAMES, widths, strict=True) if _has_cbam(config.cbam, name)
        })
        self.out_channels = widths[-1]

    def forward_stem(self, spectrogram: Tensor) -> Tensor:
        """The stem: conv1 (or the deep stem), bn1, act1, max-pool (unless removed)."""
        body = self.body
        return body.maxpool(body.act1(body.bn1(body.conv1(spectrogram))))

    def forward_stage(self, name: str, maps: Tensor) -> Tensor:
        """One stage, then its CBAM if the recipe puts one there."""
        maps = getattr(self.body, name)(maps)
        return self.attention[name](maps) if name in self.attention else maps

    def forward(self, spectrogram: Tensor) -> Tensor:
        """[B, C_in, F, T] -> [B, out_channels, F', T']."""
        maps = self.forward_stem(spectrogram)
        for name in STAGE_NAMES:
            maps = self.forward_stage(name, maps)
        return maps


def _has_cbam(placement: str, stage: str) -> bool:
    """Whether `stage` gets a CBAM (the recipe checked the placement when it was made)."""
    return placement == "stages" or (placement == "last" and stage == STAGE_NAMES[-1])


def _hierarchical_first_block(body: nn.Module) -> None:
    """Res2Net reference quirk: layer1[0] (stride 1) uses the hierarchical add and no pool."""
    first = body.layer1[0]
    if not hasattr(first, "is_first"):
        raise ValueError("seed_first_block applies only to res2net backbones (blocks with `is_first`)")
    first.is_first = False
    first.pool = None
