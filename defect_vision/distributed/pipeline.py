"""The Ray Data pipeline of a sharded prediction run: images -> read/decode -> model actors (detector, SAM; one
model copy per actor, loaded once) -> encode, streamed back to the driver with Ray Data's backpressure. Sized
against the cluster: one actor per GPU by default; on a CPU-only cluster the actors share out the CPUs and read and
encode inside themselves (the cores are the limit there; separate stages would only copy pixels around)."""
from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

from defect_vision.distributed.stages import PredictWorker, encode_batch, read_batch
from defect_vision.errors import ConfigError
from defect_vision.inference.predictor import PredictConfig


@dataclass
class Resources:
    """The actor pool as placed on the cluster."""

    workers: int  # model actors
    gpus_per_worker: float
    cpus_per_worker: float
    split: bool  # read/decode and encode as CPU task stages around the actors
    cluster_cpus: float
    cluster_gpus: float

    def describe(self) -> str:
        gpu = f", {self.gpus_per_worker:g} GPU" if self.gpus_per_worker else ""
        stages = "read/encode as CPU tasks" if self.split else "read/encode inside the actors"
        return (f"{self.workers} model worker(s) x ({self.cpus_per_worker:g} CPU{gpu}), {stages}; cluster "
                f"{self.cluster_cpus:g} CPU, {self.cluster_gpus:g} GPU")


def plan_resources(cluster: dict, config: PredictConfig, num_workers: int | None, num_gpus: float | None,
                   cpus_per_worker: float | None, split: bool | None) -> Resources:
    """Resources of the actor pool on a cluster with `cluster` (ray.cluster_resources()); DatasetError for a
    request the cluster cannot hold (it would wait forever)."""
    cpus, gpus_there = float(cluster.get("CPU", 0)), float(cluster.get("GPU", 0))
    cpu_only = config.device == "cpu" or config.backend != "torch"
    if num_gpus is not None and num_gpus < 0:
        raise ConfigError(f"{{num_gpus}} {num_gpus}: must be >= 0", "num_gpus")
    if cpu_only and num_gpus:
        raise ConfigError(f"{{num_gpus}} {num_gpus}: the models run on the CPU here ({{device}} cpu or {{backend}} onnxruntime)", "num_gpus", "device", "backend")
    gpus = 0.0 if cpu_only else (gpus_there if num_gpus is None else float(num_gpus))
    if gpus > gpus_there:
        raise ConfigError(f"{{num_gpus}} {num_gpus:g}: the Ray cluster has {gpus_there:g} GPU(s)", "num_gpus")
    if config.device.startswith("cuda") and gpus == 0:
        raise ConfigError(f"{{device}} {config.device}: the Ray cluster has no GPU (or {{num_gpus}} 0 was given)", "device", "num_gpus")
    workers = num_workers if num_workers is not None else max(1, int(gpus))
    if workers < 1:
        raise ConfigError(f"{{num_workers}} {workers}: must be >= 1", "num_workers")
    split = gpus > 0 if split is None else split
    per_cpu = cpus_per_worker or (1.0 if gpus > 0 or split else max(1.0, float(math.floor(cpus / workers))))
    spare = 1.0 if split else 0.0  # the read/encode tasks need a CPU of their own
    if workers * per_cpu + spare > cpus:
        raise ConfigError(f"{{num_workers}} {workers}: {workers} x {per_cpu:g} CPU{' + 1 for read/encode' if spare else ''} "
                           f"is more than the Ray cluster's {cpus:g} CPU(s)", "num_workers")
    return Resources(workers, gpus / workers, per_cpu, split, cpus, gpus_there)


def predictions(ray, rows: list[dict], detector: str | None, sam: str | None, config: PredictConfig, batch: int,
                overlays: bool, res: Resources, gt=None, detect_batch: int | None = None) -> Iterator[dict]:
    """The result rows of `rows` (one per image: id, shard, path, file_name, height, width), as they finish; `batch`
    rows per Ray batch, `detect_batch` images per detector forward inside an actor; `gt`: ground-truth boxes (GtBoxes)
    as the actors' detector."""
    blocks = max(1, min(len(rows), 4096, math.ceil(len(rows) / batch)))
    ds = ray.data.from_items(rows, override_num_blocks=blocks)
    cpus = res.cpus_per_worker
    ds = ds.map_batches(read_batch, batch_size=batch, batch_format="numpy", num_cpus=1 if res.split else cpus)
    worker = dict(detector=detector, sam=sam, config=config, encode=not res.split, overlays=overlays,
                  gpus=res.gpus_per_worker, threads=int(cpus), gt=gt, detect_batch=detect_batch)
    ds = ds.map_batches(PredictWorker, fn_constructor_kwargs=worker, batch_size=batch, batch_format="numpy",
                        compute=ray.data.ActorPoolStrategy(size=res.workers), num_cpus=cpus,
                        num_gpus=res.gpus_per_worker or None)
    if res.split:
        ds = ds.map_batches(encode_batch, fn_kwargs={"overlays": overlays}, batch_size=batch, batch_format="numpy",
                            num_cpus=1)
    yield from ds.iter_rows()
