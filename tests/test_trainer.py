"""The fold trainer (core/train/trainer.py): its epoch equals a plain loop bit for bit, a solution overrides its
objective in a few lines, and a step never reads a device value back to the host.

Mechanics use a shrunk baseline recipe (0.5 s clips at 8 kHz, 32 mels, timm's 0.4M-parameter `test_resnet`).
"""
from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core import registry
from core.data.metadata import load_source
from core.progress import TrainProgress
from core.recipe import Recipe
from core.train import trainer as trainer_module
from core.train.data import prepare_data
from core.train.fold import epoch_seed, predict, seed_all, train_batches, train_fold
from core.train.mixup import draw_mix, mix_batch, mixed_cross_entropy
from core.train.options import TrainOptions
from core.train.sam import SAM
from core.train.schedules import build_schedule
from core.train.trainer import Batch, EpochTotals, FoldTrainer, register_trainer

SHRINK = dict(frontend=dict(sample_rate=8000, clip_seconds=0.5, n_ffts=(256,), hop_length=80, n_mels=32,
                            f_max=4000.0),
              backbone=dict(arch="test_resnet"), augment=dict(freq_mask=8, time_mask=10), training=dict(batch_size=8))

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def shrunk(name: str, **changes) -> Recipe:
    return registry.get(name).derive(**SHRINK).derive(**changes)


def options_for(out: Path, **changes) -> TrainOptions:
    return dataclasses.replace(TrainOptions(out=out, submissions=out / "submissions", folds=(1,), epochs=1,
                                            device="cpu", precision="fp32", progress=False), **changes)


@pytest.fixture(scope="module")
def source(tiny_data):
    return load_source(tiny_data)


def ready_trainer(recipe: Recipe, source, out: Path, cls: type[FoldTrainer] | None = None, **changes) -> FoldTrainer:
    """The trainer `cls` (default: the one the recipe names) of fold 1, set up as train_fold would."""
    options = options_for(out, **changes)
    trainer = (cls or trainer_module.trainer_class(recipe))(recipe, prepare_data(recipe, source, options), 1, options)
    trainer.setup()
    return trainer


# ------------------------------------------------------------------ bit-identical to a plain loop

def reference_epoch(model: torch.nn.Module, trainer: FoldTrainer, epoch: int) -> tuple[float, float]:
    """The SAM epoch written out plainly, reading every loss back (as the loop before the trainer did).

    Returns (mean pass-1 loss, mixup-weighted accuracy); trains `model` in place.
    """
    recipe, training = trainer.recipe, trainer.recipe.training
    sam = SAM(model.parameters(), torch.optim.AdamW, rho=training.rho, adaptive=training.adaptive,
              lr=training.lr, weight_decay=training.weight_decay)
    steps = len(train_batches(trainer.data, trainer.train_rows, recipe, trainer.settings.batch_size,
                              trainer.runtime, trainer.options, 0, None, workers=0))
    schedule = build_schedule(sam.base_optimizer, training, trainer.settings.epochs, steps)
    seed = epoch_seed(trainer.settings.seed, 1, epoch)
    seed_all(seed)
    loader = train_batches(trainer.data, trainer.train_rows, recipe, trainer.settings.batch_size, trainer.runtime,
                           trainer.options, seed, None)
    model.train()
    rng, generator = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    total_loss = total_correct = 0.0
    seen = 0
    for waveforms, labels, salience in loader:
        mix = draw_mix(len(labels), recipe.augment.mixup_alpha, recipe.augment.mixup_prob, rng, generator)
        inputs = mix_batch(waveforms, mix)
        mix_arg = (mix.lam, mix.index) if mix is not None else None
        logits = model(inputs, salience, mix_arg)
        loss = mixed_cross_entropy(logits, labels, mix, training.label_smoothing)
        loss.backward()
        sam.first_step(zero_grad=True)
        mixed_cross_entropy(model(inputs, salience, mix_arg), labels, mix, training.label_smoothing).backward()
        if training.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(list(model.parameters()), training.grad_clip)
        sam.second_step(zero_grad=True)
        if schedule.per_batch:
            schedule.scheduler.step()
        predictions = logits.argmax(dim=1)
        correct = float((predictions == labels).sum().item())
        if mix is not None:
            correct = mix.lam * correct + (1.0 - mix.lam) * (predictions == labels[mix.index]).sum().item()
        total_loss += loss.item() * len(labels)
        total_correct += correct
        seen += len(labels)
    return total_loss / seen, total_correct / seen


