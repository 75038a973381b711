"""Many processes: DistributedDataParallel under torchrun (gloo on CPU, 2 processes) and folds spread
over runs that share one output folder.

Run as a script this file is also what torchrun starts (so the workers run the code under test):
    python -m torch.distributed.run --nproc_per_node 2 tests/test_ddp.py sam-step OUT_DIR
    python -m torch.distributed.run --nproc_per_node 2 tests/test_ddp.py cli train tiny_speed --data ...
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import subprocess_env
from test_speed_equivalence import CPU_FP32, TINY_CHANGES, TINY_SOLUTION, tiny_recipe

from core.errors import UserError
from core.model.network import build_model
from core.train import distributed
from core.train.distributed import Replicas
from core.train.mixup import Mix
from core.train.precision import LossScaler
from core.train.sam import SAM
from core.train.trainer import sam_step

HALF = 4                                  # clips per rank in the SAM-step test; the global batch is 8
HALF_MIX_INDEX = torch.tensor([2, 0, 3, 1])  # each rank's mixup partners (a permutation of its own clips)
MIX_LAMBDA = 0.3
SGD_LR = 0.1


# ---------------------------------------------------------------------------------------------- helpers

def torchrun(*arguments: str, processes: int = 2) -> list[str]:
    """A torchrun command (one machine, loopback only) that runs this file with `arguments`."""
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(processes),
            "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(Path(__file__)), *arguments]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run(command: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=cwd, env=subprocess_env(OMP_NUM_THREADS="1", **env), capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done


def train_arguments(data: Path, out: Path, folds: str, epochs: int, *flags: str) -> list[str]:
    return ["cli", "train", TINY_SOLUTION, "--data", str(data), "--out", str(out), "--folds", folds,
            "--epochs", str(epochs), "--device", "cpu", "--precision", "fp32", "--no-progress", *flags]


def step_setup() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The model (BatchNorm in eval mode, see the test) and a global batch of 8 clips, identical in every process."""
    torch.manual_seed(0)
    model = build_model(tiny_recipe()).train()
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()
    generator = torch.Generator().manual_seed(3)
    waveforms = torch.randn(2 * HALF, tiny_recipe().frontend.num_samples, generator=generator) * 0.1
    return model, waveforms, torch.tensor([0, 3, 5, 9, 1, 1, 7, 2]), torch.ones(2 * HALF, dtype=torch.int64)


def one_step(model: torch.nn.Module, waveforms: torch.Tensor, labels: torch.Tensor, salience: torch.Tensor,
             mix_index: torch.Tensor) -> dict[str, torch.Tensor]:
    """One SAM(SGD) step with the recipe's step function; returns the new parameters."""
    parameters = model.module.parameters() if hasattr(model, "module") else model.parameters()
    sam = SAM(parameters, torch.optim.SGD, rho=0.05, lr=SGD_LR)
    torch.manual_seed(4)  # the same SpecAugment masks in every process (they are shared by a batch)
    outcome = sam_step(model, sam, LossScaler(False), waveforms, labels, salience, Mix(MIX_LAMBDA, mix_index),
                       tiny_recipe(), CPU_FP32)
    assert outcome.taken
    named = model.module.named_parameters() if hasattr(model, "module") else model.named_parameters()
    return {name: param.detach().clone() for name, param in named}


# ---------------------------------------------------------------------------------------------- workers

def sam_step_worker(out: Path) -> None:
    """Rank r takes clips [4r, 4r + 4) of the global batch and does one DDP SAM step; saves its weights."""
    replicas = distributed.init_from_environment("cpu")
    torch.set_num_threads(1)
    model, waveforms, labels, salience = step_setup()
    mine = slice(replicas.rank * HALF, (replicas.rank + 1) * HALF)
    ddp_model = distributed.wrap_model(model, torch.device("cpu"))
    weights = one_step(ddp_model, waveforms[mine], labels[mine], salience[mine], HALF_MIX_INDEX)
    torch.save(weights, out / f"rank{replicas.rank}.pt")
    distributed.shutdown()


def cli_worker(arguments: list[str]) -> None:
    """`python -m core ARGUMENTS` with the tiny solution registered; logs every file this rank writes."""
    from core import registry

    registry.register_variant(TINY_SOLUTION, parent="resnet34_pcen_sam_8fold", **TINY_CHANGES)
    log_dir = os.environ.get("WRITE_LOG_DIR")
    if log_dir:
        log_writes(Path(log_dir) / f"rank{os.environ.get('RANK', '0')}.txt")
    sys.argv = ["core", *arguments]
    from core.cli import main

    main()


