"""The waveform augmentation on the device: audiomentations' distributions, batched; the training path that uses it.

The statistical tests run with fixed seeds, so they are deterministic; their thresholds are p-values
(a wrong distribution gives p ~ 1e-10 or less, as the negative controls beside them show).
"""
from __future__ import annotations

import dataclasses
import random

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from core.data.metadata import load_source
from core.errors import UserError
from core.recipe import Augment, RecipeError
from core.train import data as train_data
from core.train import device_augment
from core.train.data import build_waveform_augmentation, check_device_cache_allowed, prepare_data, worker_augment
from core.train.device_augment import EpochAugmenter, WaveAugment, augment_seed, epoch_augmenter, runs_on_device
from core.train.fold import train_fold
from core.train.options import TrainOptions

# A wide gain range (-6 .. +12 dB) so that a linear-uniform gain, a wrong dB conversion or gain before
# noise are far apart in distribution; noise up to 0.05 against a 0.5-amplitude tone.
WIDE = Augment(wave_prob=0.6, noise_max=0.05, gain_min=0.5, gain_max=4.0)
CLIPS, SAMPLES = 1500, 2048
P_MIN = 1e-3  # the matching distributions must not be rejected at this level


def tones(count: int = CLIPS, samples: int = SAMPLES) -> torch.Tensor:
    """`count` 0.5-amplitude tones of different frequencies and phases, float32 [count, samples]."""
    time = torch.arange(samples, dtype=torch.float64)
    frequency = torch.linspace(0.01, 0.2, count, dtype=torch.float64)[:, None]
    phase = torch.linspace(0, 6.0, count, dtype=torch.float64)[:, None]
    return (0.5 * torch.sin(2 * torch.pi * frequency * time + phase)).float()