@pytest.mark.parametrize("name", ["resnet34_pcen_sam_8fold", "resnet34_salience_fusion_film_attention",
                                  "resnet34_mr_salience_fusion_film_attention"])
def test_a_trainer_epoch_equals_the_plain_loop_bit_for_bit(name, source, tmp_path):
    """Mixup + cosine; FiLM + waveform noise/gain + clipping + label smoothing; a per-step schedule."""
    trainer = ready_trainer(shrunk(name, training=dict(batch_size=4)), source, tmp_path, max_clips_per_fold=3)  # 5-6 steps
    reference = copy.deepcopy(trainer.parts.model)
    initial = copy.deepcopy(reference.state_dict())
    loss, accuracy, skipped = trainer.train_epoch(1)
    expected_loss, expected_accuracy = reference_epoch(reference, trainer, 1)
    assert (loss, accuracy, skipped) == (expected_loss, expected_accuracy, 0)  # exactly, not approximately
    trained, expected = trainer.parts.model.state_dict(), reference.state_dict()
    assert trained.keys() == expected.keys()
    for key, value in expected.items():  # weights and BatchNorm statistics
        assert torch.equal(trained[key], value), key
    assert all(not torch.equal(expected[key], initial[key]) for key in ("classifier.weight", "classifier.bias"))


# ------------------------------------------------------------------ a solution overrides the objective

def focal_loss(logits: torch.Tensor, labels: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Focal loss (Lin et al. 2017): cross-entropy down-weighted by (1 - p_true)^gamma, mean over the clips."""
    log_probs = F.log_softmax(logits.float(), dim=1).gather(1, labels[:, None])[:, 0]
    return -((1.0 - log_probs.exp()) ** gamma * log_probs).mean()


class FocalTrainer(FoldTrainer):
    """The test plugin's trainer: only the objective changes (mixup-weighted focal loss); counts its calls."""

    calls = 0

    def compute_loss(self, logits, labels, mix):
        FocalTrainer.calls += 1
        if mix is None:
            return focal_loss(logits, labels)
        return mix.lam * focal_loss(logits, labels) + (1.0 - mix.lam) * focal_loss(logits, labels[mix.index])


def resnet34_pcen_sam_focal(parent: Recipe) -> Recipe:
    """The baseline with a focal-loss objective (test plugin)."""
    return parent.derive(training=dict(trainer="test_focal"))


@pytest.fixture
def focal_plugin(monkeypatch):
    """Registers the test plugin (trainer and solution) for this test only."""
    registry.discover()  # the real plugins first, into the registry that stays
    monkeypatch.setattr(trainer_module, "_TRAINERS", dict(trainer_module._TRAINERS))
    monkeypatch.setattr(registry, "_ENTRIES", dict(registry._ENTRIES))
    register_trainer("test_focal")(FocalTrainer)
    registry.register(parent="resnet34_pcen_sam_8fold")(resnet34_pcen_sam_focal)
    FocalTrainer.calls = 0
    return "resnet34_pcen_sam_focal"


def test_a_solution_overrides_the_objective_and_trains_with_it(focal_plugin, source, tmp_path):
    recipe = registry.get(focal_plugin).derive(**SHRINK)
    parent = registry.get("resnet34_pcen_sam_8fold").derive(**SHRINK)
    assert recipe.training.trainer == "test_focal" and trainer_module.trainer_class(recipe) is FocalTrainer
    # Same batch, same logits: the two objectives differ.
    torch.manual_seed(0)
    logits, labels = torch.randn(8, 10), torch.arange(8) % 10
    focal = ready_trainer(recipe, source, tmp_path / "a", max_clips_per_fold=2)
    plain = ready_trainer(parent, source, tmp_path / "b", max_clips_per_fold=2)
    assert focal.compute_loss(logits, labels, None).item() != pytest.approx(plain.compute_loss(logits, labels, None).item())
    FocalTrainer.calls = 0

    # Trained through train_fold: the objective used is the card's (2 SAM passes x 2 steps), and so is the loss.
    results = {}
    for name, card in (("focal", recipe), ("parent", parent)):
        options = options_for(tmp_path / name, max_clips_per_fold=2, write_outputs=False)
        results[name] = train_fold(card, prepare_data(card, source, options), 1, options).history[0]
    assert FocalTrainer.calls == 2 * 2
    assert math.isfinite(results["focal"]["train_loss"])
    # Same initial weights and batches: focal loss is (1 - p)^2 <= 1 times the CE of each clip.
    assert results["focal"]["train_loss"] < 0.9 * results["parent"]["train_loss"]


def test_an_unregistered_trainer_is_refused_in_one_line(source, tmp_path):
    from core.errors import UserError

    recipe = shrunk("resnet34_pcen_sam_8fold", training=dict(trainer="nope"))
    options = options_for(tmp_path, max_clips_per_fold=1)
    with pytest.raises(UserError, match="trainer 'nope', which no plugin registered; registered trainers: sam"):
        train_fold(recipe, prepare_data(recipe, source, options), 1, options)


# ------------------------------------------------------------------ no host read inside a step

HOST_READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__", "__array__",
              "__format__")


