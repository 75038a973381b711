"""SAM's fused (`torch._foreach_*`) perturbation, norm and restore against the per-parameter loop it replaced.

The reference is the loop as it was (one norm, clone, multiply and add per parameter tensor), kept
once as benchmarks/step.py's PerParameterSAM (the benchmark's launch-count baseline); on the CPU in
fp32 both must give the same bits after every stage of a step, for SAM and ASAM, on a real model
with two param groups and parameters that get no gradient.
"""
from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from test_speed_equivalence import fixed_batch, tiny_recipe

from core.model.network import build_model
from core.train.mixup import mixed_cross_entropy
from core.train.sam import SAM

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def load_step_benchmark():
    """benchmarks/step.py as a module: its PerParameterSAM (the loop the fused ops replaced) is the reference here."""
    benchmarks = Path(__file__).resolve().parents[1] / "benchmarks"
    if str(benchmarks) not in sys.path:
        sys.path.insert(0, str(benchmarks))  # step.py imports its sibling timing.py
    spec = importlib.util.spec_from_file_location("benchmark_step", benchmarks / "step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


step_benchmark = load_step_benchmark()
PerParameterSAM = step_benchmark.PerParameterSAM


def two_group_optimiser(cls: type, model: torch.nn.Module, adaptive: bool) -> SAM:
    """The backbone and the rest in two groups with different rho and lr (SAM reads rho per group)."""
    backbone = [param for name, param in model.named_parameters() if name.startswith("backbone.")]
    rest = [param for name, param in model.named_parameters() if not name.startswith("backbone.")]
    groups = [{"params": backbone}, {"params": rest, "rho": 0.1, "lr": 3e-3}]
    return cls(groups, torch.optim.AdamW, rho=0.05, adaptive=adaptive, lr=1e-3, weight_decay=1e-2)


def backward(model: torch.nn.Module, recipe, step: int) -> None:
    """One mixed forward/backward on the fixed batch with SpecAugment masks fixed by `step`."""
    waveforms, labels, salience, mix = fixed_batch(recipe)
    torch.manual_seed(100 + step)
    logits = model(waveforms.roll(step, dims=1), salience, mix.as_tuple())
    mixed_cross_entropy(logits, labels, mix, 0.0).backward()


def assert_same_bits(model: torch.nn.Module, reference: torch.nn.Module, stage: str) -> None:
    for (name, param), expected in zip(model.named_parameters(), reference.parameters(), strict=True):
        assert torch.equal(param, expected), f"{name} differs after {stage}"


@pytest.mark.parametrize("adaptive", [False, True], ids=["sam", "asam"])
def test_fused_sam_steps_equal_the_per_parameter_loop_bit_for_bit(adaptive):
    recipe = tiny_recipe()
    torch.manual_seed(0)
    reference = build_model(recipe).train()
    frozen = next(name for name, _ in reference.named_parameters() if name.startswith("backbone."))
    reference.get_parameter(frozen).requires_grad_(False)  # a parameter with no gradient is left alone
    model = copy.deepcopy(reference)
    optimisers = {"fused": two_group_optimiser(SAM, model, adaptive),
                  "loop": two_group_optimiser(PerParameterSAM, reference, adaptive)}
    start = copy.deepcopy(model.state_dict())
    for step in range(3):  # later steps start from AdamW state the earlier ones built
        for net in (model, reference):
            backward(net, recipe, step)
        assert torch.equal(optimisers["fused"].grad_norm(), optimisers["loop"].grad_norm())
        for optimiser in optimisers.values():
            optimiser.first_step(zero_grad=True)
        assert_same_bits(model, reference, f"first_step {step}")
        for name, net in (("fused", model), ("loop", reference)):
            backward(net, recipe, step)
            optimisers[name].second_step(zero_grad=True)
        assert_same_bits(model, reference, f"second_step {step}")
    assert torch.equal(model.get_parameter(frozen), start[frozen])
    moved = [name for name, param in model.named_parameters() if not torch.equal(param, start[name])]
    assert len(moved) == sum(param.requires_grad for param in model.parameters())


@pytest.mark.parametrize("adaptive", [False, True], ids=["sam", "asam"])
def test_restore_returns_the_exact_weights_and_is_idempotent(adaptive):
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3))
    model[0].bias.requires_grad_(False)
    sam = SAM(model.parameters(), torch.optim.SGD, rho=0.5, adaptive=adaptive, lr=0.1)
    before = copy.deepcopy(model.state_dict())
    model(torch.randn(6, 5)).square().sum().backward()
    sam.first_step()
    assert not torch.equal(model[2].weight, before["2.weight"])  # the perturbation moved the weights
    sam.restore()
    sam.restore()  # a second restore has nothing left to undo
    for name, param in model.named_parameters():
        assert torch.equal(param, before[name]), name


