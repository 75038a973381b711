"""Data-parallel training of one fold over many processes (DistributedDataParallel, launched by torchrun).

    torchrun --nproc_per_node=N -m core train SOLUTION ...                       # one machine, N GPUs
    torchrun --nnodes=M --node_rank=i --nproc_per_node=N \\
             --master_addr=HOST --master_port=PORT -m core train SOLUTION ...    # M machines

torchrun puts RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT in each process's
environment; `init_from_environment` joins them into one process group (NCCL on CUDA, gloo on
CPU). Without torchrun (WORLD_SIZE unset or 1) every function here is a no-op for one process.

How training is distributed (the fold loop, core/train/trainer.py):
- The recipe's batch size is the global batch: each of N replicas takes batch/N clips per step
  from a DistributedSampler shard, so N replicas train with the recipe's batch and learning rate.
- SAM's first pass ALL-REDUCES its gradient (DDP's ordinary backward), so every replica perturbs
  with the same global e(w) = rho g / ||g|| of the whole batch: a DDP step equals a one-process
  step on the same global batch (up to BatchNorm, below). Per-replica perturbation (the SAM paper's
  m-sharpness, m = batch/N) would save one all-reduce per step but would make the result depend
  on the number of GPUs, so it is not used.
- BatchNorm stays plain BatchNorm (as in the reference; no SyncBatchNorm): each replica normalises
  with its own batch/N statistics, and the running statistics are rank 0's (DDP broadcasts
  buffers from rank 0 at every forward; they are broadcast again before validation, so every
  rank validates and checkpoints with the same weights).
- Validation and the fold's OOF/test predictions are sharded over the replicas and gathered.
- Only rank 0 writes files and shows progress; rank 0 reads the resume state and broadcasts it.
"""
from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from core.errors import UserError
from core.runtime import Replicas, current, replica_device  # noqa: F401  (moved to core/runtime.py; kept importable here)
from core.runtime import environment_int as _environment_int
from core.runtime import process_group_initialised as _initialised

T = TypeVar("T")
TIMEOUT = datetime.timedelta(minutes=30)  # rank 0 alone writes the solution summary while the others wait


def launched_by_torchrun() -> bool:
    """True when the environment describes more than one process (torchrun sets WORLD_SIZE)."""
    return _environment_int("WORLD_SIZE", 1) > 1


def init_from_environment(device_name: str) -> Replicas:
    """Join the process group torchrun describes (NCCL for CUDA, gloo for CPU); one process: do nothing.

    `device_name` is the --device option: on CUDA each process uses cuda:LOCAL_RANK.
    """
    if not launched_by_torchrun() or _initialised():
        return current()
    missing = [name for name in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing:
        raise UserError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {', '.join(missing)} not set: start "
                        "distributed training with torchrun (see docs/gpu.md), not by setting WORLD_SIZE")
    from core.runtime import resolve_device

    use_cuda = resolve_device(device_name).type == "cuda"
    local_rank = _environment_int("LOCAL_RANK", 0)
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA device(s) "
                            "are visible: use --nproc_per_node <= the number of GPUs per machine")
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo", timeout=TIMEOUT)
    return current()


@contextlib.contextmanager
def process_group(device_name: str) -> Iterator[Replicas]:
    """Within: the process group torchrun describes (see `init_from_environment`); left on exit."""
    replicas = init_from_environment(device_name)
    try:
        yield replicas
    finally:
        shutdown()


def shutdown() -> None:
    """Leave the process group (if any) so the process exits cleanly."""
    if _initialised():
        dist.destroy_process_group()


def per_replica_batch(batch_size: int, replicas: Replicas) -> int:
    """The clips each replica takes per step so that all replicas together make `batch_size`."""
    if batch_size % replicas.world_size:
        raise UserError(f"batch size {batch_size} cannot be split evenly over {replicas.world_size} processes; "
                        f"use a --batch-size divisible by {replicas.world_size} or another --nproc_per_node")
    return batch_size // replicas.world_size


def wrap_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """`model` in DistributedDataParallel (gradients all-reduced in every backward; buffers from rank 0)."""
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, broadcast_buffers=True)


def broadcast_object(value: T) -> T:
    """Rank 0's `value` on every rank (picklable objects; tensors are best sent on the CPU)."""
    if not current().enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_module(module: torch.nn.Module) -> None:
    """Overwrite every parameter and buffer with rank 0's values, in place."""
    if not current().enabled:
        return
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Overwrite every buffer (BatchNorm running statistics) with rank 0's, in place."""
    if not current().enabled:
        return
    for buffer in module.buffers():
        dist.broadcast(buffer.data, src=0)


def all_finite(flag: torch.Tensor) -> torch.Tensor:
    """The 0-dim `flag` (1.0 / 0.0) as a bool tensor, true only if it is true on every rank; no host read.

    Under NCCL the flag stays on the GPU and the all-reduce is queued like any kernel; gloo reduces
    on the CPU (where the tensor already is in CPU runs).
    """
    if current().enabled:
        reduced = flag.detach().float().reshape(1).to(_communication_device(), copy=True)
        dist.all_reduce(reduced, op=dist.ReduceOp.MIN)
        flag = reduced.to(flag.device).reshape(())
    return flag > 0


def sum_over_replicas(totals: torch.Tensor) -> torch.Tensor:
    """Element-wise sums of `totals` over all ranks (every rank gets them); one all-reduce, no host read."""
    if not current().enabled:
        return totals
    reduced = totals.to(_communication_device(), copy=True)
    dist.all_reduce(reduced)
    return reduced.to(totals.device)


def shard(rows: np.ndarray) -> np.ndarray:
    """This rank's rows of `rows`: every world_size-th one, starting at its rank."""
    replicas = current()
    return rows[replicas.rank::replicas.world_size] if replicas.enabled else rows


def gather_shards(local: Any) -> list[Any]:
    """Every rank's `local` (picklable), in rank order; [local] for one process."""
    if not current().enabled:
        return [local]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, local)
    return gathered


def unshard(parts: list[np.ndarray]) -> np.ndarray:
    """Inverse of `shard`: the rows of every rank's part back in their original order."""
    total = sum(len(part) for part in parts)
    whole = np.empty((total, *parts[0].shape[1:]), dtype=parts[0].dtype)
    for rank, part in enumerate(parts):
        whole[rank::len(parts)] = part
    return whole


def barrier() -> None:
    """Wait until every rank arrives here."""
    if current().enabled:
        dist.barrier()


def _communication_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
