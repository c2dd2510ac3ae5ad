"""Devices and precision: auto|cpu|cuda:N, autocast on CUDA, and a clear error (never a silent CPU fallback).

torch is imported inside the functions that use it, never at import: every command imports this module (through
the CLI's error handling and the stage timers), and the light ones (convert, evaluate, calibrate, report, --help)
must not pay torch's second of import time."""
from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from defect_vision.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np
    import torch

PRECISIONS = ("auto", "fp32", "fp16", "bf16")


class DeviceError(ConfigError, ValueError):
    """A device or precision that this machine cannot give; printed as one line by the CLI."""


def resolve_device(spec: str = "auto", local_rank: int | None = None) -> torch.device:
    """The one device resolver: 'auto' -> a GPU when CUDA is available else cpu; 'cpu'; 'cuda', 'cuda:N' or 'N'
    -> that GPU, or DeviceError (never a silent CPU fallback). Under torchrun (`local_rank` given) 'auto' and
    'cuda' mean this process's GPU, cuda:<local_rank>."""
    import torch

    spec = str(spec).strip().lower()
    if spec == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        spec = "cuda"
    if spec == "cpu":
        return torch.device("cpu")
    m = re.fullmatch(r"(?:cuda)?:?(\d*)", spec)
    if not m or spec in ("", ":"):
        raise DeviceError(f"{{device}} {spec}: expected auto, cpu, cuda or cuda:N", "device")
    if not torch.cuda.is_available():
        raise DeviceError(
            f"{{device}} {spec}: CUDA was asked for but torch sees no CUDA device "
            f"(torch {torch.__version__}, CUDA build {torch.version.cuda}); use {{device}} cpu to run on the CPU",
            "device")
    index = int(m.group(1)) if m.group(1) else (local_rank or 0)
    if index >= torch.cuda.device_count():
        raise DeviceError(f"{{device}} {spec}: only {torch.cuda.device_count()} CUDA device(s) (cuda:0..)", "device")
    return torch.device(f"cuda:{index}")


def ultralytics_device(spec: str = "auto") -> str:
    """auto|cpu|cuda|cuda:N|N|N,M,... -> ultralytics' device string ('cpu', '0', '0,1'); each GPU is checked by
    resolve_device, so a missing GPU is the same one-line error everywhere."""
    gpus = [s.strip() for s in str(spec).split(",")]
    if len(gpus) > 1:
        return ",".join(str(resolve_device(g).index) for g in gpus)
    device = resolve_device(spec)
    return "cpu" if device.type == "cpu" else str(device.index)


SYNC_TIMINGS_ENV = "DEFECT_VISION_SYNC_TIMINGS"  # =1: timers synchronise CUDA around every stage (debug mode)


def bf16_native(device: torch.device) -> bool:
    """bf16 runs natively on this CUDA device (compute capability >= 8.0, Ampere and later). Unlike
    torch.cuda.is_bf16_supported() this does not count emulated bf16 (slow on T4/V100) and asks `device`, not the
    current device."""
    import torch

    return device.type == "cuda" and tuple(torch.cuda.get_device_capability(device)) >= (8, 0)


def cpu_bf16_native() -> bool:
    """True when this CPU computes bf16 in hardware (AVX512-BF16 or AMX): there bf16 autocast speeds up SAM's
    image encoder (measured 1.4x for vit_b at 1024 px on a 2-core AMD EPYC, embeddings at cosine 0.9999)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype: None (fp32) on CPU; on CUDA fp16 for 'auto' (the dtype SAM is fine-tuned and cached in,
    for both models), or as asked; bf16 only where `device` runs it natively."""
    import torch

    if precision not in PRECISIONS:
        raise DeviceError(f"{{precision}} {precision}: expected one of {', '.join(PRECISIONS)}", "precision")
    if precision == "fp32":
        return None
    if device.type != "cuda":
        if precision == "auto":
            return None
        if precision == "bf16" and cpu_bf16_native():
            return torch.bfloat16  # opt-in on CPU: faster, not bit-identical to fp32
        raise DeviceError(f"{{precision}} {precision}: half precision needs a CUDA device or a CPU with native bf16 "
                          f"(AVX512-BF16/AMX; got {device})", "precision")
    if precision == "bf16" and not bf16_native(device):
        major, minor = torch.cuda.get_device_capability(device)
        raise DeviceError(f"{{precision}} bf16: {device} ({torch.cuda.get_device_name(device)}, compute capability "
                          f"{major}.{minor}) has no native bf16 (emulated, slow); use {{precision}} fp16 or auto", "precision")
    return torch.bfloat16 if precision == "bf16" else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None):
    """torch.autocast to `dtype` on the device's type; a no-op context for dtype None (fp32). Inference only asks
    for half precision on CUDA (autocast_dtype), but CPU autocast runs the same code path in tests."""
    import torch

    return torch.autocast(device_type=device.type, dtype=dtype) if dtype is not None else nullcontext()