def audiomentations_batch(augment: Augment, clips: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """What the DataLoader workers produce: the audiomentations Compose applied clip by clip."""
    transform = build_waveform_augmentation(augment)
    random.seed(seed)
    np.random.seed(seed)
    return torch.stack([torch.from_numpy(transform(samples=clip.numpy(), sample_rate=8000)) for clip in clips])


def measured(clips: torch.Tensor, augmented: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per clip: transformed or not; for the transformed ones, the gain ratio (least squares on the
    clean clip) and the standard deviation of what is left (the noise as it comes out)."""
    applied = (augmented != clips).any(dim=1)
    clean, out = clips[applied].double(), augmented[applied].double()
    gain = (out * clean).sum(dim=1) / (clean * clean).sum(dim=1)
    residual_std = (out - gain[:, None] * clean).std(dim=1)
    return applied.numpy(), gain.numpy(), residual_std.numpy()


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
def test_per_clip_distributions_match_audiomentations(device):
    clips = tones()
    generator = torch.Generator(device=device).manual_seed(0)
    ours = WaveAugment.from_augment(WIDE)(clips.to(device), generator).cpu()
    reference = audiomentations_batch(WIDE, clips)
    our_applied, our_gain, our_noise = measured(clips, ours)
    ref_applied, ref_gain, ref_noise = measured(clips, reference)

    # The apply rate is wave_prob (binomial test), for both.
    assert stats.binomtest(int(our_applied.sum()), CLIPS, WIDE.wave_prob).pvalue > P_MIN
    assert stats.binomtest(int(ref_applied.sum()), CLIPS, WIDE.wave_prob).pvalue > P_MIN
    # Gain ratio and output noise level: same distributions (two-sample KS), in the promised range.
    assert stats.ks_2samp(our_gain, ref_gain).pvalue > P_MIN
    assert stats.ks_2samp(our_noise, ref_noise).pvalue > P_MIN
    assert 0.5 - 1e-3 < our_gain.min() and our_gain.max() < 4.0 + 1e-3
    # Noise is added before the gain: the noise left in the output scales with the clip's gain.
    assert np.corrcoef(our_gain, our_noise)[0, 1] > 0.3


def test_swapped_order_or_wrong_db_conversion_would_be_caught():
    """Negative controls: the checks above reject the plausible mistakes by a wide margin."""
    clips = tones()
    reference = audiomentations_batch(WIDE, clips)
    _, ref_gain, ref_noise = measured(clips, reference)
    augmentation = WaveAugment.from_augment(WIDE)
    generator = torch.Generator().manual_seed(0)
    draws = augmentation.draw(CLIPS, generator)
    noise = torch.randn(clips.shape, generator=generator)
    applied = draws.applied[:, None]

    gain_first = torch.where(applied, clips * draws.gain_ratio[:, None] + draws.amplitude[:, None] * noise, clips)
    _, _, swapped_noise = measured(clips, gain_first)
    assert stats.ks_2samp(swapped_noise, ref_noise).pvalue < 1e-6

    gain_db = 20 * torch.log10(draws.gain_ratio)
    for wrong_ratio in (torch.pow(10.0, gain_db / 10), 0.5 + 3.5 * (gain_db + 6.0206) / 18.0618):  # /10; linear
        wrong = torch.where(applied, (clips + draws.amplitude[:, None] * noise) * wrong_ratio[:, None], clips)
        _, wrong_gain, _ = measured(clips, wrong)
        assert stats.ks_2samp(wrong_gain, ref_gain).pvalue < 1e-6


def test_the_batch_is_noise_then_gain_of_the_draws_and_untouched_clips_are_returned_as_they_are():
    clips = tones(64, 512)
    before = clips.clone()
    augmentation = WaveAugment.from_augment(WIDE)
    out = augmentation(clips, torch.Generator().manual_seed(3))
    generator = torch.Generator().manual_seed(3)  # the same draws again, in the same order
    draws = augmentation.draw(64, generator)
    noise = torch.randn(clips.shape, generator=generator)
    assert 0 < int(draws.applied.sum()) < 64
    assert torch.equal(clips, before)  # the input batch is not modified
    assert torch.equal(out[~draws.applied], clips[~draws.applied])
    expected = (clips + draws.amplitude[:, None] * noise) * draws.gain_ratio[:, None]
    torch.testing.assert_close(out[draws.applied], expected[draws.applied], rtol=0, atol=0)
    assert ((draws.amplitude >= 1e-6) & (draws.amplitude <= WIDE.noise_max)).all()
    # A fixed gain of 2 is +6.02 dB, applied as the ratio 2 (10 ** (dB / 20)).
    doubled = WaveAugment.from_augment(dataclasses.replace(WIDE, wave_prob=1.0, gain_min=2.0, gain_max=2.0))
    assert torch.allclose(doubled.draw(8, torch.Generator().manual_seed(0)).gain_ratio, torch.full((8,), 2.0))


def test_epoch_draws_repeat_for_the_same_epoch_and_rank_and_differ_otherwise():
    clips = tones(16, 256)
    augmentation = WaveAugment.from_augment(dataclasses.replace(WIDE, wave_prob=1.0))
    cpu = torch.device("cpu")
    first = EpochAugmenter(augmentation, cpu, seed=7)(clips)
    assert torch.equal(first, EpochAugmenter(augmentation, cpu, seed=7)(clips))  # a resumed epoch replays
    assert not torch.equal(first, EpochAugmenter(augmentation, cpu, seed=8)(clips))
    assert not torch.equal(first, EpochAugmenter(augmentation, cpu, seed=7, rank=1)(clips))
    assert augment_seed(7, 0) != 7  # its own stream, not the mixup generator's (seeded with the epoch seed)


def test_the_step_augments_on_cuda_by_default_and_the_workers_on_cpu():
    options = TrainOptions(out="unused")
    cpu, cuda = torch.device("cpu"), torch.device("cuda")  # a device name only: nothing runs on it
    assert not runs_on_device(WIDE, cpu, options) and worker_augment(WIDE, cpu, options) is WIDE
    assert runs_on_device(WIDE, cuda, options) and worker_augment(WIDE, cuda, options) is None
    forced = dataclasses.replace(options, device_augment=True)
    assert runs_on_device(WIDE, cpu, forced) and epoch_augmenter(WIDE, cpu, forced, 3) is not None
    assert not runs_on_device(WIDE, cuda, dataclasses.replace(options, device_augment=False))
    quiet = Augment()  # wave_prob 0: nothing to run anywhere
    assert not runs_on_device(quiet, cuda, options) and epoch_augmenter(quiet, cuda, options, 3) is None
    assert epoch_augmenter(WIDE, cpu, options, 3) is None
    # The device cache (no workers) is refused only where the workers would have to augment.
    with pytest.raises(UserError, match="wave_prob=0.6"):
        check_device_cache_allowed(WIDE, runs_on_device(WIDE, cpu, options))
    check_device_cache_allowed(WIDE, runs_on_device(WIDE, cuda, options))


@pytest.mark.parametrize("build", [WaveAugment.from_augment, train_data.build_waveform_augmentation],
                         ids=["on-the-device", "in-the-workers"])
def test_a_recipe_range_audiomentations_would_assert_on_is_a_recipe_error(build):
    """The same one-line error on both paths (the workers' audiomentations would raise a bare AssertionError)."""
    with pytest.raises(RecipeError, match="augment.noise_max = 0 must be at least 1e-06"):
        build(Augment(wave_prob=0.5, noise_max=0.0))
    with pytest.raises(RecipeError, match="0 < gain_min <= gain_max"):
        build(Augment(wave_prob=0.5, noise_max=0.01, gain_min=1.2, gain_max=0.8))


# ------------------------------------------------------------------ end to end: a tiny fold trains on this path

@pytest.mark.usefixtures("one_torch_thread")
def test_training_with_the_device_augmentation_on_cpu(tiny_data, tmp_path, monkeypatch):
    from test_speed_equivalence import fold_options, history_without_time, tiny_recipe

    recipe = tiny_recipe(augment=dict(wave_prob=0.8, noise_max=0.02, gain_min=0.8, gain_max=1.2))
    cache_dir = tmp_path / "cache"
    data = prepare_data(recipe, load_source(tiny_data), fold_options(tmp_path, cache_dir, write_outputs=False))

    def workers_must_not_augment(augment):
        raise AssertionError("the DataLoader workers were given the waveform augmentation")

    calls = []
    original = EpochAugmenter.__call__
    monkeypatch.setattr(train_data, "build_waveform_augmentation", workers_must_not_augment)
    monkeypatch.setattr(EpochAugmenter, "__call__", lambda self, waveforms: calls.append(len(waveforms))
                        or original(self, waveforms))

    def train(name: str, **changes) -> pd.DataFrame:
        options = fold_options(tmp_path / name, cache_dir, epochs=1, device_augment=True, **changes)
        return history_without_time(train_fold(recipe, data, 1, options).history)

    loader_history = train("loader")
    batches = len(calls)
    assert batches >= 2 and sum(calls) == len(data.fold_rows(1)[0])  # every training clip, once
    assert np.isfinite(loader_history[["train_loss", "val_loss"]].to_numpy()).all()
    # Reproducible, and the device cache (no workers at all) now takes this recipe with the same result.
    pd.testing.assert_frame_equal(loader_history, train("again"))
    pd.testing.assert_frame_equal(loader_history, train("resident", device_cache=True))
    assert len(calls) == 3 * batches
    # The augmentation is really applied: without it the same epoch trains differently.
    monkeypatch.setattr(device_augment.WaveAugment, "__call__", lambda self, waveforms, generator: waveforms)
    assert not loader_history["train_loss"].equals(train("unaugmented")["train_loss"])