class FixedBatches(FoldTrainer):
    """The trainer on `count` fixed batches per epoch (the step and the loop, not the data pipeline)."""

    count = 1

    def epoch_batches(self, seed):
        self.progress.start("batches", self.count, "  batches")
        generator = torch.Generator().manual_seed(seed)
        samples = self.recipe.frontend.num_samples
        for _ in range(self.count):
            yield Batch(0.1 * torch.randn(8, samples, generator=generator), torch.arange(8) % 10,
                        1 + torch.arange(8) % 2)


def count_host_reads(monkeypatch, work, exempt: tuple[torch.Tensor, ...] = ()) -> int:
    """Calls of the Tensor methods that read a value back to the host while `work` runs.

    Not counted: reads of the tensors in `exempt`, and torchaudio's SpecAugment mask bounds, drawn with
    torch.rand(1) on the CPU whatever the device (mask_along_axis): host tensors, never a wait on the device.
    """
    import sys

    counts = {"reads": 0}
    exempt_ids = {id(tensor) for tensor in exempt}

    def counting(original):
        def wrapper(self, *args, **kwargs):
            if id(self) not in exempt_ids and "torchaudio" not in sys._getframe(1).f_code.co_filename:
                counts["reads"] += 1
            return original(self, *args, **kwargs)
        return wrapper

    with monkeypatch.context() as patched:
        for name in HOST_READS:
            patched.setattr(torch.Tensor, name, counting(getattr(torch.Tensor, name)))
        work()
    return counts["reads"]


def adamw_step_counts(trainer: FoldTrainer) -> tuple[torch.Tensor, ...]:
    """AdamW's per-parameter step counts. Off CUDA torch keeps them on the CPU and reads them there (no device
    wait); on CUDA the trainer makes AdamW capturable, which keeps them on the GPU and never reads them."""
    return tuple(state["step"] for state in trainer.parts.sam.base_optimizer.state.values())


