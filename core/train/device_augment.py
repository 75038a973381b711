"""The waveform augmentation (Gaussian noise, then gain) as one batched operation on the batch's device.

It draws from the distributions of the audiomentations Compose that `core.train.data` applies clip
by clip in the DataLoader workers (as read in audiomentations 0.43's source):
- Compose(p=wave_prob): a clip is transformed when U[0, 1) < wave_prob (`random.random() < p`);
- AddGaussianNoise(min_amplitude=1e-6, max_amplitude=noise_max, p=1): an amplitude uniform in
  [1e-6, noise_max] in linear units (`random.uniform`), times standard normal noise per sample;
- Gain(min_gain_db, max_gain_db, p=1): a gain uniform in dB (`random.uniform`), applied as the
  amplitude ratio 10 ** (dB / 20);
in that order: (waveform + amplitude * noise) * ratio. The draws come from a torch.Generator on the
device seeded from the epoch seed and the replica's rank, so an epoch replays exactly on resume.
They are not the workers' numpy/python draws: the same distributions, other samples.

On CUDA this replaces the workers' per-clip transform (one fused pass over the batch instead of
three numpy passes per clip on the CPU); on the CPU the workers keep it (`runs_on_device`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from core.recipe import Augment, RecipeError
from core.train.options import TrainOptions

MIN_NOISE_AMPLITUDE = 1e-6  # AddGaussianNoise's lower bound, as core.train.data builds it
SEED_DOMAIN = 0xA06         # keeps this generator's stream apart from the epoch's other generators


def gain_to_db(gain: float) -> float:
    """A linear gain as dB (the recipe's gain range is linear; audiomentations' Gain takes dB)."""
    return float(20.0 * np.log10(gain))


@dataclass(frozen=True)
class ClipDraws:
    """One batch's per-clip draws: whether each clip is transformed, its noise amplitude and gain ratio."""

    applied: torch.Tensor     # bool [B]
    amplitude: torch.Tensor   # float32 [B], linear
    gain_ratio: torch.Tensor  # float32 [B], 10 ** (dB / 20)


@dataclass(frozen=True)
class WaveAugment:
    """The recipe's waveform noise + gain, batched (see the module docstring for the distributions)."""

    probability: float
    noise_min: float
    noise_max: float
    gain_min_db: float
    gain_max_db: float

    @classmethod
    def from_augment(cls, augment: Augment) -> WaveAugment | None:
        """The recipe's augmentation, or None when it is off (wave_prob 0), as `build_waveform_augmentation`."""
        if augment.wave_prob <= 0:
            return None
        # audiomentations asserts these when the transform is built; say which recipe field is wrong instead.
        if augment.noise_max < MIN_NOISE_AMPLITUDE:
            raise RecipeError(f"augment.noise_max = {augment.noise_max:g} must be at least {MIN_NOISE_AMPLITUDE:g} "
                              f"when augment.wave_prob > 0 (the noise amplitude is drawn from [1e-6, noise_max])")
        if not 0 < augment.gain_min <= augment.gain_max:
            raise RecipeError(f"augment.gain_min = {augment.gain_min:g} and gain_max = {augment.gain_max:g} must "
                              "satisfy 0 < gain_min <= gain_max (a linear gain range)")
        return cls(augment.wave_prob, MIN_NOISE_AMPLITUDE, augment.noise_max,
                   gain_to_db(augment.gain_min), gain_to_db(augment.gain_max))

    def draw(self, count: int, generator: torch.Generator) -> ClipDraws:
        """The draws of `count` clips, on the generator's device."""
        uniforms = torch.rand(3, count, generator=generator, device=generator.device)
        amplitude = self.noise_min + (self.noise_max - self.noise_min) * uniforms[1]
        gain_db = self.gain_min_db + (self.gain_max_db - self.gain_min_db) * uniforms[2]
        return ClipDraws(uniforms[0] < self.probability, amplitude, torch.pow(10.0, gain_db / 20.0))

    def apply(self, waveforms: torch.Tensor, draws: ClipDraws, noise: torch.Tensor) -> torch.Tensor:
        """(waveform + amplitude * noise) * ratio for the drawn clips; the others returned as they are."""
        augmented = (waveforms + draws.amplitude[:, None] * noise) * draws.gain_ratio[:, None]
        return torch.where(draws.applied[:, None], augmented, waveforms)

    def __call__(self, waveforms: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augment a float batch [B, L] on its device (a new tensor; the input is not modified)."""
        draws = self.draw(len(waveforms), generator)
        noise = torch.randn(waveforms.shape, generator=generator, device=generator.device, dtype=waveforms.dtype)
        return self.apply(waveforms, draws, noise)


class EpochAugmenter:
    """The augmentation of one epoch's batches, drawing from one generator seeded for that epoch."""

    def __init__(self, augmentation: WaveAugment, device: torch.device, seed: int, rank: int = 0) -> None:
        self.augmentation = augmentation
        self.generator = torch.Generator(device=device).manual_seed(augment_seed(seed, rank))

    def __call__(self, waveforms: torch.Tensor) -> torch.Tensor:
        return self.augmentation(waveforms, self.generator)


def augment_seed(seed: int, rank: int) -> int:
    """The generator seed of epoch `seed` on replica `rank`: replicas draw differently, resumes identically."""
    return int(np.random.SeedSequence([seed, rank, SEED_DOMAIN]).generate_state(1, np.uint64)[0] >> 1)


def runs_on_device(augment: Augment, device: torch.device, options: TrainOptions) -> bool:
    """Whether the waveform augmentation runs on the batch on `device` instead of per clip in the workers.

    On CUDA by default; `options.device_augment` forces either way (True lets a CPU test run this path).
    """
    if augment.wave_prob <= 0:
        return False
    return device.type == "cuda" if options.device_augment is None else options.device_augment


def epoch_augmenter(augment: Augment, device: torch.device, options: TrainOptions, seed: int,
                    rank: int = 0) -> EpochAugmenter | None:
    """The augmentation the training step applies to this epoch's batches on `device`; None: the workers do it."""
    if not runs_on_device(augment, device, options):
        return None
    return EpochAugmenter(WaveAugment.from_augment(augment), device, seed, rank)
