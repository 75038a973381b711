"""The --device-cache memory check on CUDA, with the CUDA memory API replaced by fakes (runs on any machine)."""
from __future__ import annotations

import pytest
import torch

from core.errors import UserError
from core.train import data
from core.train.data import DEVICE_CACHE_SHARE, check_device_cache_fits, cuda_usable_bytes

GIB = 2 ** 30


def fake_cuda_memory(monkeypatch, *, free: int, reserved: int, allocated: int) -> None:
    """The driver reports `free`; PyTorch's allocator holds `reserved`, of which `allocated` is in use."""
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free, 80 * GIB))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: reserved)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: allocated)


def test_cached_but_unallocated_blocks_count_as_usable():
    assert cuda_usable_bytes(driver_free=2 * GIB, reserved=10 * GIB, allocated=3 * GIB) == 9 * GIB
    assert cuda_usable_bytes(driver_free=2 * GIB, reserved=0, allocated=0) == 2 * GIB
    assert cuda_usable_bytes(driver_free=5, reserved=7, allocated=7) == 5  # every cached block is in use


def test_a_second_fold_is_not_refused_for_the_first_folds_cache(monkeypatch):
    # Fold 1 left 12 GiB cached but free; the driver sees only 4 GiB free. 6 GiB of waveforms fit in
    # half of 4 + 12 = 16 GiB, although they would not fit in half of the driver's 4 GiB.
    fake_cuda_memory(monkeypatch, free=4 * GIB, reserved=14 * GIB, allocated=2 * GIB)
    check_device_cache_fits(6 * GIB, torch.device("cuda"))
    assert data._free_memory(torch.device("cuda")) == 16 * GIB


def test_memory_in_use_by_pytorch_is_not_counted(monkeypatch):
    fake_cuda_memory(monkeypatch, free=4 * GIB, reserved=14 * GIB, allocated=14 * GIB)
    limit = int(DEVICE_CACHE_SHARE * 4 * GIB)
    check_device_cache_fits(limit, torch.device("cuda"))
    with pytest.raises(UserError, match=r"4\.00 GiB are free there"):
        check_device_cache_fits(limit + 1, torch.device("cuda"))