@pytest.mark.parametrize("name", ["resnet34_pcen_sam_8fold", "resnet34_salience_fusion_film_attention"])
def test_host_reads_in_an_epoch_do_not_grow_with_its_steps(name, source, tmp_path, monkeypatch):
    """fp32 on the CPU: an epoch of N and of 2N steps read back the same number of values (the epoch's totals)."""
    recipe = shrunk(name, augment=dict(wave_prob=0.0))
    trainer = ready_trainer(recipe, source, tmp_path, FixedBatches, max_clips_per_fold=1)
    trainer.train_epoch(1)  # AdamW's state exists from here on
    reads = {}
    for steps in (2, 4):
        trainer.count = steps
        reads[steps] = count_host_reads(monkeypatch, lambda: trainer.train_epoch(2), adamw_step_counts(trainer))
    assert reads[2] == reads[4] == 1, reads  # the epoch's totals, read once at its end
    # Guards the guard: a read per step is seen.
    assert count_host_reads(monkeypatch, lambda: [torch.ones(()).item() for _ in range(4)]) == 4


def test_the_progress_bar_reads_at_most_every_refresh_interval(source, tmp_path, monkeypatch):
    recipe = shrunk("resnet34_pcen_sam_8fold")
    trainer = ready_trainer(recipe, source, tmp_path, FixedBatches, max_clips_per_fold=1)
    trainer.progress = TrainProgress(True)
    trainer.progress.start("epochs", 1, "epochs")
    trainer.count = 4
    clock = iter(np.arange(0.0, 100.0, 0.2))  # every call 0.2 s later: a refresh every third step at most
    monkeypatch.setattr(trainer_module.time, "monotonic", lambda: float(next(clock)))
    shown = []
    original = EpochTotals.running
    monkeypatch.setattr(EpochTotals, "running", lambda self: shown.append(1) or original(self))
    trainer.train_epoch(1)
    assert 1 <= len(shown) <= 2


# ------------------------------------------------------------------ a non-finite step is skipped on the device

class NaNAtStep(FixedBatches):
    """Its loss is NaN at the steps numbered in `bad_steps` (counting SAM passes: two per step)."""

    bad_steps: tuple[int, ...] = ()
    passes = 0

    def compute_loss(self, logits, labels, mix):
        loss = super().compute_loss(logits, labels, mix)
        step, self.passes = self.passes // 2, self.passes + 1
        return loss * float("nan") if step in self.bad_steps else loss


def optimiser_state(trainer: FoldTrainer) -> list[torch.Tensor]:
    return [value.clone() for state in trainer.parts.sam.base_optimizer.state.values() for value in state.values()]


def test_a_nan_loss_skips_the_step_and_leaves_everything_as_it_was(source, tmp_path):
    recipe = shrunk("resnet34_pcen_sam_8fold")
    trainer = ready_trainer(recipe, source, tmp_path, NaNAtStep, max_clips_per_fold=1)
    trainer.count, trainer.bad_steps = 1, ()
    trainer.train_epoch(1)  # one good step: AdamW's state exists
    weights, state = copy.deepcopy(trainer.parts.model.state_dict()), optimiser_state(trainer)
    assert len(state) == 3 * len(list(trainer.parts.model.parameters()))

    trainer.passes, trainer.bad_steps, trainer.count = 0, (0, 1), 2  # the next epoch's two steps are both NaN
    loss, accuracy, skipped = trainer.train_epoch(2)
    assert skipped == 2 and loss == 0.0 and accuracy == 0.0  # nothing counted: no finite first pass
    for key, value in trainer.parts.model.state_dict().items():  # weights and BatchNorm statistics
        assert torch.equal(value, weights[key]), key
    for after, before in zip(optimiser_state(trainer), state, strict=True):
        assert torch.equal(after, before)

    trainer.passes, trainer.bad_steps, trainer.count = 1, (0,), 1  # NaN in the second pass only
    loss, _, skipped = trainer.train_epoch(3)
    assert skipped == 1 and math.isfinite(loss)  # the first pass's loss still counts
    for key, value in trainer.parts.model.state_dict().items():
        assert torch.equal(value, weights[key]), key


