"""The training maths against hand computations in float64 numpy: SAM / ASAM (both passes), mixup's
lambda distribution and gating, the mixed loss and accuracy, and the salience-embedding mixup.

SAM is driven only through its public API (first_step / second_step / restore / grad_norm / param_groups),
so these tests hold for any internal implementation of the update.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import tiny
from scipy import stats

from core.model.blocks import SalienceEmbedding
from core.model.network import build_model
from core.train.mixup import Mix, draw_mix, mix_batch, mixed_correct, mixed_cross_entropy
from core.train.sam import SAM

# ----------------------------------------------------------------------------------------------- SAM
# Loss L(w) = sum_i 0.5 * a_i . w_i^2 + b_i . w_i over two parameter tensors: gradient a_i * w_i + b_i.
CURVATURES = (np.array([[1.0, 2.0], [0.5, 3.0]]), np.array([4.0, 0.25, 1.5]))
OFFSETS = (np.array([[0.3, -0.2], [0.1, 0.7]]), np.array([-1.0, 0.4, 0.0]))
START = (np.array([[0.5, -1.5], [2.0, 0.25]]), np.array([1.0, -0.5, 3.0]))


def quadratic(params: list[torch.Tensor]) -> torch.Tensor:
    return sum((0.5 * torch.from_numpy(a) * p ** 2 + torch.from_numpy(b) * p).sum()
               for p, a, b in zip(params, CURVATURES, OFFSETS, strict=True))


def gradient(weights: list[np.ndarray]) -> list[np.ndarray]:
    return [a * w + b for w, a, b in zip(weights, CURVATURES, OFFSETS, strict=True)]


def sam_perturbation(weights: list[np.ndarray], grads: list[np.ndarray], rhos: list[float],
                     adaptive: bool) -> list[np.ndarray]:
    """e = rho * g / ||g||  (ASAM: e = rho * T^2 g / ||T g||, T = |w|); one norm over every tensor."""
    scaled = [np.abs(w) * g if adaptive else g for w, g in zip(weights, grads, strict=True)]
    norm = np.sqrt(sum((s ** 2).sum() for s in scaled))
    return [rho * (w ** 2 if adaptive else 1.0) * g / (norm + 1e-12)
            for w, g, rho in zip(weights, grads, rhos, strict=True)]


def fresh_params() -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(torch.from_numpy(w.copy())) for w in START]


def values(params: list[torch.Tensor]) -> list[np.ndarray]:
    return [p.detach().numpy().copy() for p in params]


def assert_all_close(got: list[np.ndarray], expected: list[np.ndarray]) -> None:
    for got_one, expected_one in zip(got, expected, strict=True):
        np.testing.assert_allclose(got_one, expected_one, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("adaptive", [False, True])
def test_sam_two_steps_with_momentum_sgd_match_the_hand_computation(adaptive):
    """Both passes, two SAM steps in a row (the momentum buffer carries over), two groups with their own rho."""
    lr, momentum, rhos = 0.1, 0.9, [0.05, 0.2]
    params = fresh_params()
    sam = SAM([{"params": [params[0]], "rho": rhos[0]}, {"params": [params[1]], "rho": rhos[1]}],
              torch.optim.SGD, rho=0.5, adaptive=adaptive, lr=lr, momentum=momentum, weight_decay=0.0)

    weights, buffers = list(START), None
    for _ in range(2):
        quadratic(params).backward()
        sam.first_step(zero_grad=True)
        grads = gradient(weights)
        perturbed = [w + e for w, e in zip(weights, sam_perturbation(weights, grads, rhos, adaptive), strict=True)]
        assert_all_close(values(params), perturbed)
        assert all(p.grad is None or not p.grad.any() for p in params)  # zero_grad=True cleared the first pass

        quadratic(params).backward()
        sam.second_step(zero_grad=True)
        sharp_grads = gradient(perturbed)  # the update uses the gradient taken at w + e, applied at w
        buffers = sharp_grads if buffers is None else [momentum * m + g for m, g in zip(buffers, sharp_grads,
                                                                                        strict=True)]
        weights = [w - lr * m for w, m in zip(weights, buffers, strict=True)]
        assert_all_close(values(params), weights)


def test_sam_first_adamw_step_matches_the_hand_computation():
    lr, eps = 0.01, 1e-8
    params = fresh_params()
    sam = SAM(params, torch.optim.AdamW, rho=0.05, lr=lr, eps=eps, weight_decay=0.0)
    quadratic(params).backward()
    sam.first_step(zero_grad=True)
    quadratic(params).backward()
    sam.second_step(zero_grad=True)
    perturbed = [w + e for w, e in zip(START, sam_perturbation(list(START), gradient(list(START)), [0.05] * 2,
                                                               False), strict=True)]
    # First Adam step with bias correction: m_hat = g, v_hat = g^2.
    expected = [w - lr * g / (np.abs(g) + eps) for w, g in zip(START, gradient(perturbed), strict=True)]
    assert_all_close(values(params), expected)


def test_grad_norm_is_the_global_l2_norm_and_zero_without_gradients():
    params = fresh_params()
    sam = SAM(params, torch.optim.SGD, rho=0.1, lr=0.1)
    assert sam.grad_norm().item() == 0.0
    quadratic(params).backward()
    expected = np.sqrt(sum((g ** 2).sum() for g in gradient(list(START))))
    assert sam.grad_norm().item() == pytest.approx(expected, rel=1e-12)
    adaptive = SAM(params, torch.optim.SGD, rho=0.1, adaptive=True, lr=0.1)
    scaled = np.sqrt(sum(((np.abs(w) * g) ** 2).sum() for w, g in zip(START, gradient(list(START)), strict=True)))
    assert adaptive.grad_norm().item() == pytest.approx(scaled, rel=1e-12)


def test_parameters_without_gradient_are_neither_perturbed_nor_stepped():
    frozen, params = torch.nn.Parameter(torch.tensor([7.0, -7.0], dtype=torch.float64)), fresh_params()
    sam = SAM([frozen, *params], torch.optim.SGD, rho=0.1, lr=0.1)  # the gradient-less one comes first
    quadratic(params).backward()
    sam.first_step()
    assert torch.equal(frozen.detach(), torch.tensor([7.0, -7.0], dtype=torch.float64))
    assert not np.allclose(values(params)[1], START[1])  # the later parameters still moved
    sam.second_step()
    assert torch.equal(frozen.detach(), torch.tensor([7.0, -7.0], dtype=torch.float64))


def test_restore_undoes_the_perturbation_exactly_without_a_base_step():
    params = fresh_params()
    sam = SAM(params, torch.optim.SGD, rho=0.3, lr=0.1)
    quadratic(params).backward()
    sam.first_step()
    sam.restore()
    assert_all_close(values(params), list(START))
    sam.restore()  # a second restore has nothing left to undo
    assert_all_close(values(params), list(START))


def test_zero_and_tiny_gradients_give_a_finite_perturbation():
    param = torch.nn.Parameter(torch.tensor([1.0, 2.0], dtype=torch.float64))
    sam = SAM([param], torch.optim.SGD, rho=0.1, lr=0.1)
    param.grad = torch.zeros(2, dtype=torch.float64)
    sam.first_step()
    assert torch.equal(param.detach(), torch.tensor([1.0, 2.0], dtype=torch.float64))
    sam.restore()
    # ||g|| = 1e-12, the size of the guard in the denominator: e = rho * g / (||g|| + 1e-12) = rho/2 * g/||g||
    param.grad = torch.tensor([0.6e-12, 0.8e-12], dtype=torch.float64)
    sam.first_step()
    np.testing.assert_allclose(param.detach().numpy(), [1.0 + 0.05 * 0.6, 2.0 + 0.05 * 0.8], rtol=1e-9)


def test_rho_zero_is_plain_descent_and_a_negative_rho_is_refused():
    params = fresh_params()
    sam = SAM(params, torch.optim.SGD, rho=0.0, lr=0.1)
    quadratic(params).backward()
    sam.first_step(zero_grad=True)
    assert_all_close(values(params), list(START))
    quadratic(params).backward()
    sam.second_step()
    assert_all_close(values(params), [w - 0.1 * g for w, g in zip(START, gradient(list(START)), strict=True)])
    with pytest.raises(ValueError, match="rho"):
        SAM(fresh_params(), torch.optim.SGD, rho=-0.01, lr=0.1)


def test_param_groups_are_shared_with_the_base_optimiser_and_survive_a_state_round_trip():
    params = fresh_params()
    sam = SAM(params, torch.optim.SGD, rho=0.1, lr=0.1, momentum=0.9)
    assert sam.param_groups is sam.base_optimizer.param_groups
    assert sam.defaults["momentum"] == 0.9 and sam.defaults["rho"] == 0.1
    sam.param_groups[0]["lr"] = 0.5  # what a scheduler does
    quadratic(params).backward()
    sam.first_step(zero_grad=True)
    quadratic(params).backward()
    sam.second_step(zero_grad=True)
    saved = sam.state_dict()

    restored = SAM(fresh_params(), torch.optim.SGD, rho=0.1, lr=0.1, momentum=0.9)
    restored.load_state_dict(saved)
    assert restored.param_groups is restored.base_optimizer.param_groups
    assert restored.param_groups[0]["lr"] == 0.5 and restored.param_groups[0]["rho"] == 0.1
    buffer = restored.base_optimizer.state[restored.param_groups[0]["params"][0]]["momentum_buffer"]
    torch.testing.assert_close(buffer, sam.base_optimizer.state[params[0]]["momentum_buffer"])



def test_a_loaded_state_keeps_this_machines_capturable_and_every_other_group_setting():
    """AdamW's `capturable` belongs to the machine (the trainer sets it on CUDA): a state saved with it True loads as
    False here and steps on the CPU; a state saved with False loads as True into a capturable optimiser."""
    params = fresh_params()
    sam = SAM(params, torch.optim.AdamW, rho=0.1, lr=0.1)
    sam.param_groups[0]["lr"] = 0.5
    quadratic(params).backward()
    sam.first_step(zero_grad=True)
    quadratic(params).backward()
    sam.second_step(zero_grad=True)
    saved = copy.deepcopy(sam.state_dict())
    on_gpu = copy.deepcopy(saved)
    on_gpu["param_groups"][0]["capturable"] = True

    here = SAM(fresh_params(), torch.optim.AdamW, rho=0.1, lr=0.1)
    here.load_state_dict(on_gpu)
    assert on_gpu["param_groups"][0]["capturable"] is True  # the caller's state is not changed
    assert here.param_groups is here.base_optimizer.param_groups
    assert here.param_groups[0]["capturable"] is False
    assert here.param_groups[0]["lr"] == 0.5 and here.param_groups[0]["rho"] == 0.1
    torch.testing.assert_close(here.base_optimizer.state[here.param_groups[0]["params"][0]]["exp_avg"],
                               sam.base_optimizer.state[params[0]]["exp_avg"])
    quadratic(here.param_groups[0]["params"]).backward()
    here.first_step(zero_grad=True)
    quadratic(here.param_groups[0]["params"]).backward()
    here.second_step(zero_grad=True)  # a capturable AdamW refuses CPU parameters

    capturable = SAM(fresh_params(), torch.optim.AdamW, rho=0.1, lr=0.1, capturable=True)
    capturable.load_state_dict(saved)
    assert capturable.param_groups[0]["capturable"] is True and capturable.param_groups[0]["lr"] == 0.5

# --------------------------------------------------------------------------------------------- mixup

@pytest.mark.parametrize("alpha", [0.2, 0.4, 1.0, 2.0])
def test_mixup_lambda_follows_beta_alpha_alpha(alpha):
    rng, generator = np.random.default_rng(1234), torch.Generator().manual_seed(0)
    lams = np.array([draw_mix(2, alpha, 1.0, rng, generator).lam for _ in range(4000)])
    assert stats.kstest(lams, stats.beta(alpha, alpha).cdf).pvalue > 1e-3
    # and not a neighbouring distribution: the test has the power to tell
    assert stats.kstest(lams, stats.beta(alpha * 1.5, alpha * 1.5).cdf).pvalue < 1e-3


@pytest.mark.parametrize("prob", [0.0, 0.25, 0.5, 1.0])
def test_mixup_prob_gates_the_fraction_of_mixed_batches(prob):
    rng, generator = np.random.default_rng(7), torch.Generator().manual_seed(0)
    mixed = sum(draw_mix(4, 0.4, prob, rng, generator) is not None for _ in range(4000))
    if prob in (0.0, 1.0):
        assert mixed == 4000 * prob
    else:
        assert stats.binomtest(mixed, 4000, prob).pvalue > 1e-3


def test_mixup_partner_index_is_a_permutation_and_alpha_zero_never_mixes():
    rng, generator = np.random.default_rng(0), torch.Generator().manual_seed(0)
    orders = {tuple(draw_mix(5, 1.0, 1.0, rng, generator).index.tolist()) for _ in range(200)}
    assert all(sorted(order) == list(range(5)) for order in orders) and len(orders) > 50
    assert all(draw_mix(5, 0.0, 1.0, rng, generator) is None for _ in range(20))
    assert all(draw_mix(5, -1.0, 1.0, rng, generator) is None for _ in range(20))


def hand_cross_entropy(logits: np.ndarray, targets: np.ndarray, smoothing: float) -> float:
    log_probs = logits - logits.max(axis=1, keepdims=True)
    log_probs = log_probs - np.log(np.exp(log_probs).sum(axis=1, keepdims=True))
    classes = logits.shape[1]
    soft = np.full_like(log_probs, smoothing / classes)
    soft[np.arange(len(targets)), targets] += 1.0 - smoothing
    return float(-(soft * log_probs).sum(axis=1).mean())


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_mixed_cross_entropy_against_the_formula_in_numpy(smoothing):
    logits = np.random.default_rng(3).normal(size=(5, 10))
    targets, index, lam = np.array([0, 3, 5, 9, 3]), np.array([4, 2, 0, 1, 3]), 0.35
    expected = (lam * hand_cross_entropy(logits, targets, smoothing)
                + (1 - lam) * hand_cross_entropy(logits, targets[index], smoothing))
    got = mixed_cross_entropy(torch.from_numpy(logits), torch.from_numpy(targets), Mix(lam, torch.from_numpy(index)),
                              smoothing)
    assert got.dtype == torch.float32  # computed in float32 whatever the logits' precision
    assert got.item() == pytest.approx(expected, rel=1e-5)
    plain = mixed_cross_entropy(torch.from_numpy(logits).half(), torch.from_numpy(targets), None)
    assert plain.dtype == torch.float32
    assert plain.item() == pytest.approx(hand_cross_entropy(logits.astype(np.float16).astype(np.float64), targets,
                                                            0.0), rel=1e-5)


def test_mixed_correct_and_mix_batch_against_their_formulas():
    rng = np.random.default_rng(5)
    logits, targets = rng.normal(size=(8, 10)), rng.integers(0, 10, size=8)
    targets[:3] = logits[:3].argmax(axis=1)  # some rows right for sure
    index, lam = rng.permutation(8), 0.7
    predictions = logits.argmax(axis=1)
    expected = lam * (predictions == targets).sum() + (1 - lam) * (predictions == targets[index]).sum()
    mix = Mix(lam, torch.from_numpy(index))
    assert mixed_correct(torch.from_numpy(logits), torch.from_numpy(targets), mix).item() == pytest.approx(expected)
    assert mixed_correct(torch.from_numpy(logits), torch.from_numpy(targets), None).item() == (predictions == targets).sum()
    waveforms = rng.normal(size=(8, 16))
    np.testing.assert_allclose(mix_batch(torch.from_numpy(waveforms), mix).numpy(),
                               lam * waveforms + (1 - lam) * waveforms[index], rtol=1e-12)
    assert mix_batch(torch.from_numpy(waveforms), None) is not None
    np.testing.assert_array_equal(mix_batch(torch.from_numpy(waveforms), None).numpy(), waveforms)
    assert mix.as_tuple() == (lam, mix.index)


# ------------------------------------------------------------------------------ salience-embedding mixup

@pytest.mark.parametrize("padding_row", [False, True])
def test_salience_embedding_mixup_and_its_gradient_match_the_formula(padding_row):
    torch.manual_seed(0)
    embedding = SalienceEmbedding(3, padding_row).double()
    salience, index, lam = torch.tensor([1, 2, 2, 1]), torch.tensor([1, 0, 3, 2]), 0.3
    table = embedding.embedding.weight.detach().numpy()
    rows = table[salience.numpy() - (0 if padding_row else 1)]
    mixed = embedding(salience, (lam, index))
    np.testing.assert_allclose(mixed.detach().numpy(), lam * rows + (1 - lam) * rows[index.numpy()], rtol=1e-12)

    # d/dE of sum_i c_i . out_i: row r receives lam * sum_{i: s_i = r} c_i + (1 - lam) * sum_{i: s_index_i = r} c_i
    weights = torch.arange(1.0, 13.0, dtype=torch.float64).reshape(4, 3)
    (weights * mixed).sum().backward()
    expected = np.zeros_like(table)
    for row, (own, partner) in enumerate(zip(salience.tolist(), salience[index].tolist(), strict=True)):
        expected[own - (0 if padding_row else 1)] += lam * weights[row].numpy()
        expected[partner - (0 if padding_row else 1)] += (1 - lam) * weights[row].numpy()
    if padding_row:
        expected[0] = 0.0  # padding_idx never trains
    np.testing.assert_allclose(embedding.embedding.weight.grad.numpy(), expected, rtol=1e-12)


def test_mixed_correct_is_a_float64_count_that_sums_as_python_floats():
    """0-dim float64 on the logits' device: the weighted count equals the Python-float formula bit for bit (0.1 is
    not a float32 value, so a count weighted in float32 would differ)."""
    logits = torch.eye(10, dtype=torch.float64)[:7]
    targets = torch.tensor([0, 1, 2, 3, 9, 9, 9])
    mix = Mix(0.1, torch.tensor([6, 5, 4, 3, 2, 1, 0]))
    correct_a, correct_b = 4, 1  # rows 0-3 right; against the shuffled targets only row 3
    got = mixed_correct(logits, targets, mix)
    assert got.dtype == torch.float64 and got.dim() == 0
    assert got.item() == correct_a * 0.1 + correct_b * (1.0 - 0.1)
    plain = mixed_correct(logits, targets, None)
    assert plain.dtype == torch.float64 and plain.item() == 4.0


def test_film_fusion_conditions_on_the_hand_mixed_salience_vector():
    torch.manual_seed(0)
    model = build_model(tiny("resnet34_salience_fusion_film_attention")).train()
    captured = {}
    model.film.generator.register_forward_hook(lambda _m, inputs, _o: captured.__setitem__("cond", inputs[0]))
    salience, index, lam = torch.tensor([2, 1, 2]), torch.tensor([1, 2, 0]), 0.8
    model(torch.randn(3, 8000), salience, (lam, index))
    table = model.salience.embedding.weight
    rows = table[salience] if model.salience.padding_row else table[salience - 1]
    torch.testing.assert_close(captured["cond"], lam * rows + (1 - lam) * rows[index])


def test_sam_defaults_and_the_refusal_message_of_step():
    sam = SAM(fresh_params(), torch.optim.SGD, lr=0.1)
    assert sam.param_groups[0]["rho"] == 0.05 and sam.param_groups[0]["adaptive"] is False
    with pytest.raises(RuntimeError, match=r"^SAM needs two forward/backward passes: call first_step\(\) and "
                                           r"second_step\(\)$"):
        sam.step()


def test_mixup_partner_order_comes_from_the_given_generator_only():
    def draw_after_global_seed(global_seed: int) -> Mix:
        torch.manual_seed(global_seed)  # the global RNG must not matter
        return draw_mix(16, 0.4, 1.0, np.random.default_rng(3), torch.Generator().manual_seed(11))

    first, second = draw_after_global_seed(0), draw_after_global_seed(1)
    assert first.lam == second.lam and torch.equal(first.index, second.index)
    torch.testing.assert_close(first.index, torch.randperm(16, generator=torch.Generator().manual_seed(11)))


def test_sam_steps_keep_gradients_unless_asked_to_zero_them():
    params = fresh_params()
    sam = SAM(params, torch.optim.SGD, rho=0.1, lr=0.1)
    quadratic(params).backward()
    sam.first_step()
    assert all(p.grad is not None and p.grad.any() for p in params)
    sam.second_step()
    assert all(p.grad is not None and p.grad.any() for p in params)


# ------------------------------------------------- SAM's bookkeeping (found by mutation testing, RELIABILITY.md 5)

def test_every_gradient_tensor_counts_once_in_the_global_norm_and_the_perturbation():
    grads = [np.array([3.0, -1.0]), np.array([0.5]), np.array([-2.0, 2.0, 1.0]), np.array([4.0])]
    params = [torch.nn.Parameter(torch.zeros(len(g), dtype=torch.float64)) for g in grads]
    sam = SAM(params, torch.optim.SGD, rho=0.2, lr=0.1)
    for param, grad in zip(params, grads, strict=True):
        param.grad = torch.from_numpy(grad.copy())
    norm = np.sqrt(sum((g ** 2).sum() for g in grads))  # sqrt(35.25), over all four tensors
    assert sam.grad_norm().item() == pytest.approx(norm, rel=1e-12)
    sam.first_step()
    assert_all_close(values(params), [0.2 * g / (norm + 1e-12) for g in grads])


def test_restore_before_any_first_step_changes_nothing():
    params = fresh_params()
    SAM(params, torch.optim.SGD, rho=0.1, lr=0.1).restore()
    assert_all_close(values(params), list(START))


def test_a_parameter_that_changed_shape_gets_a_new_saved_copy():
    param = torch.nn.Parameter(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    sam = SAM([param], torch.optim.SGD, rho=0.1, lr=0.1)
    param.grad = torch.ones(3, dtype=torch.float64)
    sam.first_step()
    sam.restore()
    param.data = torch.tensor([5.0, -1.0, 0.5, 2.0, 8.0], dtype=torch.float64)  # e.g. a layer resized in place
    param.grad = torch.full((5,), 2.0, dtype=torch.float64)
    sam.first_step()
    assert not torch.equal(param.detach(), torch.tensor([5.0, -1.0, 0.5, 2.0, 8.0], dtype=torch.float64))
    sam.restore()
    assert torch.equal(param.detach(), torch.tensor([5.0, -1.0, 0.5, 2.0, 8.0], dtype=torch.float64))
