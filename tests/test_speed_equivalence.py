"""Speed work must not change results: every switch that runs on CPU against the plain path.

Mechanics tests use `tiny_recipe()`: the baseline recipe with 0.5 s clips at 8 kHz, 32 mels and timm's
0.4M-parameter `test_resnet` backbone (same SAM trainer, PCEN frontend, mixup and SpecAugment).
"""
from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from core import PROB_COLUMNS, registry
from core.data.audio import load_clip
from core.data.metadata import load_source
from core.errors import UserError
from core.model.network import build_model
from core.recipe import Recipe
from core.train import checkpoint
from core.train.data import (
    ResidentBatches,
    WaveformDataset,
    check_device_cache_allowed,
    check_device_cache_fits,
    make_loader,
    make_resident,
    prepare_data,
)
from core.train.distributed import Replicas
from core.train.fold import Runtime, build_on_device, train_fold
from core.train.mixup import Mix
from core.train.options import TrainOptions
from core.train.precision import LossScaler
from core.train.sam import SAM
from core.train.solution import train_solution
from core.train.trainer import sam_step

TINY_SOLUTION = "tiny_speed"
TINY_CHANGES = dict(
    frontend=dict(sample_rate=8000, clip_seconds=0.5, n_ffts=(256,), hop_length=80, n_mels=32, f_max=4000.0),
    backbone=dict(arch="test_resnet"),
    augment=dict(freq_mask=8, time_mask=10),
    training=dict(batch_size=8),
)
CPU_FP32 = Runtime(torch.device("cpu"), "fp32", channels_last=False)


def tiny_recipe(**changes) -> Recipe:
    """The baseline recipe shrunk for mechanics tests (see the module docstring)."""
    return registry.get("resnet34_pcen_sam_8fold").derive(name=TINY_SOLUTION, **TINY_CHANGES).derive(**changes)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.getbasetemp() / "waveform-cache"  # the folder conftest's isolated_cache points to


def fold_options(out: Path, cache_dir: Path, **changes) -> TrainOptions:
    base = TrainOptions(out=out, submissions=out / "submissions", folds=(1,), epochs=2, device="cpu",
                        precision="fp32", progress=False, cache_dir=cache_dir)
    return dataclasses.replace(base, **changes)


