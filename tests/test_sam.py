"""SAM, loss scaling, mixup and schedules against hand-computed math."""
import math

import numpy as np
import pytest
import torch

from core.recipe import Training
from core.train.mixup import Mix, draw_mix, mix_batch, mixed_correct, mixed_cross_entropy
from core.train.precision import LossScaler
from core.train.sam import SAM
from core.train.schedules import build_schedule


def quadratic_loss(weights, inputs, targets):
    return ((inputs @ weights - targets) ** 2).mean()


def test_one_sam_step_matches_hand_computed_math():
    torch.manual_seed(0)
    inputs = torch.randn(8, 3, dtype=torch.float64)
    targets = torch.randn(8, dtype=torch.float64)
    start = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    rho, lr, wd, eps = 0.05, 0.1, 0.01, 1e-8

    weights = torch.nn.Parameter(start.clone())
    sam = SAM([weights], torch.optim.AdamW, rho=rho, lr=lr, weight_decay=wd, eps=eps)
    quadratic_loss(weights, inputs, targets).backward()
    sam.first_step(zero_grad=True)
    quadratic_loss(weights, inputs, targets).backward()
    sam.second_step(zero_grad=True)

    # By hand: gradient of mean((Xw - y)^2) is 2/N X^T (Xw - y).
    def grad(w):
        return 2.0 / len(targets) * inputs.numpy().T @ (inputs.numpy() @ w - targets.numpy())

    w = start.numpy()
    g = grad(w)
    perturbed = w + rho * g / (np.linalg.norm(g) + 1e-12)
    g_sam = grad(perturbed)
    # First AdamW step: bias-corrected m = g, v = g^2; decoupled decay first.
    expected = w * (1 - lr * wd) - lr * g_sam / (np.sqrt(g_sam ** 2) + eps)
    np.testing.assert_allclose(weights.detach().numpy(), expected, rtol=1e-10, atol=1e-12)


def test_adaptive_sam_scales_the_perturbation_by_weight_magnitude():
    weights = torch.nn.Parameter(torch.tensor([1.0, 3.0], dtype=torch.float64))
    sam = SAM([weights], torch.optim.SGD, rho=0.1, adaptive=True, lr=0.0)
    weights.grad = torch.tensor([1.0, 1.0], dtype=torch.float64)
    sam.first_step()
    # ASAM: e = rho * w^2 g / ||w g||
    w, g = np.array([1.0, 3.0]), np.array([1.0, 1.0])
    expected = w + 0.1 * w ** 2 * g / np.linalg.norm(np.abs(w) * g)
    np.testing.assert_allclose(weights.detach().numpy(), expected)
    sam.restore()
    np.testing.assert_allclose(weights.detach().numpy(), w)


def test_sam_step_is_refused():
    sam = SAM([torch.nn.Parameter(torch.zeros(1))], torch.optim.SGD, lr=0.1)
    with pytest.raises(RuntimeError, match="first_step"):
        sam.step()


def test_loss_scaler_unscales_and_detects_overflow():
    param = torch.nn.Parameter(torch.tensor([2.0]))
    scaler = LossScaler(enabled=True, scale=1024.0)
    scaler.backward((param * 3.0).sum())
    assert param.grad.item() == pytest.approx(3.0 * 1024.0)
    assert scaler.unscale([param]) is True
    assert param.grad.item() == pytest.approx(3.0)
    param.grad = torch.tensor([float("inf")])
    assert scaler.unscale([param]) is False
    scaler.update(False)
    assert scaler.scale == 512.0


def test_loss_scaler_updates_on_the_device_from_a_flag():
    """The trainer passes its device flag: the scale halves on a skip and doubles after growth_interval good steps."""
    scaler = LossScaler(enabled=True, scale=4.0, growth_interval=2)
    for taken, scale, good in [(True, 4.0, 1), (True, 8.0, 2), (True, 8.0, 3), (False, 4.0, 0), (True, 4.0, 1)]:
        scaler.update(torch.tensor(taken))
        assert isinstance(scaler.scale, torch.Tensor) and scaler.scale.item() == scale
        assert int(scaler.good_steps) == good
    assert scaler.state_dict() == {"scale": 4.0, "good_steps": 1}


def test_loss_scaler_follows_torch_gradscalers_rule():
    """300 steps of taken/skipped flags: the scale equals the one torch.amp.GradScaler's own update kernel gives."""
    flags = np.random.default_rng(0).random(300) < 0.8
    scaler = LossScaler(enabled=True, scale=2.0 ** 10, growth_interval=3)
    scale, growth_tracker = torch.tensor([2.0 ** 10]), torch.zeros(1, dtype=torch.int32)
    seen = set()
    for step, taken in enumerate(flags):
        scaler.update(torch.tensor(bool(taken)))
        torch._amp_update_scale_(scale, growth_tracker, torch.tensor([0.0 if taken else 1.0]), 2.0, 0.5, 3)
        assert scaler.scale.item() == scale.item(), step
        seen.add(scale.item())
    assert max(seen) > 2.0 ** 10 > min(seen)  # it grew and backed off on the way


