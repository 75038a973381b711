"""The GPU paths on a GPU (`pytest -m cuda`; skipped where CUDA is absent, run by benchmarks/gpu_check.sh).

Under the real CUDA default (bf16 autocast, channels_last, cudnn.benchmark) these tests compare one
SAM step with the CPU fp32 step from the same weights and batch, train 20 steps, take the fp16 path
with its loss scaler, export to ONNX, count the GPU waits of an epoch (torch.cuda sync debug mode), and
check a two-process NCCL step (needs 2 GPUs).

The SAM-step tolerance, derived from the unit roundoff u (bf16: 2**-8, fp16: 2**-11), relative to
the update's own L2 norm (the update's scale), not from the logits' range:
- A bf16 matmul or convolution rounds both operands to 8 significant bits and accumulates in fp32:
  each product carries <= 2u. A gradient entry is a long sum of such products, so its error is
  bounded by 2u times the sum of the products' magnitudes, not of the sum itself: the factor K by
  which the relative error exceeds u is the gradient's conditioning, a property of the model and
  batch, the same for any u. Measured with the CPU's own bf16 and fp16 autocast (the same roundings,
  fp32 accumulation) on this test's model and batch, one pass: K = 25 (bf16) and 24 (fp16).
- BatchNorm runs in eval mode (as in tests/test_ddp.py): train-mode BatchNorm's backward subtracts
  the batch mean of the gradient, a cancellation that multiplies K by ~3 at initialisation; the
  20-step test below covers train mode.
- SAM takes the gradient twice, the second at w + e(g1): g1's error moves e and so g2 by at most as
  much again: 2K. Measured for the whole step with the CPU's autocast (torch 2.14, 2026-12-07): 34u
  in bf16 (13.3 %) and 108u in fp16 (5.2 %: fp16's narrow range adds underflow of small gradient
  products to the rounding). Rounded up to a power of two with at least 1.9x headroom for cuDNN's
  other kernels: tolerance = 64u in bf16 (25 %), 256u in fp16 (12.5 %; 128u left fp16 1.2x).
- With SGD as the base optimiser the update is -lr * g2, linear in the gradient; AdamW's first step
  ~ lr * sign(g) would turn noise on near-zero gradients into lr-sized differences.
The test also checks that the tolerance catches wrong maths: on the CPU the same step without SAM's
perturbation is further from the reference (54 %) than twice the tolerance. Random draws that differ between
devices are switched off in both runs (SpecAugment masks, dropout); the mixup draw is fixed.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import demo_clip
from test_ddp import free_port, run
from test_speed_equivalence import CPU_FP32, fixed_batch, tiny_recipe

from core.data.metadata import load_source
from core.export import export_onnx
from core.model.network import build_model
from core.train import checkpoint, distributed
from core.train.data import ResidentBatches, WaveformDataset, make_loader, make_resident, prepare_data
from core.train.fold import Runtime, build_on_device, train_fold
from core.train.mixup import Mix
from core.train.options import TrainOptions
from core.train.precision import LossScaler, configure_backends
from core.train.sam import SAM
from core.train.trainer import sam_step

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

UNIT_ROUNDOFF = {"bf16": 2.0 ** -8, "fp16": 2.0 ** -11}
SAM_CONDITIONING = {"bf16": 64, "fp16": 256}  # measured whole-step error / u (34, 108), rounded up: see above
FP16_TRIES = 20        # the loss scaler starts high: it may skip (and halve) a few times before a step is taken
SGD_LR = 0.1
SAM_RHO = 0.05
FP32_REL = 1e-3        # fp32 on cuDNN vs fp32 on the CPU: other kernels, other summation orders
ONNX_PARITY_ATOL = 1e-4  # probabilities: onnxruntime (CPU) vs the fold model in eval mode on CUDA
NCCL_ATOL, NCCL_RTOL = 1e-6, 1e-5  # as the gloo test: all-reduce sums in another order


def true_fp32():
    """cuDNN in true float32 for the fp32 comparisons: PyTorch's default lets fp32 convolutions use TF32 (10-bit
    mantissa, u = 2**-11) on Ampere and later, far outside the fp32 tolerances below; deterministic algorithms,
    so that the batch sizes compared (8 vs 2 x 4 under NCCL) do not pick kernels that sum in other orders."""
    return torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True, allow_tf32=False)


def cuda(precision: str = "bf16", channels_last: bool = True) -> Runtime:
    """The real CUDA default: bf16 autocast, channels_last, cudnn.benchmark."""
    configure_backends(torch.device("cuda"))
    return Runtime(torch.device("cuda"), precision, channels_last)


def deterministic_model(recipe) -> torch.nn.Module:
    """A CPU model whose forward draws nothing random (SpecAugment off, dropout 0: devices draw differently),
    with BatchNorm in eval mode (see the module docstring)."""
    torch.manual_seed(0)
    model = build_model(recipe).train()
    model.audio_input.spec_augment = torch.nn.Identity()
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()
    return model


def sam_tolerance(precision: str) -> float:
    """Relative L2 bound on the update's error (see the module docstring): 64u in bf16, 256u in fp16."""
    return SAM_CONDITIONING[precision] * UNIT_ROUNDOFF[precision]


