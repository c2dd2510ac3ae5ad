"""`defect-vision predict --engine ray`: the options of a sharded run on a Ray cluster (defect_vision.distributed)."""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("engine (several processes, GPUs or machines)")
    g.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local: this process; ray: a Ray Data pipeline (read -> detector -> SAM -> encode) with one "
                        "model copy per worker, written as resumable shards into --out and merged into the same "
                        "outputs (needs the extra [distributed]: pip install 'defect-vision[distributed]')")
    g.add_argument("--num-workers", type=int, default=None,
                   help="ray: model workers (actors), one model copy each (default: one per GPU used, else 1)")
    g.add_argument("--num-gpus", type=float, default=None,
                   help="ray: GPUs for the workers in all, shared out among them (default: every GPU of the cluster, "
                        "none with --device cpu)")
    g.add_argument("--cpus-per-worker", type=float, default=None,
                   help="ray: CPUs per worker (default: 1 beside a GPU; CPU-only: the cluster's CPUs shared out)")
    g.add_argument("--address", default=None,
                   help="ray: a running cluster (host:port of `ray start --head`, auto, or ray://host:10001); "
                        "default: a local one on this machine")
    g.add_argument("--shard-size", type=int, default=256,
                   help="ray: images per shard, the unit of resume (a rerun of the same command skips complete shards)")


def run(a: argparse.Namespace, detector, sam, config, source, options):
    """The sharded run of the parsed options; its ShardedSummary."""
    from defect_vision.distributed.predict import RayOptions, ray_predict_run

    ro = RayOptions(num_workers=a.num_workers, num_gpus=a.num_gpus, cpus_per_worker=a.cpus_per_worker,
                    address=a.address, shard_size=a.shard_size)
    return ray_predict_run(detector, sam, config, source, a.out, options, ro)


def refuse_ray_options(a: argparse.Namespace) -> None:
    """DatasetError for a ray-only option given to the local engine (it would be ignored)."""
    from defect_vision.errors import DatasetError

    given = [f"--{k.replace('_', '-')}" for k in ("num_workers", "num_gpus", "cpus_per_worker", "address")
             if getattr(a, k) is not None] + (["--shard-size"] if a.shard_size != 256 else [])
    if given:
        raise DatasetError(f"{', '.join(given)}: only with --engine ray")