def log_writes(log: Path) -> None:
    """Record the path of every atomic write (all outputs go through core.atomic.atomic_open, or are
    renamed into place by core.atomic.publish)."""
    import core.atomic

    original, original_publish = core.atomic.atomic_open, core.atomic.publish

    def logged_publish(staged, path):
        with open(log, "a") as handle:
            handle.write(f"{Path(path).resolve()}\n")
        return original_publish(staged, path)

    @contextlib.contextmanager
    def logged(path, *args, **kwargs):
        with open(log, "a") as handle:
            handle.write(f"{Path(path).resolve()}\n")
        with original(path, *args, **kwargs) as opened:
            yield opened

    core.atomic.atomic_open = logged
    core.atomic.publish = logged_publish


# ---------------------------------------------------------------------------------------------- tests

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_ddp_sam_step_equals_one_process_on_the_global_batch(tmp_path):
    """With SAM's first pass all-reduced, 2 replicas x 4 clips take the step of 1 process x 8 clips.

    What this isolates: the gradient all-reduce of both SAM passes and the global perturbation. BatchNorm
    is put in eval mode in both runs because plain BN normalises each replica with its own batch
    statistics (by design, as in the reference), which would differ from the 8-clip statistics.
    Mixup partners stay within each replica, so the one-process run uses the same block-diagonal
    permutation; SpecAugment masks are batch-shared and drawn from the same seed. SGD is the base
    optimiser so the new weights are linear in the SAM gradient (Adam's first step is ~lr * sign(g)
    and would turn 1e-8 float noise on near-zero gradients into lr-sized differences).
    """
    run(torchrun("sam-step", str(tmp_path)), tmp_path)
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)

    model, waveforms, labels, salience = step_setup()
    start = {name: param.detach().clone() for name, param in model.named_parameters()}
    single = one_step(copy.deepcopy(model), waveforms, labels, salience,
                      torch.cat([HALF_MIX_INDEX, HALF_MIX_INDEX + HALF]))
    # Per-replica perturbation (m-sharpness) for contrast: the mean of each half's own SAM step.
    halves = [one_step(copy.deepcopy(model), waveforms[part], labels[part], salience[part], HALF_MIX_INDEX)
              for part in (slice(0, HALF), slice(HALF, 2 * HALF))]

    moved = max((single[name] - start[name]).abs().max().item() for name in start)
    assert moved > 1e-3
    for name in start:
        assert torch.equal(rank0[name], rank1[name]), name  # replicas never drift apart
        torch.testing.assert_close(rank0[name], single[name], atol=1e-6, rtol=1e-5, msg=name)
    local = {name: (halves[0][name] + halves[1][name]) / 2 for name in start}
    assert max((local[name] - single[name]).abs().max().item() for name in start) > 1e-4


def test_shards_cover_every_row_once_and_come_back_in_order():
    rows = np.arange(11) * 10
    parts = [rows[rank::3] for rank in range(3)]  # what distributed.shard gives ranks 0..2 of 3
    assert sorted(np.concatenate(parts).tolist()) == rows.tolist()
    assert distributed.unshard(parts).tolist() == rows.tolist()
    probabilities = [np.stack([part, -part], axis=1) for part in parts]
    assert distributed.unshard(probabilities)[:, 0].tolist() == rows.tolist()


def test_the_global_batch_must_split_evenly():
    assert distributed.per_replica_batch(128, Replicas(0, 0, 4)) == 32
    with pytest.raises(UserError, match="divisible by 3"):
        distributed.per_replica_batch(128, Replicas(0, 0, 3))


@pytest.fixture(scope="module")
def straight_ddp_run(tiny_data, tmp_path_factory) -> Path:
    """`torchrun --nproc_per_node 2 ... train` of fold 1 for 3 epochs, uninterrupted; returns its folder."""
    root = tmp_path_factory.mktemp("ddp")
    (root / "writes").mkdir()
    cache = tmp_path_factory.getbasetemp() / "waveform-cache"
    run(torchrun(*train_arguments(tiny_data, root / "out", "1", 3)), root, WRITE_LOG_DIR=str(root / "writes"),
        US8K_CACHE_DIR=str(cache))
    return root


def test_torchrun_training_writes_complete_outputs_from_rank_0_only(straight_ddp_run):
    root = straight_ddp_run
    out = root / "out"
    for name in ("best_model_fold1.pt", "best_model_fold1.csv", "oof_fold1.csv", "history_fold1.csv",
                 "result_fold1.json", "summary.json", "oof_confusion.png"):
        assert (out / name).is_file(), name
    assert (root / "submissions" / f"{TINY_SOLUTION}.csv").is_file()
    assert not (out / "last_fold1.pt").exists()
    history = pd.read_csv(out / "history_fold1.csv")
    assert history["epoch"].tolist() == [1, 2, 3] and np.isfinite(history["train_loss"]).all()
    oof = pd.read_csv(out / "oof_fold1.csv")
    assert len(oof) == 10 and (oof["fold"] == 1).all()  # every held-out clip once, gathered from both ranks
    assert json.loads((out / "summary.json").read_text())["folds"].keys() == {"1"}

    written = {rank: [Path(line) for line in (root / "writes" / f"rank{rank}.txt").read_text().split()]
               if (root / "writes" / f"rank{rank}.txt").exists() else [] for rank in (0, 1)}
    outputs = (out.resolve(), (root / "submissions").resolve())
    rank1_outputs = [path for path in written[1] if path.is_relative_to(outputs[0]) or path.is_relative_to(outputs[1])]
    assert rank1_outputs == []
    assert (out / "best_model_fold1.pt").resolve() in written[0]