def flat(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([param.detach().float().cpu().flatten() for param in model.parameters()])


def sgd_sam_update(model: torch.nn.Module, runtime: Runtime, rho: float = SAM_RHO,
                   scaler: LossScaler | None = None) -> tuple[torch.Tensor, bool]:
    """(new weights - old weights, step taken) of one SAM(SGD) step of the trainer on the fixed batch."""
    recipe = tiny_recipe()
    waveforms, labels, salience, mix = fixed_batch(recipe)
    device = runtime.device
    model = model.to(device, memory_format=torch.channels_last) if runtime.channels_last else model.to(device)
    before = flat(model)
    sam = SAM(model.parameters(), torch.optim.SGD, rho=rho, lr=SGD_LR)
    scaler = scaler or LossScaler(False)
    for _ in range(FP16_TRIES if scaler.enabled else 1):  # a skipped step leaves the weights as they were
        ok = bool(sam_step(model, sam, scaler, waveforms.to(device), labels.to(device), salience.to(device),
                           Mix(mix.lam, mix.index.to(device)), recipe, runtime).taken)
        if ok:
            break
    return flat(model) - before, ok


def relative_distance(update: torch.Tensor, reference: torch.Tensor) -> float:
    return float((update - reference).norm() / reference.norm())


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_a_sam_step_on_cuda_matches_the_cpu_fp32_step(precision):
    model = deterministic_model(tiny_recipe())
    tolerance = sam_tolerance(precision)
    reference, _ = sgd_sam_update(copy.deepcopy(model), CPU_FP32)
    without_sam, _ = sgd_sam_update(copy.deepcopy(model), CPU_FP32, rho=0.0)
    assert relative_distance(without_sam, reference) > 2 * tolerance  # the tolerance would catch a lost SAM pass
    scaler = LossScaler(enabled=precision == "fp16")
    update, ok = sgd_sam_update(copy.deepcopy(model), cuda(precision), scaler=scaler)
    assert ok and torch.isfinite(update).all()
    distance = relative_distance(update, reference)
    assert distance <= tolerance, f"{precision} update off by {distance:.2%} of its norm (bound {tolerance:.2%})"
    if precision == "fp16":
        assert scaler.good_steps == 1  # one scaled step was taken (skipped ones reset the count)


def test_twenty_steps_under_the_default_lower_the_loss():
    recipe = tiny_recipe()
    runtime = cuda()
    model = build_on_device(recipe, runtime, 0, 1).train()
    sam = SAM(model.parameters(), torch.optim.AdamW, rho=SAM_RHO, lr=1e-3, weight_decay=1e-2)
    waveforms, labels, salience = (tensor.cuda() for tensor in fixed_batch(recipe)[:3])
    losses = []
    for _ in range(20):
        outcome = sam_step(model, sam, LossScaler(False), waveforms, labels, salience, None, recipe, runtime)
        assert outcome.taken
        losses.append(float(outcome.loss))
    assert all(math.isfinite(loss) for loss in losses)
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses  # one fixed batch: it learns it


def test_channels_last_gives_the_same_logits():
    recipe = tiny_recipe()
    plain = build_on_device(recipe, Runtime(torch.device("cuda"), "fp32", False), 0, 1).eval()
    layout = copy.deepcopy(plain).to(memory_format=torch.channels_last)
    waveforms = torch.randn(8, recipe.frontend.num_samples, device="cuda") * 0.1
    with torch.no_grad(), true_fp32():
        torch.testing.assert_close(layout(waveforms), plain(waveforms), rtol=FP32_REL, atol=FP32_REL)


def test_onnx_export_of_a_model_trained_on_cuda(tmp_path):
    """Checkpoints written from CUDA tensors export on this machine; onnxruntime gives the CUDA model's output."""
    import onnxruntime

    recipe = tiny_recipe()
    model = build_on_device(recipe, cuda(), 0, 1).train()
    clips = torch.stack([torch.from_numpy(demo_clip(index, recipe.frontend.sample_rate, recipe.frontend.num_samples))
                         for index in range(4)])
    with torch.no_grad(), true_fp32():
        model(clips.cuda())  # BatchNorm statistics from real-looking clips
    folder = tmp_path / recipe.name
    folder.mkdir()
    checkpoint.save_best(folder / "best_model_fold1.pt", recipe, 1, 1, {}, model.eval())
    exported = export_onnx(folder, recipe.name, tmp_path / "model.onnx")
    assert exported.folds == (1,)
    with torch.no_grad(), true_fp32():  # onnxruntime's CPU kernels are float32, not TF32
        expected = torch.softmax(model(clips.cuda()).float(), dim=1).cpu().numpy()
    session = onnxruntime.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"waveforms": clips.numpy()})[0]
    assert float(np.abs(got - expected).max()) < ONNX_PARITY_ATOL


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


# ------------------------------------------------------------------------------- no sync in the step

