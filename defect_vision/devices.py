"""Devices and precision: auto|cpu|cuda:N, autocast on CUDA, and a clear error (never a silent CPU fallback)."""
from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, fields

import torch

from defect_vision.errors import DatasetError

PRECISIONS = ("auto", "fp32", "fp16", "bf16")


class DeviceError(DatasetError, ValueError):
    """A device or precision that this machine cannot give; printed as one line by the CLI."""


def resolve_device(spec: str = "auto", local_rank: int | None = None) -> torch.device:
    """The one device resolver: 'auto' -> a GPU when CUDA is available else cpu; 'cpu'; 'cuda', 'cuda:N' or 'N'
    -> that GPU, or DeviceError (never a silent CPU fallback). Under torchrun (`local_rank` given) 'auto' and
    'cuda' mean this process's GPU, cuda:<local_rank>."""
    spec = str(spec).strip().lower()
    if spec == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        spec = "cuda"
    if spec == "cpu":
        return torch.device("cpu")
    m = re.fullmatch(r"(?:cuda)?:?(\d*)", spec)
    if not m or spec in ("", ":"):
        raise DeviceError(f"--device {spec}: expected auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise DeviceError(
            f"--device {spec}: CUDA was asked for but torch sees no CUDA device "
            f"(torch {torch.__version__}, CUDA build {torch.version.cuda}); use --device cpu to run on the CPU"
        )
    index = int(m.group(1)) if m.group(1) else (local_rank or 0)
    if index >= torch.cuda.device_count():
        raise DeviceError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) (cuda:0..)")
    return torch.device(f"cuda:{index}")


def ultralytics_device(spec: str = "auto") -> str:
    """auto|cpu|cuda|cuda:N|N|N,M,... -> ultralytics' device string ('cpu', '0', '0,1'); each GPU is checked by
    resolve_device, so a missing GPU is the same one-line error everywhere."""
    gpus = [s.strip() for s in str(spec).split(",")]
    if len(gpus) > 1:
        return ",".join(str(resolve_device(g).index) for g in gpus)
    device = resolve_device(spec)
    return "cpu" if device.type == "cpu" else str(device.index)


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype: None (fp32) on CPU; on CUDA bf16 where supported else fp16 ('auto'), or as asked."""
    if precision not in PRECISIONS:
        raise DeviceError(f"--precision {precision}: expected one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return None
    if device.type != "cuda":
        if precision == "auto":
            return None
        raise DeviceError(f"--precision {precision}: half precision needs a CUDA device (got {device})")
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float16 if precision == "fp16" else torch.bfloat16


def autocast(device: torch.device, dtype: torch.dtype | None):
    """torch.autocast for CUDA half precision, a no-op context otherwise."""
    return torch.autocast(device_type="cuda", dtype=dtype) if dtype is not None and device.type == "cuda" else nullcontext()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timings:
    """Seconds spent per stage, summed over images; `wall` is the whole run (model loading excluded)."""

    load: float = 0.0
    detector: float = 0.0
    sam_encoder: float = 0.0
    sam_decoder: float = 0.0
    write: float = 0.0
    wall: float = 0.0

    @property
    def forwards(self) -> float:
        """Time in the three model forwards (detector, SAM encoder, SAM decoder)."""
        return self.detector + self.sam_encoder + self.sam_decoder

    @property
    def overhead_ratio(self) -> float | None:
        """Whole run / sum of the three forwards (1.0 = no overhead); None without forwards."""
        return self.wall / self.forwards if self.forwards > 0 else None

    def as_dict(self) -> dict:
        out = {f.name: round(getattr(self, f.name), 6) for f in fields(self)}
        ratio = self.overhead_ratio
        out["forwards"] = round(self.forwards, 6)
        out["overhead_ratio"] = round(ratio, 4) if ratio is not None else None
        return out


@contextmanager
def timed(timings: Timings, stage: str, device: torch.device | None = None) -> Iterator[None]:
    """Add the block's duration to timings.<stage>; CUDA work is synchronised so it is counted where it runs."""
    if device is not None:
        synchronize(device)
    t0 = time.perf_counter()
    try:
        yield
    finally:
        if device is not None:
            synchronize(device)
        setattr(timings, stage, getattr(timings, stage) + time.perf_counter() - t0)
