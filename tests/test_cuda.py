"""The GPU paths on a GPU (`pytest -m cuda`; skipped where CUDA is absent, run by benchmarks/gpu_check.sh).

Tolerances, stated once: a bf16/fp16 SAM step's pass-1 loss within 2 % of the fp32 step's and its
post-step logits within 5 % of the fp32 logits' range (autocast keeps ~3 significant digits);
fp32 layouts (channels_last) and compiled backbones within 1e-3 relative (cuDNN picks other kernels);
the device cache gives exactly the loader's batches.
"""
from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
from test_speed_equivalence import one_sam_step, tiny_recipe

from core.data.metadata import load_source
from core.train.data import ResidentBatches, WaveformDataset, make_loader, make_resident, prepare_data
from core.train.fold import Runtime, build_on_device, train_fold
from core.train.options import TrainOptions
from core.train.precision import LossScaler

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

AUTOCAST_LOSS_REL = 0.02
AUTOCAST_LOGIT_SHARE = 0.05
FP32_REL = 1e-3


def cuda(precision: str, channels_last: bool = False) -> Runtime:
    return Runtime(torch.device("cuda"), precision, channels_last)


def fresh(recipe, runtime: Runtime):
    return build_on_device(recipe, runtime, 0, 1)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_autocast_sam_step_is_finite_and_matches_fp32(precision):
    recipe = tiny_recipe()
    reference = fresh(recipe, cuda("fp32"))
    model = copy.deepcopy(reference)
    fp32_loss, fp32_logits = one_sam_step(reference, recipe, cuda("fp32"))
    scaler = LossScaler(enabled=precision == "fp16")
    loss, logits = one_sam_step(model, recipe, cuda(precision), scaler=scaler)
    assert np.isfinite(loss) and torch.isfinite(logits).all()
    assert loss == pytest.approx(fp32_loss, rel=AUTOCAST_LOSS_REL)
    spread = float(fp32_logits.abs().max())
    assert float((logits.float() - fp32_logits).abs().max()) <= AUTOCAST_LOGIT_SHARE * max(spread, 1.0)
    if precision == "fp16":
        assert scaler.good_steps == 1  # the scaled step was taken, not skipped


def test_channels_last_gives_the_same_logits():
    recipe = tiny_recipe()
    plain = fresh(recipe, cuda("fp32")).eval()
    layout = copy.deepcopy(plain).to(memory_format=torch.channels_last)
    waveforms = torch.randn(8, recipe.frontend.num_samples, device="cuda") * 0.1
    with torch.no_grad():
        torch.testing.assert_close(layout(waveforms), plain(waveforms), rtol=FP32_REL, atol=FP32_REL)


def test_device_cache_gives_the_loaders_batches(tiny_data, tmp_path):
    recipe = tiny_recipe()
    options = TrainOptions(out=tmp_path, device="cuda", progress=False, write_outputs=False)
    data = prepare_data(recipe, load_source(tiny_data), options)
    rows = np.arange(len(data.train.table))
    resident = make_resident(data.train, torch.device("cuda"))
    batches = ResidentBatches(resident, rows, 8, shuffle=True, drop_last=False, seed=5)
    loader = make_loader(WaveformDataset(data.train, rows), 8, shuffle=True, drop_last=False, workers=0, seed=5,
                         pin_memory=True)
    assert len(batches) == len(loader)
    for (gpu_waves, gpu_labels, gpu_salience), (waves, labels, salience) in zip(batches, loader, strict=True):
        assert gpu_waves.device.type == "cuda"
        assert torch.equal(gpu_waves.cpu(), waves) and torch.equal(gpu_labels.cpu(), labels)
        assert torch.equal(gpu_salience.cpu(), salience)


def test_compiled_backbone_gives_the_eager_loss(tiny_data, tmp_path):
    recipe = tiny_recipe()
    data = prepare_data(recipe, load_source(tiny_data), TrainOptions(out=tmp_path, progress=False,
                                                                      write_outputs=False))
    base = TrainOptions(out=tmp_path / "eager", folds=(1,), epochs=1, device="cuda", precision="fp32",
                        progress=False, write_outputs=False)
    eager = train_fold(recipe, data, 1, base)
    compiled = train_fold(recipe, data, 1, dataclasses.replace(base, out=tmp_path / "compiled", compile=True))
    assert compiled.history[0]["train_loss"] == pytest.approx(eager.history[0]["train_loss"], rel=FP32_REL)
    assert compiled.history[0]["val_loss"] == pytest.approx(eager.history[0]["val_loss"], rel=10 * FP32_REL)
