"""The inference form (core/model/inference_form.py): BatchNorm folded into the convolutions, channels_last.
The same function as the trained model to float rounding, for every registered solution; the trained module
untouched; what cannot be folded said and left as it is."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import demo_clip, save_fold_checkpoints, tiny
from torch import nn

from core import registry
from core.infer.predictors import torch_predictor
from core.model.inference_form import fold_batchnorm, inference_form
from core.model.network import build_model

BASELINE = "resnet34_pcen_sam_8fold"


def with_trained_statistics(model: nn.Module) -> nn.Module:
    """BatchNorm running statistics and affine weights far from their initial (identity-like) values, so a
    fold that dropped or misapplied any of them shows in the outputs."""
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            channels = module.num_features
            module.running_mean.copy_(torch.rand(channels, generator=generator) * 2 - 1)
            module.running_var.copy_(torch.rand(channels, generator=generator) * 1.5 + 0.5)
            if module.affine:
                module.weight.data.copy_(torch.rand(channels, generator=generator) + 0.5)
                module.bias.data.copy_(torch.rand(channels, generator=generator) - 0.5)
    return model.eval()


def clips_for(recipe, count: int = 2) -> torch.Tensor:
    return torch.stack([torch.from_numpy(demo_clip(k, recipe.frontend.sample_rate, recipe.frontend.num_samples))
                        for k in range(count)])


@pytest.mark.parametrize("name", registry.names())
def test_the_inference_form_is_the_trained_function_for_every_solution(name, one_torch_thread):
    recipe = tiny(name)
    if recipe.backbone.stem == "deep":  # the deep stem's 64 channels need the real body (test_resnet's is 32 wide)
        recipe = recipe.derive(backbone=dict(arch=registry.get(name).backbone.arch))
    torch.manual_seed(0)
    trained = with_trained_statistics(build_model(recipe))
    batchnorms = sum(isinstance(m, nn.BatchNorm2d) for m in trained.backbone.modules())
    clips, salience = clips_for(recipe), torch.tensor([1, 2])
    with torch.inference_mode():
        expected = trained(clips, salience)
        fast = inference_form(copy.deepcopy(trained))
        got = fast(clips, salience)
    left = sum(isinstance(m, nn.BatchNorm2d) for m in fast.backbone.modules())
    assert batchnorms > 0 and left == 0                                # every conv -> BatchNorm pair folded
    convolutions = [m for m in fast.backbone.modules() if isinstance(m, nn.Conv2d)]
    assert convolutions and all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convolutions)
    # Float rounding only: relative to the logits' scale (an element near zero has no relative precision).
    assert (got - expected).abs().max() <= 2e-5 * expected.abs().max()
    torch.testing.assert_close(got.softmax(1), expected.softmax(1), rtol=0, atol=1e-5)


def test_folding_the_baseline_leaves_no_batchnorm_and_keeps_its_outputs(one_torch_thread):
    recipe = registry.get(BASELINE)
    torch.manual_seed(0)
    trained = with_trained_statistics(build_model(recipe))
    clips = clips_for(recipe)
    state = {key: value.clone() for key, value in trained.state_dict().items()}
    with torch.inference_mode():
        maps = trained.audio_input(trained.mel_energies(clips))
        expected = trained.backbone(maps)
        folded = fold_batchnorm(trained.backbone)
        got = folded.to(memory_format=torch.channels_last)(maps)
        again = trained.backbone(maps)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in trained.backbone.modules()) == 36  # ResNet-34's, untouched
    after = trained.state_dict()                                        # ... its weights and its function too
    assert after.keys() == state.keys() and all(torch.equal(after[key], state[key]) for key in state)
    assert torch.equal(again, expected)
    assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_a_training_mode_module_is_refused():
    with pytest.raises(ValueError, match="eval-mode"):
        fold_batchnorm(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)).train())


class DataDependent(nn.Module):
    """A block torch.fx cannot trace (control flow on a tensor's value)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.norm = nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            x = -x
        return self.norm(self.conv(x))


def test_an_untraceable_backbone_is_kept_as_it_is_and_said():
    module = DataDependent().eval()
    with pytest.warns(UserWarning, match="BatchNorm not folded"):
        assert fold_batchnorm(module) is module


class SharedConvolution(nn.Module):
    """A convolution called twice, once before a BatchNorm: folding it would change the other call."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.norm = nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x)) + self.conv(x)


def test_a_pair_whose_convolution_is_called_twice_is_kept_as_it_is_and_said():
    module = with_trained_statistics(SharedConvolution())
    with pytest.warns(UserWarning, match="conv called at more than one place"):
        assert fold_batchnorm(module) is module


def test_detect_and_classify_use_the_inference_form_and_score_as_the_trained_models(tmp_path, monkeypatch,
                                                                                   one_torch_thread):
    import core.model.inference_form as form

    save_fold_checkpoints(tmp_path, BASELINE, folds=(1, 2), recipe=tiny(BASELINE))
    converted = []
    monkeypatch.setattr(form, "inference_form", lambda model: converted.append(model) or inference_form(model))
    fast = torch_predictor([BASELINE], [1.0], "mean", tmp_path, "cpu", "fp32")
    assert len(converted) == 2                                         # each fold model
    as_trained = torch_predictor([BASELINE], [1.0], "mean", tmp_path, "cpu", "fp32", optimise=False)
    assert len(converted) == 2
    recipe = tiny(BASELINE)
    windows = clips_for(recipe, 4).numpy()
    hop = recipe.frontend.sample_rate // 2
    strip = np.concatenate([windows[0], windows[1]])[: 3 * hop + recipe.frontend.num_samples]
    np.testing.assert_allclose(fast.predict(windows, (1, 2)), as_trained.predict(windows, (1, 2)), atol=1e-5)
    for backbone_once in (False, True):  # --backbone-once runs the folded backbone over the whole strip
        np.testing.assert_allclose(fast.predict_strip(strip, 4, hop, (1, 2), backbone_once),
                                   as_trained.predict_strip(strip, 4, hop, (1, 2), backbone_once), atol=1e-5)