@pytest.mark.slow
def test_torchrun_training_killed_then_resumed_equals_uninterrupted(straight_ddp_run, tiny_data, tmp_path):
    arguments = train_arguments(tiny_data, tmp_path / "out", "1", 3)
    process = subprocess.Popen(torchrun(*arguments), cwd=tmp_path, env=subprocess_env(OMP_NUM_THREADS="1"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)  # its own process group: the agent and both workers
    last = tmp_path / "out" / "last_fold1.pt"
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None and not last.exists():
        time.sleep(0.02)
    assert process.poll() is None, "the run ended before it could be interrupted"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert last.exists() and not (tmp_path / "out" / "result_fold1.json").exists()

    run(torchrun(*arguments), tmp_path)  # the same command (on a fresh port): resumes after the last epoch
    straight = straight_ddp_run / "out"
    resumed = tmp_path / "out"
    straight_model = torch.load(straight / "best_model_fold1.pt", weights_only=True)
    resumed_model = torch.load(resumed / "best_model_fold1.pt", weights_only=True)
    assert straight_model["epoch"] == resumed_model["epoch"]
    for key, tensor in straight_model["model"].items():
        assert torch.equal(tensor, resumed_model["model"][key]), key
    for name in ("best_model_fold1.csv", "oof_fold1.csv"):
        assert (straight / name).read_text() == (resumed / name).read_text()
    pd.testing.assert_frame_equal(pd.read_csv(straight / "history_fold1.csv").drop(columns=["seconds"]),
                                  pd.read_csv(resumed / "history_fold1.csv").drop(columns=["seconds"]))


def test_folds_spread_over_concurrent_runs_share_one_output_folder(tiny_data, tmp_path):
    """`--folds 1` and `--folds 2` at the same time into one folder (as on two machines): both finish.

    (Also the command-line switches --device-cache and --no-channels-last.)
    """
    out = tmp_path / "shared"
    env = subprocess_env(OMP_NUM_THREADS="1")
    flags = ("--device-cache", "--no-channels-last")
    runs = [subprocess.Popen([sys.executable, str(Path(__file__)), *train_arguments(tiny_data, out, fold, 2, *flags)],
                             cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for fold in ("1", "2")]
    for process in runs:
        _, errors = process.communicate(timeout=600)
        assert process.returncode == 0, errors[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["folds"].keys() == {"1", "2"}  # whichever run wrote last saw both folds
    submission = pd.read_csv(tmp_path / "submissions" / f"{TINY_SOLUTION}.csv")
    fold_mean = np.mean([pd.read_csv(out / f"best_model_fold{k}.csv")[["0", "1", "2", "3", "4", "5", "6", "7", "8",
                                                                        "9"]].to_numpy() for k in (1, 2)], axis=0)
    assert (submission["TARGET"].to_numpy() == fold_mean.argmax(axis=1)).all()


def test_a_fold_being_trained_elsewhere_is_refused_and_other_folds_are_not(tiny_data, tmp_path):
    from test_resume import hold_lock

    from core.data.metadata import load_source
    from core.train.options import TrainOptions
    from core.train.solution import train_solution

    out = tmp_path / "out"
    lock = out / ".locks" / "fold1" / ".lock"
    lock.parent.mkdir(parents=True)
    sleeper = hold_lock(lock)
    try:
        options = TrainOptions(out=out, submissions=tmp_path / "submissions", folds=(1,), epochs=1, device="cpu",
                               precision="fp32", progress=False)
        with pytest.raises(UserError, match=f"fold 1 of .* is being trained by another run.*PID {sleeper.pid}"):
            train_solution(tiny_recipe(), load_source(tiny_data), options)
        summary = train_solution(tiny_recipe(), load_source(tiny_data), TrainOptions(
            out=out, submissions=tmp_path / "submissions", folds=(2,), epochs=1, device="cpu", precision="fp32",
            progress=False))
        assert set(summary.folds) == {2}
        assert lock.read_text() == str(sleeper.pid)  # the other run's lock is untouched
    finally:
        sleeper.kill()
        sleeper.wait()


if __name__ == "__main__":
    if sys.argv[1] == "sam-step":
        sam_step_worker(Path(sys.argv[2]))
    elif sys.argv[1] == "cli":
        cli_worker(sys.argv[2:])
    else:
        raise SystemExit(f"unknown worker {sys.argv[1]!r}; use sam-step or cli")