@pytest.mark.parametrize("frozen_first", [False, True], ids=["first-step", "first-step-after-unfreezing"])
def test_a_skipped_step_that_creates_adamw_state_leaves_its_initial_state(frozen_first):
    """AdamW creates a parameter's state in its first step; when that step is skipped (NaN loss), the guard
    leaves AdamW's initial state (zeros, step 0), so the next good step is bit for bit a first step.
    `frozen_first`: a good step trains the head only (--freeze-backbone-epochs 1), then the backbone's first
    step (its state created lazily) is the skipped one."""
    from test_speed_equivalence import CPU_FP32

    from core.model.network import build_model
    from core.train import init_from
    from core.train.precision import LossScaler
    from core.train.trainer import SkipGuard, default_objective, sam_step

    recipe = shrunk("resnet34_pcen_sam_8fold")
    torch.manual_seed(0)
    model = build_model(recipe).train()
    generator = torch.Generator().manual_seed(1)
    waveforms = 0.1 * torch.randn(8, recipe.frontend.num_samples, generator=generator)
    labels, salience = torch.arange(8) % 10, torch.ones(8, dtype=torch.int64)
    plain = default_objective(0.0)

    def nan(logits, labels, mix):
        return plain(logits, labels, mix) * float("nan")

    head_step = [(1, plain, True)] if frozen_first else []
    runs = {}
    for name, steps in (("skipped", [*head_step, (2, nan, False), (2, plain, True)]),
                        ("straight", [*head_step, (2, plain, True)])):
        copy_ = copy.deepcopy(model)
        sam = SAM(copy_.parameters(), torch.optim.AdamW, rho=0.05, lr=1e-3, weight_decay=1e-2)
        guard = SkipGuard(copy_, sam)
        for epoch, objective, taken in steps:
            init_from.set_backbone_trainable(copy_, epoch, 1 if frozen_first else 0)
            torch.manual_seed(7)  # the same SpecAugment masks in both runs
            outcome = sam_step(copy_, sam, LossScaler(False), waveforms, labels, salience, None, recipe, CPU_FP32,
                               objective=objective, guard=guard)
            assert bool(outcome.taken) is taken
        runs[name] = copy_.state_dict(), optimiser_state_of(sam)
    (weights, state), (expected_weights, expected_state) = runs["skipped"], runs["straight"]
    for key, value in expected_weights.items():  # weights and BatchNorm statistics (num_batches_tracked too)
        assert torch.equal(weights[key], value), key
    assert len(state) == len(expected_state) == 3 * len(list(model.parameters()))
    for after, expected in zip(state, expected_state, strict=True):
        assert torch.equal(after, expected)


def optimiser_state_of(sam: SAM) -> list[torch.Tensor]:
    return [value.clone() for state in sam.base_optimizer.state.values() for value in state.values()]


# ------------------------------------------------------------------ out of memory, --accumulate

def out_of_memory_at(monkeypatch, epoch: int, step: int) -> None:
    """FoldTrainer.training_step raises torch.OutOfMemoryError at `step` (1-based) of `epoch`."""
    original = FoldTrainer.training_step
    calls = {"epoch": 0, "step": 0}
    original_epoch = FoldTrainer.train_epoch

    def train_epoch(self, number):
        calls["epoch"], calls["step"] = number, 0
        return original_epoch(self, number)

    def training_step(self, batch, rng, generator):
        calls["step"] += 1
        if (calls["epoch"], calls["step"]) == (epoch, step):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(self, batch, rng, generator)

    monkeypatch.setattr(FoldTrainer, "train_epoch", train_epoch)
    monkeypatch.setattr(FoldTrainer, "training_step", training_step)


