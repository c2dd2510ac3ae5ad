"""The SAM fine-tune's DDP pieces: collectives on the training device, one GPU per rank, no group without torchrun.
(Two real ranks on gloo: tests/test_sam_cli.py::test_ddp_under_torchrun_through_the_script.)"""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from defect_vision.devices import DeviceError
from defect_vision.training.sam_dist import Dist, init_distributed, rank_device


@pytest.fixture()
def group(tmp_path):
    """A one-rank process group on `backend` (destroyed afterwards)."""
    def make(backend: str, device: torch.device | None = None) -> None:
        dist.init_process_group(backend, init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1,
                                **({"device_id": device} if device is not None else {}))
    yield make
    if dist.is_initialized():
        dist.destroy_process_group()


def test_sum_reduces_a_float64_tensor_on_the_training_device(group, monkeypatch):
    group("gloo")
    seen = []
    real = dist.all_reduce

    def spy(tensor, *args, **kwargs):
        seen.append((tensor.device, tensor.dtype, tensor.tolist()))
        return real(tensor, *args, **kwargs)

    monkeypatch.setattr(dist, "all_reduce", spy)
    d = Dist(device=torch.device("cpu"))
    assert d.sum(1.5, 2.0, 3) == [1.5, 2.0, 3.0]
    d.barrier()
    assert seen == [(torch.device("cpu"), torch.float64, [1.5, 2.0, 3.0])]  # through the real gloo collective


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_sum_works_on_an_nccl_group(group):
    """NCCL reduces CUDA tensors only: a CPU tensor fails with 'no backend type associated with device type cpu'."""
    device = torch.device("cuda:0")
    group("nccl", device)
    d = Dist(device=device)
    assert d.sum(1.5, 2.0) == [1.5, 2.0]
    d.barrier()


def test_without_torchrun_there_is_no_group_and_sum_is_local(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    d = init_distributed("cpu")
    assert (d.rank, d.world, d.main, d.device, d.owns_group) == (0, 1, True, torch.device("cpu"), False)
    assert not dist.is_initialized() and d.sum(2.5) == [2.5]
    d.barrier()
    d.close()


def test_each_rank_gets_its_own_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    # an explicit --device cuda:0 under torchrun must not put both ranks on GPU 0
    assert [rank_device("cuda:0", 2, r) for r in (0, 1)] == [torch.device("cuda:0"), torch.device("cuda:1")]
    assert [rank_device(spec, 2, 1) for spec in ("auto", "cuda", "cuda:1", "1")] == [torch.device("cuda:1")] * 4
    assert rank_device("cpu", 2, 1) == torch.device("cpu")
    assert rank_device("cuda:1", 1, 0) == torch.device("cuda:1")  # one process: the GPU asked for
    with pytest.raises(DeviceError, match=r"^device cuda: local rank 2 needs its own GPU, cuda:2, but there are 2 CUDA "
                                          r"device\(s\); run at most 2 processes per node \(NPROC\)"):
        rank_device("cuda", 3, 2)


def test_cuda_asked_without_cuda_is_a_device_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match=r"^device cuda:0: CUDA was asked for"):
        rank_device("cuda:0", 2, 1)
    assert rank_device("auto", 2, 1) == torch.device("cpu")
