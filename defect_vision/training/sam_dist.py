"""DDP for the SAM fine-tune under torchrun: one process per device, collectives on the training device."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from defect_vision.devices import DeviceError, resolve_device


@dataclass
class Dist:
    """This process's place in the run (rank 0 of 1 without torchrun) and its training device."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False  # init_distributed made the process group (and close() ends it)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if not dist.is_initialized():
            return
        if self.device.type == "cuda":
            dist.barrier(device_ids=[self.device.index])
        else:
            dist.barrier()

    def sum(self, *values: float) -> list[float]:
        """The values summed over all ranks. The tensor lives on the training device: NCCL reduces CUDA tensors
        only (a CPU tensor fails with "no backend type associated with device type cpu"), gloo CPU tensors."""
        if not dist.is_initialized():
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def rank_device(spec: str, world: int, local_rank: int) -> torch.device:
    """The device of one rank: resolve_device(spec); under DDP (world > 1) any CUDA device means this rank's own
    GPU, cuda:<local_rank> (an explicit --device cuda:0 must not put every rank on GPU 0)."""
    if world <= 1:
        return resolve_device(spec)
    device = resolve_device(spec, 0)  # checks the spec: cpu, or CUDA is there
    if device.type != "cuda":
        return device
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise DeviceError(f"{{device}} {spec}: local rank {local_rank} needs its own GPU, cuda:{local_rank}, but there "
                          f"are {count} CUDA device(s); run at most {count} processes per node (NPROC)", "device")
    return torch.device(f"cuda:{local_rank}")


def init_distributed(spec: str) -> Dist:
    """Dist of this process: DDP when launched by torchrun (WORLD_SIZE > 1), nccl on GPUs, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(device=rank_device(spec, 1, 0))
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = rank_device(spec, world, local)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(rank, world, local, device, owns)