@pytest.fixture(scope="module")
def trained(tiny_data, cache_dir, tmp_path_factory) -> Path:
    """Two tiny folds trained for two epochs; returns the solution folder."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("trained")
    out = root / "solutions" / TINY_SOLUTION
    options = TrainOptions(out=out, submissions=root / "submissions", folds=(1, 2), epochs=2, device="cpu",
                           precision="fp32", progress=False, cache_dir=cache_dir)
    train_solution(tiny_recipe(), load_source(tiny_data), options)
    return out


def final_weights(out: Path, fold: int = 1) -> dict[str, torch.Tensor]:
    """The weights after the last epoch (the resume state train_fold leaves behind)."""
    return torch.load(out / f"last_fold{fold}.pt", weights_only=True)["model"]


def history_without_time(history: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(history).drop(columns=["seconds"])


# ------------------------------------------------------------------ inference: one pass, same CSVs

def test_predict_command_reproduces_training_csvs_in_one_pass_over_the_audio(trained, tiny_data, tmp_path,
                                                                            monkeypatch):
    from typer.testing import CliRunner

    from core.cli import app

    reads = []
    original = WaveformDataset.__getitem__
    monkeypatch.setattr(WaveformDataset, "__getitem__", lambda self, item: reads.append(item) or original(self, item))
    out, submission = tmp_path / "predicted", tmp_path / "submission.csv"
    result = CliRunner().invoke(app, [
        "predict", TINY_SOLUTION, "--data", str(tiny_data), "--solutions", str(trained.parent), "--out", str(out),
        "--submission", str(submission), "--batch-size", "8", "--device", "cpu", "--precision", "fp32",
        "--no-progress"])
    assert result.exit_code == 0, result.output
    test_clips = len(load_source(tiny_data).test)
    assert len(reads) == test_clips  # every clip read once for both fold models, not once per fold
    for fold in (1, 2):
        # Same weights, same batches: the CSVs are byte-identical to the ones training wrote.
        assert (out / f"best_model_fold{fold}.csv").read_text() == (trained / f"best_model_fold{fold}.csv").read_text()
    trained_submission = trained.parent.parent / "submissions" / f"{TINY_SOLUTION}.csv"
    assert submission.read_text() == trained_submission.read_text()


# ------------------------------------------------------------------ the waveform cache

def test_cached_waveforms_give_the_predictions_of_decoding_every_clip(trained, tiny_data, cache_dir):
    """The cache is decode + resample once, stored as float16: same classes, probabilities within float16 noise."""
    recipe = tiny_recipe()
    source = load_source(tiny_data)
    options = fold_options(trained, cache_dir, write_outputs=False)
    data = prepare_data(recipe, source, options)
    frontend = recipe.frontend
    decoded = np.stack([load_clip(Path(path), frontend.sample_rate, frontend.num_samples)
                        for path in data.test.table["path"]])
    cached = np.asarray(data.test.waveforms)
    np.testing.assert_array_equal(cached, decoded.astype(np.float16))  # the cache holds exactly the decoded clips

    model = build_on_device(recipe, CPU_FP32, 0, 1)
    checkpoint.load_best_into(trained / "best_model_fold1.pt", model, recipe.name)
    with torch.no_grad():
        uncached_probs = torch.softmax(model.eval()(torch.from_numpy(decoded)), dim=1).numpy()
    cached_probs = pd.read_csv(trained / "best_model_fold1.csv")[PROB_COLUMNS].to_numpy()
    assert (uncached_probs.argmax(axis=1) == cached_probs.argmax(axis=1)).all()
    np.testing.assert_allclose(uncached_probs, cached_probs, atol=1e-3)
    assert np.abs(uncached_probs - cached_probs).max() > 0  # float16 storage is visible, just harmless


# ------------------------------------------------------------------ the device cache

@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("replicas", [None, Replicas(rank=1, local_rank=1, world_size=2)])
def test_device_cache_batches_equal_dataloader_batches(tiny_data, cache_dir, tmp_path, drop_last, replicas):
    recipe = tiny_recipe()
    data = prepare_data(recipe, load_source(tiny_data), fold_options(tmp_path, cache_dir, write_outputs=False))
    train_rows, _ = data.fold_rows(1)
    resident = make_resident(data.train, torch.device("cpu"))
    for seed in (0, 12345):
        loader = make_loader(WaveformDataset(data.train, train_rows), 4, shuffle=True, drop_last=drop_last,
                             workers=0, seed=seed, pin_memory=False, replicas=replicas)
        gathered = ResidentBatches(resident, train_rows, 4, shuffle=True, drop_last=drop_last, seed=seed,
                                   replicas=replicas)
        assert len(gathered) == len(loader)
        batches = list(zip(loader, gathered, strict=True))
        assert len(batches) == len(loader) > 1
        for (waveforms, labels, salience), (resident_waveforms, resident_labels, resident_salience) in batches:
            assert resident_waveforms.dtype == waveforms.dtype == torch.float32
            assert torch.equal(resident_waveforms, waveforms)
            assert torch.equal(resident_labels, labels) and torch.equal(resident_salience, salience)


def test_device_cache_training_equals_dataloader_training(tiny_data, cache_dir, tmp_path):
    recipe = tiny_recipe()
    data = prepare_data(recipe, load_source(tiny_data), fold_options(tmp_path, cache_dir))
    plain = train_fold(recipe, data, 1, fold_options(tmp_path / "plain", cache_dir))
    resident = train_fold(recipe, data, 1, fold_options(tmp_path / "resident", cache_dir, device_cache=True))
    pd.testing.assert_frame_equal(history_without_time(plain.history), history_without_time(resident.history))
    plain_weights, resident_weights = final_weights(tmp_path / "plain"), final_weights(tmp_path / "resident")
    assert plain_weights.keys() == resident_weights.keys()
    for key, tensor in plain_weights.items():
        assert torch.equal(tensor, resident_weights[key]), key


def test_device_cache_refuses_what_it_cannot_do():
    with pytest.raises(UserError, match=r"needs 1024\.00 GiB on cpu"):
        check_device_cache_fits(2 ** 40, torch.device("cpu"))
    check_device_cache_fits(2 ** 20, torch.device("cpu"))
    noisy = registry.get("resnet34_salience_fusion_film_attention").augment
    assert noisy.wave_prob > 0
    with pytest.raises(UserError, match="wave_prob=0.6"):
        check_device_cache_allowed(noisy)
    check_device_cache_allowed(tiny_recipe().augment)


# ------------------------------------------------------------------ channels_last and torch.compile

def fixed_batch(recipe: Recipe) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Mix]:
    """8 noise clips, labels, salience and a mixup draw, the same on every call."""
    generator = torch.Generator().manual_seed(3)
    waveforms = torch.randn(8, recipe.frontend.num_samples, generator=generator) * 0.1
    mix = Mix(0.3, torch.randperm(8, generator=generator))
    return waveforms, torch.arange(8) % 10, torch.ones(8, dtype=torch.int64), mix


def one_sam_step(model: torch.nn.Module, recipe: Recipe, runtime: Runtime, scaler: LossScaler | None = None,
                 base: type = torch.optim.AdamW) -> tuple[float, torch.Tensor]:
    """(pass-1 loss, eval logits after the step) of one mixed SAM step on a fixed batch with fixed masks."""
    waveforms, labels, salience, mix = fixed_batch(recipe)
    decay = {"weight_decay": 1e-2} if base is torch.optim.AdamW else {}
    sam = SAM(model.parameters(), base, rho=0.05, lr=1e-3, **decay)
    torch.manual_seed(4)  # the same SpecAugment masks
    outcome = sam_step(model.train(), sam, scaler or LossScaler(False), waveforms, labels, salience, mix,
                       recipe, runtime)
    with torch.no_grad():
        logits = model.eval()(waveforms, salience)
    return outcome.loss.item() if outcome.taken else float("nan"), logits


def pass_one_gradients(model: torch.nn.Module, recipe: Recipe) -> torch.Tensor:
    waveforms, labels, _, _ = fixed_batch(recipe)
    torch.manual_seed(4)
    torch.nn.functional.cross_entropy(model.train()(waveforms), labels).backward()
    return torch.cat([param.grad.flatten() for param in model.parameters()])


def flat_parameters(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([param.detach().flatten() for param in model.parameters()])


def test_channels_last_step_matches_the_default_layout_within_tolerance():
    """The layout only reorders float sums: gradients agree to ~1e-5, a SAM step's update to < 1%.

    SAM amplifies the noise a little (near-cancelling gradient components steer the perturbation), so
    the step is compared as a whole update vector. SGD is the base optimiser because its update is
    linear in the gradient; Adam's first step is ~lr * sign(g) and turns float noise on near-zero
    gradients into lr-sized differences of single weights.
    """
    recipe = tiny_recipe()
    torch.manual_seed(0)
    model = build_model(recipe)
    channels_last = copy.deepcopy(model).to(memory_format=torch.channels_last)
    assert channels_last.backbone.body.layer1[0].conv1.weight.is_contiguous(memory_format=torch.channels_last)

    plain_grads = pass_one_gradients(copy.deepcopy(model), recipe)
    layout_grads = pass_one_gradients(copy.deepcopy(channels_last), recipe)
    assert (plain_grads - layout_grads).norm() <= 1e-5 * plain_grads.norm()

    start = flat_parameters(model)
    plain_loss, plain_logits = one_sam_step(model, recipe, CPU_FP32, base=torch.optim.SGD)
    layout_loss, layout_logits = one_sam_step(channels_last, recipe, dataclasses.replace(CPU_FP32, channels_last=True),
                                              base=torch.optim.SGD)
    assert layout_loss == pytest.approx(plain_loss, rel=1e-6)
    plain_update, layout_update = flat_parameters(model) - start, flat_parameters(channels_last) - start
    assert plain_update.norm() > 0
    assert (layout_update - plain_update).norm() <= 0.01 * plain_update.norm()
    torch.testing.assert_close(layout_logits, plain_logits, atol=2e-5, rtol=1e-4)


def test_compiled_backbone_trains_like_eager_and_keeps_checkpoint_keys(tiny_data, cache_dir, tmp_path):
    """--compile wiring with the aot_eager backend (no C++ build): same numbers, same checkpoint keys."""
    recipe = tiny_recipe()
    data = prepare_data(recipe, load_source(tiny_data), fold_options(tmp_path, cache_dir))
    eager = train_fold(recipe, data, 1, fold_options(tmp_path / "eager", cache_dir, epochs=1))
    compiled = train_fold(recipe, data, 1, fold_options(tmp_path / "compiled", cache_dir, epochs=1, compile=True,
                                                        compile_backend="aot_eager"))
    pd.testing.assert_frame_equal(history_without_time(eager.history), history_without_time(compiled.history))
    eager_weights, compiled_weights = final_weights(tmp_path / "eager"), final_weights(tmp_path / "compiled")
    assert list(compiled_weights) == list(eager_weights)  # no "_orig_mod." prefixes: checkpoints stay loadable
    for key, tensor in eager_weights.items():
        torch.testing.assert_close(compiled_weights[key], tensor, atol=1e-6, rtol=1e-5, msg=key)


@pytest.mark.slow
def test_inductor_compiled_training_matches_eager(tiny_data, cache_dir, tmp_path):
    """The real --compile (inductor, a C++ build on CPU: minutes). Fused kernels round differently: tolerance."""
    recipe = tiny_recipe()
    data = prepare_data(recipe, load_source(tiny_data), fold_options(tmp_path, cache_dir))
    eager = train_fold(recipe, data, 1, fold_options(tmp_path / "eager", cache_dir, epochs=1))
    compiled = train_fold(recipe, data, 1, fold_options(tmp_path / "compiled", cache_dir, epochs=1, compile=True))
    # Measured 2026-12-06 (AMD EPYC, torch 2.14.1): 1.9e-3 relative, the same before and after the trainer
    # refactor (inductor's CPU kernels depend on the vector ISA, which varies between machines; SAM's two
    # passes carry the rounding on through the epoch). The aot_eager test above checks the wiring exactly.
    assert compiled.history[0]["train_loss"] == pytest.approx(eager.history[0]["train_loss"], rel=5e-3)
    assert compiled.history[0]["val_loss"] == pytest.approx(eager.history[0]["val_loss"], rel=1e-2)


# ------------------------------------------------------------------ precision: bf16 / fp16 and loss scaling

@pytest.mark.parametrize(("capability", "expected"), [((7, 0), "fp16"), ((7, 5), "fp16"), ((8, 0), "bf16"),
                                                      ((9, 0), "bf16")])
def test_auto_precision_uses_bf16_only_where_the_gpu_has_it_natively(monkeypatch, capability, expected):
    from core.train.precision import resolve_precision

    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)  # V100/T4 emulate
    assert resolve_precision("auto", torch.device("cuda", 0)) == expected
    assert resolve_precision("fp16", torch.device("cuda", 0)) == "fp16"
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"


def test_loss_scaling_is_undone_before_both_sam_passes():
    """A power-of-two scale is exact: with SGD (update = lr * g) any still-scaled gradient would show up 1024x."""
    recipe = tiny_recipe()
    torch.manual_seed(0)
    model = build_model(recipe)
    scaled = copy.deepcopy(model)
    scaler = LossScaler(enabled=True, scale=1024.0)
    plain_loss, _ = one_sam_step(model, recipe, CPU_FP32, base=torch.optim.SGD)
    scaled_loss, _ = one_sam_step(scaled, recipe, CPU_FP32, scaler=scaler, base=torch.optim.SGD)
    assert scaled_loss == plain_loss
    for (name, param), scaled_param in zip(model.named_parameters(), scaled.parameters(), strict=True):
        assert torch.equal(param, scaled_param), name
    assert scaler.good_steps == 1 and scaler.scale == 1024.0


def test_fp16_overflow_in_either_pass_skips_the_whole_step():
    recipe = tiny_recipe()
    runtime = Runtime(torch.device("cpu"), "fp16", channels_last=False)
    torch.manual_seed(0)
    model = build_model(recipe)
    before = copy.deepcopy(model.state_dict())
    scaler = LossScaler(enabled=True, scale=2.0 ** 120)  # fp16 backward overflows in pass 1
    loss, _ = one_sam_step(model, recipe, runtime, scaler=scaler)
    assert np.isnan(loss) and scaler.scale == 2.0 ** 119
    for (name, param) in model.named_parameters():
        assert torch.equal(param, before[name]), name

    class OverflowsInPassTwo(torch.nn.Module):
        """The model, except that its second forward call (SAM's pass 2) returns inf logits."""

        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner, self.calls = inner, 0

        def forward(self, *args):
            self.calls += 1
            logits = self.inner(*args)
            return logits * float("inf") if self.calls == 2 else logits

    wrapped = OverflowsInPassTwo(model)
    scaler = LossScaler(enabled=True, scale=2.0 ** 8)
    waveforms, labels, salience, mix = fixed_batch(recipe)
    sam = SAM(model.parameters(), torch.optim.AdamW, rho=0.05, lr=1e-3)
    outcome = sam_step(wrapped.train(), sam, scaler, waveforms, labels, salience, mix, recipe, runtime)
    assert wrapped.calls == 2 and not outcome.taken and outcome.counted and np.isfinite(outcome.loss.item())
    assert scaler.scale == 2.0 ** 7
    for (name, param) in model.named_parameters():  # pass 1's perturbation was undone, nothing stepped
        assert torch.equal(param, before[name]), name
    # AdamW's state is as a fresh optimiser's first step would create it: step 0, zero moments.
    assert all(not value.any() for state in sam.base_optimizer.state.values() for value in state.values())


def test_fp16_step_with_a_sane_scale_trains():
    recipe = tiny_recipe()
    torch.manual_seed(0)
    model = build_model(recipe)
    before = copy.deepcopy(model.state_dict())
    scaler = LossScaler(enabled=True, scale=2.0 ** 8)
    loss, logits = one_sam_step(model, recipe, Runtime(torch.device("cpu"), "fp16", channels_last=False), scaler=scaler)
    assert np.isfinite(loss) and scaler.good_steps == 1 and torch.isfinite(logits).all()
    parameters = dict(model.named_parameters())
    changed = [name for name, param in parameters.items() if not torch.equal(param, before[name])]
    assert len(changed) >= 0.9 * len(parameters)
