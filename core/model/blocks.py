"""Building blocks shared by the lineage: CBAM, attentive statistics pooling (channel-wise and
temporal), FiLM, salience embedding, the BiGRU sequence model and the deep audio stem.

Feature maps are [B, C, F, T] (frequency on H, time on W); sequences are [B, C, T].
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

STATS_EPS = 1e-6  # inside sqrt of the weighted variance (reference)


class ChannelAttention(nn.Module):
    """CBAM channel gate: shared 1x1-conv MLP on avg- and max-pooled maps, summed, sigmoid."""

    def __init__(self, channels: int, ratio: int = 16, min_hidden: int = 1) -> None:
        super().__init__()
        hidden = max(channels // ratio, min_hidden)  # integer division: the reference's `/` was a defect
        self.fc1 = nn.Conv2d(channels, hidden, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, 1, bias=False)

    def forward(self, maps: Tensor) -> Tensor:
        """maps [B, C, F, T] -> gate [B, C, 1, 1] in (0, 1)."""
        average = self.fc2(self.relu(self.fc1(maps.mean(dim=(2, 3), keepdim=True))))
        maximum = self.fc2(self.relu(self.fc1(maps.amax(dim=(2, 3), keepdim=True))))
        return torch.sigmoid(average + maximum)


class SpatialAttention(nn.Module):
    """CBAM spatial gate: conv over [mean_c, max_c], sigmoid."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, maps: Tensor) -> Tensor:
        """maps [B, C, F, T] -> gate [B, 1, F, T] in (0, 1)."""
        pooled = torch.cat([maps.mean(dim=1, keepdim=True), maps.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.conv1(pooled))


class CBAM(nn.Module):
    """Convolutional block attention (Woo et al. 2018): channel gate, then spatial gate; no residual."""

    def __init__(self, channels: int, ratio: int = 16, kernel_size: int = 7, min_hidden: int = 1) -> None:
        super().__init__()
        self.ca = ChannelAttention(channels, ratio, min_hidden)
        self.sa = SpatialAttention(kernel_size)

    def forward(self, maps: Tensor) -> Tensor:
        """maps [B, C, F, T] -> refined maps of the same shape."""
        maps = maps * self.ca(maps)
        return maps * self.sa(maps)


def weighted_mean_std(sequence: Tensor, weights: Tensor) -> Tensor:
    """cat[sum_t w x, sqrt(sum_t w (x - mu)^2 + 1e-6)] over the last axis, in float32.

    sequence [B, C, T]; weights [B, C or 1, T] summing to 1 over T. Returns [B, 2C].
    """
    sequence, weights = sequence.float(), weights.float()
    mean = (sequence * weights).sum(dim=-1)
    variance = (weights * (sequence - mean.unsqueeze(-1)) ** 2).sum(dim=-1)
    return torch.cat([mean, torch.sqrt(variance + STATS_EPS)], dim=1)


class AttentiveStatsPooling(nn.Module):
    """Channel-wise attentive statistics pooling (ECAPA style): one softmax over time per channel."""

    def __init__(self, channels: int, attention_channels: int = 128) -> None:
        super().__init__()
        self.attn = nn.Sequential(
            nn.Conv1d(channels, attention_channels, kernel_size=1),
            nn.Tanh(),
            nn.Conv1d(attention_channels, channels, kernel_size=1),
        )

    def forward(self, sequence: Tensor) -> Tensor:
        """sequence [B, C, T] -> [B, 2C] (weighted mean and std)."""
        weights = torch.softmax(self.attn(sequence).float(), dim=-1)
        return weighted_mean_std(sequence, weights)


class TemporalAttentiveStatsPooling(nn.Module):
    """Attentive statistics pooling with one weight per frame shared by all channels."""

    def __init__(self, channels: int, attention_channels: int = 128) -> None:
        super().__init__()
        self.attn = nn.Sequential(
            nn.Linear(channels, attention_channels),
            nn.Tanh(),
            nn.Linear(attention_channels, 1),
        )

    def forward(self, sequence: Tensor) -> Tensor:
        """sequence [B, C, T] -> [B, 2C]."""
        scores = self.attn(sequence.transpose(1, 2))                       # [B, T, 1]
        weights = torch.softmax(scores.float(), dim=1).transpose(1, 2)     # [B, 1, T]
        return weighted_mean_std(sequence, weights)


class GlobalAveragePooling(nn.Module):
    """Mean over time of a [B, C, T] sequence (with the frequency mean before it: plain GAP)."""

    def forward(self, sequence: Tensor) -> Tensor:
        """sequence [B, C, T] -> [B, C]."""
        return sequence.mean(dim=-1)


class BiGRU(nn.Module):
    """Bidirectional GRU over time (CRNN); runs in float32 even under autocast."""

    def __init__(self, channels: int, hidden: int, layers: int, dropout: float) -> None:
        super().__init__()
        self.gru = nn.GRU(input_size=channels, hidden_size=hidden, num_layers=layers, batch_first=True,
                          bidirectional=True, dropout=dropout if layers > 1 else 0.0)

    @property
    def out_channels(self) -> int:
        return 2 * self.gru.hidden_size

    def forward(self, sequence: Tensor) -> Tensor:
        """sequence [B, C, T] -> [B, 2 * hidden, T]."""
        with torch.autocast(device_type=sequence.device.type, enabled=False):
            outputs, _ = self.gru(sequence.float().transpose(1, 2))
        return outputs.transpose(1, 2)


class FiLM(nn.Module):
    """Feature-wise linear modulation: cond -> (gamma, beta) scaling and shifting channels.

    Initialised to the identity (weight 0, gamma bias 1, beta bias 0), as in the reference.
    """

    def __init__(self, channels: int, cond_dim: int) -> None:
        super().__init__()
        self.channels = channels
        self.generator = nn.Linear(cond_dim, 2 * channels)
        nn.init.zeros_(self.generator.weight)
        with torch.no_grad():
            self.generator.bias.copy_(torch.cat([torch.ones(channels), torch.zeros(channels)]))

    def forward(self, maps: Tensor, cond: Tensor) -> Tensor:
        """maps [B, C, F, T], cond [B, cond_dim] -> maps * gamma + beta (per channel)."""
        gamma, beta = self.generator(cond).split(self.channels, dim=1)
        return maps * gamma[:, :, None, None].to(maps.dtype) + beta[:, :, None, None].to(maps.dtype)


class SalienceEmbedding(nn.Module):
    """Salience metadata (1 foreground, 2 background) -> learned vector, with embedding-level mixup.

    padding_row=False: Embedding(2, dim) indexed by salience - 1 (scripts 4/5/7/8);
    padding_row=True: Embedding(3, dim, padding_idx=0) indexed by the raw value (script 6).
    """

    def __init__(self, dim: int, padding_row: bool) -> None:
        super().__init__()
        self.padding_row = padding_row
        self.embedding = nn.Embedding(3, dim, padding_idx=0) if padding_row else nn.Embedding(2, dim)

    def forward(self, salience: Tensor, mix: tuple[float | Tensor, Tensor] | None = None) -> Tensor:
        """salience LongTensor [B] of raw values 1|2; mix (lam, index) mixes the vectors with gradient."""
        vectors = self.embedding(salience if self.padding_row else salience - 1)
        if mix is None:
            return vectors
        lam, index = mix
        return lam * vectors + (1 - lam) * vectors[index]


class DeepAudioStem(nn.Module):
    """Three 3x3 convs (in -> 32 -> 64 -> 64, the last with stride 2), each + BN + ReLU; no max-pool after."""

    def __init__(self, in_channels: int, widths: tuple[int, int, int] = (32, 64, 64)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        strides = (1, 1, 2)
        previous = in_channels
        for width, stride in zip(widths, strides, strict=True):
            layers += [nn.Conv2d(previous, width, 3, stride=stride, padding=1, bias=False),
                       nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            previous = width
        self.layers = nn.Sequential(*layers)
        self.out_channels = previous

    def forward(self, spectrogram: Tensor) -> Tensor:
        """[B, in, F, T] -> [B, 64, F/2, T/2]."""
        return self.layers(spectrogram)