def full_precision(device: torch.device):
    """A region that runs in fp32 inside an autocast block (box coordinates, positional encodings)."""
    import torch

    return torch.autocast(device_type=device.type, enabled=False)


def to_device(array: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host array on `device`: on CUDA copied from pinned memory without blocking the host (the caching host
    allocator keeps the pinned buffer alive until the copy is done); on CPU the same memory, no copy."""
    import torch

    t = torch.as_tensor(array)
    if device.type != "cuda":
        return t
    return t.pin_memory().to(device, non_blocking=True)


def cpu_threads() -> int:
    """The CPU cores this process may run on (its affinity mask). Not torch.get_num_threads(): importing
    ultralytics before torch sets OMP_NUM_THREADS=1, so torch's own count depends on import order."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@contextmanager
def intra_op_threads(n: int) -> Iterator[None]:
    """torch's intra-op threads set to `n` for the block (in every thread that runs torch ops), restored after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


def sync_timings_default() -> bool:
    return os.environ.get(SYNC_TIMINGS_ENV, "") not in ("", "0")


COUNT = threading.Lock()  # model workers call one model from several threads: call counters move under this lock

STAGES = ("load", "detector", "sam_encoder", "sam_decoder", "write")


@dataclass
class Timings:
    """Seconds spent per stage, summed over images; `wall` is the whole run (model loading excluded).

    CUDA stages are timed with CUDA events (no host synchronisation; resolved by `settle`), or, in the debug mode
    `sync=True` (env DEFECT_VISION_SYNC_TIMINGS=1), by synchronising the device around every stage."""

    load: float = 0.0
    detector: float = 0.0
    sam_encoder: float = 0.0
    sam_decoder: float = 0.0
    write: float = 0.0
    wall: float = 0.0
    sync: bool = field(default_factory=sync_timings_default, repr=False, compare=False)
    pending: list = field(default_factory=list, repr=False, compare=False)  # (stage, start event, end event)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, stage: str, seconds: float) -> None:
        """Add seconds to a stage (thread-safe: several writer threads time 'write')."""
        with self.lock:
            setattr(self, stage, getattr(self, stage) + seconds)

    def settle(self) -> None:
        """Add the durations of the CUDA stages timed with events (waits for those events only)."""
        while self.pending:
            stage, start, end = self.pending.pop(0)
            end.synchronize()
            self.add(stage, start.elapsed_time(end) / 1000)

    @property
    def forwards(self) -> float:
        """Time in the three model forwards (detector, SAM encoder, SAM decoder)."""
        self.settle()
        return self.detector + self.sam_encoder + self.sam_decoder

    @property
    def overhead_ratio(self) -> float | None:
        """Whole run / sum of the three forwards (1.0 = no overhead, below 1 when model workers overlap); None
        without forwards."""
        return self.wall / self.forwards if self.forwards > 0 else None

    def as_dict(self) -> dict:
        self.settle()
        out = {name: round(getattr(self, name), 6) for name in (*STAGES, "wall")}
        ratio = self.overhead_ratio
        out["forwards"] = round(self.forwards, 6)
        out["overhead_ratio"] = round(ratio, 4) if ratio is not None else None
        out["synchronised"] = self.sync
        return out


def _timing_event():
    import torch

    return torch.cuda.Event(enable_timing=True)


@contextmanager
def timed(timings: Timings, stage: str, device: torch.device | None = None) -> Iterator[None]:
    """Add the block's duration to timings.<stage>. On CUDA: the GPU time between two events recorded on the
    device's current stream (no host synchronisation), or, with timings.sync, the host time with the device
    synchronised before and after (debug mode). Elsewhere: host time."""
    if device is None or device.type != "cuda" or timings.sync:
        if device is not None and timings.sync:
            synchronize(device)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if device is not None and timings.sync:
                synchronize(device)
            timings.add(stage, time.perf_counter() - t0)
        return
    import torch

    stream = torch.cuda.current_stream(device)
    start, end = _timing_event(), _timing_event()
    start.record(stream)
    try:
        yield
    finally:
        end.record(stream)
        timings.pending.append((stage, start, end))


def __getattr__(name: str):
    """HALF (torch.float16, the one half dtype: SAM fine-tune (GradScaler), its embedding cache and 'auto'
    inference) is resolved on first use, so that importing this module does not import torch."""
    if name == "HALF":
        import torch

        return torch.float16
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
