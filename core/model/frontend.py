"""Waveform -> mel magnitude -> trainable PCEN (one channel per FFT size) -> SpecAugment -> input BN.

The frontend runs in float32 even under an outer autocast: the mel transform needs no gradient and
PCEN's powers and logs lose too much precision in bf16/fp16.
"""
from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn
from torchaudio.transforms import FrequencyMasking, MelSpectrogram, TimeMasking

from core.model.pcen import TrainablePCEN, smoother_coefficient
from core.recipe import Augment, Frontend


class PCENFrontend(nn.Module):
    """Mel magnitude spectrogram and an independent trainable PCEN for each FFT size.

    Input waveforms [B, num_samples]; output [B, len(n_ffts), n_mels, frames] in float32.
    """

    def __init__(self, frontend: Frontend) -> None:
        super().__init__()
        pcen = frontend.pcen
        self.num_samples, self.hop_length = frontend.num_samples, frontend.hop_length
        s = smoother_coefficient(frontend.hop_length, frontend.sample_rate, pcen.T)
        with _concrete_device():
            self.mels = nn.ModuleList(
                MelSpectrogram(sample_rate=frontend.sample_rate, n_fft=n_fft, hop_length=frontend.hop_length,
                               n_mels=frontend.n_mels, f_min=frontend.f_min, f_max=frontend.f_max,
                               power=frontend.power)
                for n_fft in frontend.n_ffts
            )
        self.pcens = nn.ModuleList(
            TrainablePCEN(s, alpha=pcen.alpha, delta=pcen.delta, r=pcen.r, eps=pcen.eps,
                          denominator_eps=pcen.denominator_eps)
            for _ in frontend.n_ffts
        )

    def mel_energies(self, waveforms: Tensor) -> list[Tensor]:
        """waveforms float [B, num_samples] -> one mel magnitude [B, n_mels, frames] per FFT size.

        No trainable weights: models with the same mel settings can share this work (core/infer/classify.py).
        """
        waveforms = waveforms.float()
        with torch.no_grad(), torch.autocast(device_type=waveforms.device.type, enabled=False):
            return [mel(waveforms) for mel in self.mels]  # float32 under any autocast (see the module docstring)

    def window_energies(self, strip: Tensor, count: int, hop: int, clip: int) -> list[Tensor]:
        """The mel energies of `count` windows of `clip` samples starting every `hop` samples of `strip` [L]
        (L = (count - 1) * hop + clip), one [count, n_mels, frames] per FFT size: equal to `mel_energies` of the
        stacked windows, computed once for the frames the windows share.

        With center=True, window frame j covers window samples [j*h - n_fft//2, j*h - n_fft//2 + n_fft) (h: the
        mel hop), reflecting at the window's edges. Where `hop` is a multiple of h, an interior frame (inside the
        window) is frame j + k*hop/h of the strip's mel; only the few edge frames, which see the reflection, are
        computed per window (from short head and tail pieces). Otherwise every window is transformed on its own.
        """
        stacked = None
        energies = []
        for mel in self.mels:
            h, n_fft = mel.hop_length, mel.n_fft
            if hop % h or count == 1:
                stacked = stacked if stacked is not None else strip.unfold(0, clip, hop)[:count]
                energies.append(self._mel(mel, stacked))
                continue
            energies.append(_shared_window_mel(lambda x, mel=mel: self._mel(mel, x), strip, count, hop, clip, h,
                                               n_fft))
        return energies

    @staticmethod
    def _mel(mel: nn.Module, waveforms: Tensor) -> Tensor:
        waveforms = waveforms.float()
        with torch.no_grad(), torch.autocast(device_type=waveforms.device.type, enabled=False):
            return mel(waveforms)

    def normalise(self, energies: list[Tensor]) -> Tensor:
        """Mel energies -> PCEN features [B, channels, n_mels, frames]."""
        return torch.stack([pcen(energy) for pcen, energy in zip(self.pcens, energies, strict=True)], dim=1)

    def forward(self, inputs: Tensor | list[Tensor]) -> Tensor:
        """Waveforms float [B, num_samples], or their `mel_energies` -> PCEN features [B, channels, n_mels, frames].

        Taking the energies too keeps this a module call (forward hooks see it) when they are shared.
        """
        energies = inputs if isinstance(inputs, list) else self.mel_energies(inputs)
        return self.normalise(energies)


def _shared_window_mel(transform, strip: Tensor, count: int, hop: int, clip: int, h: int, n_fft: int) -> Tensor:
    """PCENFrontend.window_energies for one FFT size (`hop` a multiple of the mel hop `h`)."""
    frames = clip // h + 1
    half = n_fft // 2
    starts = torch.arange(count, device=strip.device) * (hop // h)
    shared = transform(strip[None])[0]                                            # [n_mels, strip frames]
    index = starts[:, None] + torch.arange(frames, device=strip.device)[None, :]
    windows = shared[:, index].permute(1, 0, 2).contiguous()                      # [count, n_mels, frames]
    first_inner = -(-half // h)                                                  # j*h >= half
    last_inner = (clip - (n_fft - half)) // h                                    # j*h + n_fft - half <= clip
    if first_inner > 0:  # left edge frames: from each window's first samples (its own reflection)
        head = min(clip, first_inner * h + n_fft)
        pieces = strip.unfold(0, head, hop)[:count]
        windows[:, :, :first_inner] = transform(pieces)[:, :, :first_inner]
    if last_inner < frames - 1:  # right edge frames: from each window's last samples, on the same frame grid
        begin = max(0, ((last_inner + 1) * h - half - n_fft) // h * h)
        pieces = strip[begin:].unfold(0, clip - begin, hop)[:count]
        tail = transform(pieces)                                                  # frame i = window frame begin/h + i
        windows[:, :, last_inner + 1:] = tail[:, :, last_inner + 1 - begin // h:]
    return windows


def _concrete_device() -> contextlib.AbstractContextManager:
    """CPU when building on the meta device: torchaudio checks its filterbank values (tiny buffers, no params)."""
    if torch.get_default_device().type == "meta":
        return torch.device("cpu")
    return contextlib.nullcontext()


class SpecAugment(nn.Module):
    """One frequency mask then one time mask, shared by the whole batch (torchaudio, iid_masks=False, fill 0).

    Active only in training mode; each forward draws new masks (so the two SAM passes differ, as in the reference).
    """

    def __init__(self, augment: Augment) -> None:
        super().__init__()
        self.freq_masking = FrequencyMasking(freq_mask_param=augment.freq_mask)
        self.time_masking = TimeMasking(time_mask_param=augment.time_mask)

    def forward(self, features: Tensor) -> Tensor:
        """features: [B, C, F, T]. Returns the masked features in training mode, the input otherwise."""
        if not self.training:
            return features
        return self.time_masking(self.freq_masking(features))


class AudioInput(nn.Module):
    """The whole float32 input path: PCEN frontend, SpecAugment (training only), BatchNorm2d(channels)."""

    def __init__(self, frontend: Frontend, augment: Augment) -> None:
        super().__init__()
        self.frontend = PCENFrontend(frontend)
        self.spec_augment = SpecAugment(augment)
        self.input_bn = nn.BatchNorm2d(frontend.channels)

    def forward(self, inputs: Tensor | list[Tensor]) -> Tensor:
        """Waveforms [B, num_samples] or their mel energies -> normalised features [B, C, n_mels, frames].

        float32 under any autocast.
        """
        device = (inputs[0] if isinstance(inputs, list) else inputs).device
        with torch.autocast(device_type=device.type, enabled=False):
            features = self.spec_augment(self.frontend(inputs))
            return self.input_bn(features)