def test_mixed_cross_entropy_is_the_lambda_weighted_sum():
    torch.manual_seed(1)
    logits = torch.randn(4, 10)
    targets = torch.tensor([0, 3, 5, 9])
    mix = Mix(0.3, torch.tensor([2, 0, 3, 1]))
    ce = torch.nn.functional.cross_entropy
    expected = 0.3 * ce(logits, targets, label_smoothing=0.1) + 0.7 * ce(logits, targets[[2, 0, 3, 1]], label_smoothing=0.1)
    assert mixed_cross_entropy(logits, targets, mix, 0.1).item() == pytest.approx(expected.item(), rel=1e-6)
    assert mixed_cross_entropy(logits, targets, None).item() == pytest.approx(ce(logits, targets).item(), rel=1e-6)


def test_mix_batch_and_weighted_accuracy():
    waveforms = torch.arange(6, dtype=torch.float32).reshape(3, 2)
    mix = Mix(0.25, torch.tensor([1, 2, 0]))
    expected = 0.25 * waveforms + 0.75 * waveforms[[1, 2, 0]]
    assert torch.equal(mix_batch(waveforms, mix), expected)
    logits = torch.tensor([[5.0, 0.0], [0.0, 5.0], [5.0, 0.0]])  # predicts 0, 1, 0
    targets = torch.tensor([0, 0, 1])
    # correct vs y: rows 0 -> 1; vs y[index] = [0, 1, 0]: all 3 -> 0.25*1 + 0.75*3
    assert mixed_correct(logits, targets, mix).item() == pytest.approx(0.25 * 1 + 0.75 * 3)


def test_draw_mix_respects_alpha_and_probability():
    generator = torch.Generator().manual_seed(0)
    assert draw_mix(4, 0.0, 1.0, np.random.default_rng(0), generator) is None
    assert draw_mix(4, 1.0, 0.0, np.random.default_rng(0), generator) is None
    mix = draw_mix(4, 1.0, 1.0, np.random.default_rng(0), generator)
    assert 0.0 <= mix.lam <= 1.0 and sorted(mix.index.tolist()) == [0, 1, 2, 3]


def lrs(training: Training, epochs: int, steps: int = 10, per_epoch_reads: bool = True) -> list[float]:
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=training.lr)
    schedule = build_schedule(optimizer, training, epochs, steps)
    seen = []
    for _ in range(epochs):
        seen.append(optimizer.param_groups[0]["lr"])
        for _ in range(steps if schedule.per_batch else 1):
            optimizer.step()
            schedule.scheduler.step()
    return seen


def test_cosine_schedule_matches_the_reference_formula():
    got = lrs(Training(lr=1e-3, schedule="cosine", eta_min=1e-6), 100)
    for epoch in (1, 50, 100):
        expected = 1e-6 + (1e-3 - 1e-6) * (1 + math.cos(math.pi * (epoch - 1) / 100)) / 2
        assert got[epoch - 1] == pytest.approx(expected, rel=1e-9)


def test_warmup_cosine_matches_the_spec_table():
    got = lrs(Training(lr=0.0012817574949798138, schedule="warmup_cosine", warmup_epochs=2), 200)
    assert got[0] == pytest.approx(1.2818e-5, rel=1e-3)
    assert got[1] == pytest.approx(6.4729e-4, rel=1e-3)
    assert got[2] == pytest.approx(1.2818e-3, rel=1e-3)
    assert got[199] == pytest.approx(1.081e-6, rel=1e-2)


def test_warm_restarts_restart_at_epochs_11_31_71():
    got = lrs(Training(lr=1e-3, schedule="warm_restarts", restart_period=10, restart_mult=2), 150)
    for epoch in (1, 11, 31, 71):
        assert got[epoch - 1] == pytest.approx(1e-3)
    assert got[9] == pytest.approx(2.5e-5, rel=0.05)


def test_onecycle_stepped_per_epoch_stays_in_its_ramp():
    got = lrs(Training(lr=1e-3, schedule="onecycle_per_epoch"), 160, steps=24)
    assert got[0] == pytest.approx(4.0e-5, rel=1e-3)
    assert got[-1] < 5e-4  # the reference quirk: never reaches the peak


def test_warmup_cosine_per_step_starts_at_zero_and_peaks_after_warmup():
    got_steps = []
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=1e-3)
    schedule = build_schedule(optimizer, Training(lr=1e-3, schedule="warmup_cosine_per_step", warmup_epochs=5), 160, 10)
    assert schedule.per_batch
    for _ in range(160 * 10):
        got_steps.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.scheduler.step()
    assert got_steps[0] == 0.0
    assert got_steps[50] == pytest.approx(1e-3)
    assert got_steps[25] == pytest.approx(0.5e-3)
    assert got_steps[-1] < 1e-8