def test_grad_norm_without_gradients_is_zero():
    sam = SAM(torch.nn.Linear(3, 2).parameters(), torch.optim.SGD, lr=0.1)
    assert sam.grad_norm().item() == 0.0


def adamw_sam_after_one_step(**kwargs) -> tuple[torch.nn.Module, SAM]:
    """A small model and SAM(AdamW) after one step on a fixed batch (AdamW's state then exists)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    sam = SAM(model.parameters(), torch.optim.AdamW, rho=0.05, lr=1e-2, **kwargs)
    sam_step_on(model, sam, seed=1)
    return model, sam


def sam_step_on(model: torch.nn.Module, sam: SAM, seed: int) -> None:
    inputs = torch.randn(8, 6, generator=torch.Generator().manual_seed(seed))
    for step in (sam.first_step, sam.second_step):
        model(inputs).square().mean().backward()
        step(zero_grad=True)


def test_a_resume_state_written_on_a_gpu_steps_on_the_cpu():
    """`capturable` (AdamW's step count on the GPU; the trainer sets it on CUDA) belongs to the machine, not the
    state: a fold begun on CUDA resumes on the CPU (and the other way round) with this machine's setting."""
    model, sam = adamw_sam_after_one_step()
    saved = copy.deepcopy(sam.state_dict())
    on_gpu = copy.deepcopy(saved)  # what the same step saves on CUDA, where the trainer makes AdamW capturable
    for group in on_gpu["param_groups"]:
        group["capturable"] = True
    resumed = {}
    for name, state in (("cpu", saved), ("gpu", on_gpu)):
        copy_ = copy.deepcopy(model)
        fresh = SAM(copy_.parameters(), torch.optim.AdamW, rho=0.05, lr=1e-2)
        fresh.load_state_dict(state)
        assert all(group["capturable"] is False for group in fresh.param_groups), name
        sam_step_on(copy_, fresh, seed=2)  # capturable on the CPU: AssertionError (needs a CUDA device)
        resumed[name] = copy_.state_dict()
    for key, value in resumed["cpu"].items():
        assert torch.equal(resumed["gpu"][key], value), key
    # The other way round: a CPU state loaded where AdamW is capturable stays capturable.
    target = SAM(copy.deepcopy(model).parameters(), torch.optim.AdamW, rho=0.05, lr=1e-2, capturable=True)
    target.load_state_dict(saved)
    assert all(group["capturable"] is True for group in target.param_groups)
    assert all(state["step"].dtype == torch.float32 and state["step"].device == param.device
               for param, state in target.base_optimizer.state.items())


def test_the_fused_step_launches_fewer_operators_as_benchmarks_step_counts():
    """#18 point 4: the profiler count benchmarks/step.py prints (top-level operator calls on the CPU, each at least
    one kernel launch on CUDA): SAM's norm + perturbation + restore take a handful of calls, not a few per
    parameter tensor, and the whole step drops by as many."""
    recipe = tiny_recipe()
    counts = step_benchmark.launch_counts(recipe, 4)
    parameters = sum(1 for _ in build_model(recipe).parameters())
    fused, loop = counts["fused"], counts["loop"]
    assert loop["sam"] >= 4 * parameters  # norm, clone, multiply, add per tensor (and restore's copy)
    assert fused["sam"] <= 16
    assert loop["step"] - fused["step"] >= loop["sam"] - fused["sam"] - 16
