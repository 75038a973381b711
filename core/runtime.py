"""Where and how a model runs: `--device auto|cpu|cuda[:N]`, `--precision auto|fp32|bf16|fp16`.

Shared by training (core/train) and inference (core/infer), so inference never imports the training
loop. Under torchrun each process takes cuda:LOCAL_RANK; without it this process is rank 0 of 1.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from core.errors import UserError

if TYPE_CHECKING:  # for the type hint only: importing it would load the training package
    from core.train.options import TrainOptions


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when available; asking for CUDA without it is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA device is visible; use --device cpu or auto")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise UserError(f"unknown --device {name!r}; use auto, cpu or cuda[:N]")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> str:
    """'auto': bf16 on a CUDA GPU with bf16 tensor cores (Ampere, compute capability 8, and newer; ROCm),
    fp16 on older CUDA GPUs, fp32 on CPU."""
    if name not in ("auto", "fp32", "bf16", "fp16"):
        raise UserError(f"unknown --precision {name!r}; use auto, fp32, bf16 or fp16")
    if name != "auto":
        return name
    if device.type == "cuda":
        # Not torch.cuda.is_bf16_supported(): it also says yes where bf16 is only emulated (V100, T4), slowly.
        native_bf16 = bool(torch.version.hip) or torch.cuda.get_device_capability(device)[0] >= 8
        return "bf16" if native_bf16 else "fp16"
    return "fp32"


def configure_backends(device: torch.device) -> None:
    """Speed settings for a CUDA run: cuDNN autotuning (every batch has the same shape, so the search pays off).

    TF32 matmuls stay off: the float32 frontend's mel filterbank product would lose precision.
    Nothing changes on CPU, where runs stay bit-reproducible.
    """
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The autocast context for a forward pass (a no-op in fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


@dataclass(frozen=True)
class Replicas:
    """This process's place among the training processes (rank 0 of 1 without torchrun)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def process_group_initialised() -> bool:
    """True once this process joined a torch.distributed process group."""
    return dist.is_available() and dist.is_initialized()


def environment_int(name: str, default: int) -> int:
    """An integer that torchrun puts in the environment (`default` when unset)."""
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise UserError(f"environment variable {name}={text!r} is not an integer; it is set by torchrun") from None


def current() -> Replicas:
    """The process group this process belongs to (rank 0 of 1 when none was initialised)."""
    if not process_group_initialised():
        return Replicas()
    return Replicas(dist.get_rank(), environment_int("LOCAL_RANK", 0), dist.get_world_size())


def replica_device(device: torch.device, replicas: Replicas) -> torch.device:
    """The device of this replica: cuda:LOCAL_RANK under torchrun on CUDA, else `device`."""
    if not replicas.enabled or device.type != "cuda":
        return device
    if device.index is not None and device.index != replicas.local_rank:
        raise UserError(f"--device {device} under torchrun: each process uses cuda:LOCAL_RANK; pass --device "
                        "cuda (or auto) and choose GPUs with CUDA_VISIBLE_DEVICES")
    return torch.device("cuda", replicas.local_rank)


@dataclass
class Runtime:
    """Resolved device and precision for a run."""

    device: torch.device
    precision: str
    channels_last: bool

    @classmethod
    def from_options(cls, options: TrainOptions) -> Runtime:
        return cls.resolve(options.device, options.precision, options.channels_last)

    @classmethod
    def resolve(cls, device: str, precision: str, channels_last: bool | None = None) -> Runtime:
        """--device/--precision ("auto" included) -> this process's device (its replica's under torchrun)."""
        target = replica_device(resolve_device(device), current())
        layout = target.type == "cuda" if channels_last is None else channels_last
        return cls(target, resolve_precision(precision, target), layout)
