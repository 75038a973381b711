"""The work overlapping windows share: mel frames (exact), PCEN (not shareable: stated and measured), and the
backbone-once path (a different computation, equal to the per-window one for a single window)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import demo_clip, save_fold_checkpoints, tiny

from core import registry
from core.infer.predictors import torch_predictor
from core.model.network import build_model

BASELINE = "resnet34_pcen_sam_8fold"


def strip_of(count: int, hop: int, clip: int, rate: int) -> torch.Tensor:
    """A real-looking strip of audio covering `count` windows."""
    length = (count - 1) * hop + clip
    pieces = [demo_clip(index, rate, clip) for index in range(length // clip + 1)]
    return torch.from_numpy(np.concatenate(pieces)[:length].copy())


@pytest.mark.parametrize("name", [BASELINE, "resnet34_mr_salience_fusion_film_attention"])
@pytest.mark.parametrize("hop_seconds", [0.5, 0.3, 0.50003])   # the last is off the mel hop grid: per window
def test_shared_mel_frames_equal_the_per_window_mel(name, hop_seconds, one_torch_thread):
    recipe = registry.get(name)
    frontend = build_model(recipe).eval().audio_input.frontend
    rate, clip = recipe.frontend.sample_rate, recipe.frontend.num_samples
    hop, count = int(round(hop_seconds * rate)), 4
    strip = strip_of(count, hop, clip, rate)
    with torch.inference_mode():
        shared = frontend.window_energies(strip, count, hop, clip)
        per_window = frontend.mel_energies(strip.unfold(0, clip, hop)[:count])
        whole = frontend.mel_energies(strip[None])[0][0]
    for mine, theirs in zip(shared, per_window, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-6, atol=1e-7)
    if hop % recipe.frontend.hop_length == 0:
        # The shared frames are the strip's own; the window edges (reflection) are not, hence computed per window.
        step, frames = hop // recipe.frontend.hop_length, per_window[0].shape[-1]
        sliced = torch.stack([whole[:, k * step:k * step + frames] for k in range(count)])
        differs = (sliced - per_window[0]).abs().amax(dim=(0, 1)) > 1e-4 * per_window[0].abs().max()
        assert differs[0] and differs[-1] and not differs[5:-5].any()


def test_pcen_of_a_window_depends_on_its_start_so_it_is_not_shared(one_torch_thread):
    """PCEN's smoother starts at each window's first frame (M[0] = E[0]): the strip's PCEN sliced at a later
    window differs from that window's own PCEN, most at its first frames, then decays as (1 - s)^frames."""
    recipe = registry.get(BASELINE)
    frontend = build_model(recipe).eval().audio_input.frontend
    rate, clip, hop = recipe.frontend.sample_rate, recipe.frontend.num_samples, recipe.frontend.sample_rate // 2
    strip = strip_of(2, hop, clip, rate)
    with torch.inference_mode():
        energies = frontend.window_energies(strip, 2, hop, clip)
        own = frontend.normalise(energies)[1, 0]                                # window 1 on its own
        whole = frontend.normalise(frontend.mel_energies(strip[None]))[0, 0]   # the strip, sliced at window 1
    step = hop // recipe.frontend.hop_length
    difference = (whole[:, step:step + own.shape[-1]] - own).abs().amax(dim=0)
    assert difference[2] > 1e-2 * own.abs().max()                               # the start differs ...
    assert difference[100:-2].max() < 1e-5 * own.abs().max()                  # ... not 1 s later ((5/6)^100)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("solutions")
    save_fold_checkpoints(root, BASELINE, folds=(1, 2), recipe=tiny(BASELINE))
    return torch_predictor([BASELINE], [1.0], "mean", root, "cpu", "fp32")


def test_strip_scores_equal_the_stacked_windows(model, one_torch_thread):
    hop, count = model.sample_rate // 2, 6
    strip = strip_of(count, hop, model.num_samples, model.sample_rate).numpy()
    windows = np.stack([strip[k * hop:k * hop + model.num_samples] for k in range(count)])
    np.testing.assert_allclose(model.predict_strip(strip, count, hop, (1, 2), False), model.predict(windows, (1, 2)),
                               atol=1e-6)


def test_backbone_once_is_the_per_window_model_on_one_window_and_an_approximation_on_more(model, one_torch_thread):
    hop, count = model.sample_rate // 2, 6
    strip = strip_of(count, hop, model.num_samples, model.sample_rate).numpy()
    alone = strip[:model.num_samples]
    np.testing.assert_allclose(model.predict_strip(alone, 1, hop, (1, 2), True), model.predict(alone[None], (1, 2)),
                               atol=1e-5)
    approximate = model.predict_strip(strip, count, hop, (1, 2), True)
    exact = model.predict_strip(strip, count, hop, (1, 2), False)
    assert approximate.shape == exact.shape == (count, 10)
    np.testing.assert_allclose(approximate.sum(axis=1), 1.0, atol=1e-5)
    assert not np.allclose(approximate, exact, atol=1e-4)       # not the same computation (module docstring)