def test_out_of_memory_is_answered_in_one_line_and_the_fold_resumes(source, tmp_path, monkeypatch):
    from core.errors import UserError

    recipe = shrunk("resnet34_pcen_sam_8fold")
    options = options_for(tmp_path / "interrupted", epochs=2, max_clips_per_fold=2)  # 14 clips: 2 steps an epoch
    data = prepare_data(recipe, source, options)
    with monkeypatch.context() as patched:
        out_of_memory_at(patched, epoch=2, step=2)
        with pytest.raises(UserError) as refused:
            train_fold(recipe, data, 1, options)
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("fold 1, epoch 2: out of memory on cpu at batch size 8 (peak unknown allocated")
    for option in ("--accumulate 2", "--batch-size 4", "--precision bf16", "rerunning resumes after epoch 1"):
        assert option in message
    assert torch.load(tmp_path / "interrupted" / "last_fold1.pt", weights_only=True)["epoch"] == 1

    resumed = train_fold(recipe, data, 1, options)
    straight_options = dataclasses.replace(options, out=tmp_path / "straight")
    straight = train_fold(recipe, data, 1, straight_options)
    assert [row["epoch"] for row in resumed.history] == [1, 2]
    for key, value in torch.load(tmp_path / "straight" / "last_fold1.pt", weights_only=True)["model"].items():
        assert torch.equal(value, torch.load(tmp_path / "interrupted" / "last_fold1.pt", weights_only=True)["model"][key])
    assert [row["train_loss"] for row in resumed.history] == [row["train_loss"] for row in straight.history]


def test_out_of_memory_through_the_cli_is_one_line_without_a_traceback(tiny_data, tmp_path, monkeypatch, capsys):
    import sys

    from core.cli import main

    out_of_memory_at(monkeypatch, epoch=1, step=1)
    monkeypatch.setattr(sys, "argv", ["python -m core", "train", "resnet34_pcen_sam_8fold", "--data", str(tiny_data),
                                      "--out", str(tmp_path / "out"), "--folds", "1", "--epochs", "1",
                                      "--max-clips-per-fold", "1", "--batch-size", "4", "--device", "cpu",
                                      "--precision", "fp32", "--no-progress"])
    with pytest.raises(SystemExit) as exited:
        main()
    stderr = capsys.readouterr().err
    assert exited.value.code == 2
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert "out of memory on cpu at batch size 4" in stderr and "--batch-size 2" in stderr
    assert "no epoch finished yet" in stderr


@pytest.mark.parametrize("batch_size, accumulate", [(2, 2), (1, 1)])
def test_the_out_of_memory_answer_offers_only_what_this_run_can_take(batch_size, accumulate, source, tmp_path):
    """--accumulate 2K only where 2K clips fit in the batch (it is refused beyond), --batch-size B/2 only for B > 1."""
    recipe = shrunk("resnet34_pcen_sam_8fold", training=dict(batch_size=batch_size))
    trainer = ready_trainer(recipe, source, tmp_path, max_clips_per_fold=1, accumulate=accumulate)
    message = str(trainer.out_of_memory(1, 0))
    assert f"--accumulate {2 * accumulate}" not in message and "sees 0 clips" not in message
    assert ("--batch-size 1" in message) == (batch_size == 2)
    assert "What helps: " in message and "--precision bf16" in message


def test_accumulating_two_halves_takes_the_one_batch_step(source, tmp_path):
    """--accumulate 2 vs 1 on one batch: the same SAM(SGD) update within float32 rounding.

    The model runs in eval mode (BatchNorm on its running statistics, no SpecAugment): in training mode
    BatchNorm would normalise each half over its own 4 clips, the one documented difference.
    """
    from core.model.network import build_model
    from core.train.precision import LossScaler
    from core.train.trainer import micro_batches, sam_micro_step

    recipe = shrunk("resnet34_pcen_sam_8fold")
    runtime = ready_trainer(recipe, source, tmp_path, max_clips_per_fold=1).runtime
    torch.manual_seed(0)
    model = build_model(recipe).eval()
    generator = torch.Generator().manual_seed(1)
    waveforms = 0.1 * torch.randn(8, recipe.frontend.num_samples, generator=generator)
    labels, salience = torch.arange(8) % 10, torch.ones(8, dtype=torch.int64)
    start = torch.cat([param.detach().flatten() for param in model.parameters()])
    updates, outcomes = {}, {}
    for parts in (1, 2):
        copy_ = copy.deepcopy(model)
        sam = SAM(copy_.parameters(), torch.optim.SGD, rho=0.05, lr=0.1)
        outcomes[parts] = sam_micro_step(copy_, sam, LossScaler(False),
                                         micro_batches(waveforms, labels, salience, [None] * parts), recipe, runtime)
        updates[parts] = torch.cat([param.detach().flatten() for param in copy_.parameters()]) - start
    assert updates[1].norm() > 0 and bool(outcomes[2].taken)
    assert (updates[2] - updates[1]).norm() <= 1e-5 * updates[1].norm()
    assert outcomes[2].loss.item() == pytest.approx(outcomes[1].loss.item(), rel=1e-6)
    assert outcomes[2].correct.item() == outcomes[1].correct.item()