def synchronising_calls(work) -> int:
    """CUDA calls that make the host wait for the GPU while `work` runs (torch's sync debug mode, as warnings)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            work()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchronizing CUDA operation" in str(warning.message) for warning in caught)


def test_an_epoch_of_n_and_of_2n_steps_waits_on_the_gpu_equally_often(tiny_data, tmp_path):
    """#18 point 2 on the GPU, under the real default: the CPU test counts Tensor reads; here CUDA itself says
    which calls synchronise (blocking copies, .item(), ...). The epoch's totals are read once, at its end."""
    from test_trainer import FixedBatches, ready_trainer, shrunk

    from core.train.trainer import Batch

    class OnTheDevice(FixedBatches):
        def epoch_batches(self, seed):  # copied as FoldTrainer.epoch_batches copies the loader's batches
            for batch in super().epoch_batches(seed):
                yield Batch(*(tensor.to(self.runtime.device, non_blocking=True) for tensor in batch))

    recipe = shrunk("resnet34_pcen_sam_8fold", augment=dict(wave_prob=0.0))
    trainer = ready_trainer(recipe, load_source(tiny_data), tmp_path, OnTheDevice, device="cuda", precision="bf16",
                            max_clips_per_fold=1)
    assert trainer.runtime.channels_last and trainer.parts.sam.param_groups[0]["capturable"]
    trainer.count = 2
    trainer.train_epoch(1)  # AdamW's state, the guard's mirrors and cuDNN's autotuning exist from here on
    waits = {}
    for steps in (2, 4):
        trainer.count = steps
        waits[steps] = synchronising_calls(lambda: trainer.train_epoch(2))
    assert waits[2] == waits[4] <= 1, waits
    assert synchronising_calls(lambda: [torch.ones((), device="cuda").item() for _ in range(3)]) == 3


# ---------------------------------------------------------------------------------------------- NCCL

@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
def test_nccl_sam_step_equals_one_process_on_the_global_batch(tmp_path):
    """2 GPUs x 4 clips under NCCL DDP take the step of 1 GPU x 8 clips (the gloo test's setup, on CUDA)."""
    from test_ddp import HALF, HALF_MIX_INDEX, step_setup

    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(Path(__file__)),
               "nccl-step", str(tmp_path)]
    run(command, tmp_path)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in (0, 1)]
    model, waveforms, labels, salience = step_setup()
    start = {name: param.detach().clone() for name, param in model.named_parameters()}
    single = nccl_free_step(model.cuda(), waveforms, labels, salience, torch.cat([HALF_MIX_INDEX, HALF_MIX_INDEX + HALF]))
    assert max((single[name] - start[name]).abs().max().item() for name in start) > 1e-3
    for name in start:
        assert torch.equal(ranks[0][name], ranks[1][name]), name  # replicas never drift apart
        torch.testing.assert_close(ranks[0][name], single[name], atol=NCCL_ATOL, rtol=NCCL_RTOL, msg=name)


def nccl_free_step(model: torch.nn.Module, waveforms: torch.Tensor, labels: torch.Tensor, salience: torch.Tensor,
                   mix_index: torch.Tensor) -> dict[str, torch.Tensor]:
    """One fp32 SAM(SGD) step on the model's device (DDP-wrapped or not); returns the new weights on the CPU."""
    from test_ddp import MIX_LAMBDA

    device = next(model.parameters()).device
    runtime = Runtime(device, "fp32", channels_last=False)
    inner = model.module if hasattr(model, "module") else model
    sam = SAM(inner.parameters(), torch.optim.SGD, rho=SAM_RHO, lr=SGD_LR)
    torch.manual_seed(4)
    with true_fp32():  # the gloo test's fp32 tolerances (the parent's earlier tests left cudnn.benchmark on)
        outcome = sam_step(model, sam, LossScaler(False), waveforms.to(device), labels.to(device),
                           salience.to(device), Mix(MIX_LAMBDA, mix_index.to(device)), tiny_recipe(), runtime)
    assert outcome.taken
    return {name: param.detach().cpu().clone() for name, param in inner.named_parameters()}


def nccl_step_worker(out: Path) -> None:
    """Rank r takes clips [4r, 4r + 4) of the global batch on cuda:r and does one NCCL DDP SAM step."""
    from test_ddp import HALF, HALF_MIX_INDEX, step_setup

    replicas = distributed.init_from_environment("cuda")
    device = torch.device("cuda", replicas.local_rank)
    model, waveforms, labels, salience = step_setup()
    mine = slice(replicas.rank * HALF, (replicas.rank + 1) * HALF)
    ddp_model = distributed.wrap_model(model.to(device), device)
    weights = nccl_free_step(ddp_model, waveforms[mine], labels[mine], salience[mine], HALF_MIX_INDEX)
    torch.save(weights, out / f"rank{replicas.rank}.pt")
    distributed.shutdown()


if __name__ == "__main__":
    if sys.argv[1] != "nccl-step":
        raise SystemExit(f"unknown worker {sys.argv[1]!r}; use nccl-step")
    nccl_step_worker(Path(sys.argv[2]))