def test_accumulate_trains_and_is_part_of_the_run_identity(source, tmp_path):
    from core.errors import UserError

    recipe = shrunk("resnet34_pcen_sam_8fold")
    options = options_for(tmp_path, max_clips_per_fold=1, accumulate=2)
    data = prepare_data(recipe, source, options)
    result = train_fold(recipe, data, 1, options)
    assert result.identity.fields["accumulate"] == 2 and math.isfinite(result.history[0]["train_loss"])
    with pytest.raises(UserError, match=r"accumulate: 1 here, 2 in last_fold1.pt \(pass --accumulate 2\)"):
        train_fold(recipe, data, 1, dataclasses.replace(options, accumulate=1, epochs=2))
    with pytest.raises(UserError, match="--accumulate 9 exceeds the batch of 8 clips"):
        train_fold(recipe, data, 1, dataclasses.replace(options, accumulate=9))


def test_the_trainer_keeps_one_training_loader_for_the_fold_re_seeded_each_epoch(source, tmp_path):
    """#18 point 3: one DataLoader per fold (its persistent workers then serve every epoch), each epoch's
    batches those a fresh loader draws from the epoch seed (what a resumed run builds)."""
    recipe = shrunk("resnet34_pcen_sam_8fold")
    trainer = ready_trainer(recipe, source, tmp_path)
    seeds = [epoch_seed(trainer.settings.seed, 1, epoch) for epoch in (1, 2)]
    loaders = [trainer.epoch_loader(seed) for seed in seeds]
    assert loaders[0] is loaders[1] is trainer.loader
    epoch_two = [labels.tolist() for _, labels, _ in trainer.epoch_loader(seeds[1])]
    fresh = train_batches(trainer.data, trainer.train_rows, recipe, trainer.settings.batch_size, trainer.runtime,
                          trainer.options, seeds[1], None)
    assert epoch_two == [labels.tolist() for _, labels, _ in fresh]
    assert epoch_two != [labels.tolist() for _, labels, _ in trainer.epoch_loader(seeds[0])]


def test_the_trainer_keeps_one_validation_loader_for_the_fold_whose_workers_serve_every_epoch(source, tmp_path):
    """The validation batches are built once per fold: with workers, the same worker processes serve every
    validation, which reads exactly what a freshly built loader reads; the fold's end lets them go."""
    recipe = shrunk("resnet34_pcen_sam_8fold")
    trainer = ready_trainer(recipe, source, tmp_path, workers=2)
    first, _, _ = trainer.validate()
    loader = trainer.val_batches
    assert loader is not None and loader.num_workers == 2 and loader.persistent_workers
    pids = [worker.pid for worker in loader._iterator._workers]
    second, loss, _ = trainer.validate()
    assert trainer.val_batches is loader
    assert [worker.pid for worker in loader._iterator._workers] == pids  # not started again
    fresh, fresh_loss = predict(trainer.parts.model, trainer.data.train, trainer.val_rows, trainer.settings.batch_size,
                                trainer.runtime, dataclasses.replace(trainer.options, workers=0))
    np.testing.assert_array_equal(second, fresh)
    np.testing.assert_array_equal(first, second)
    assert loss == pytest.approx(fresh_loss, rel=1e-6)
    trainer.fit()
    assert trainer.val_batches is None and trainer.loader is None
