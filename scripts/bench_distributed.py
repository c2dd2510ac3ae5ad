#!/usr/bin/env python
"""Throughput of `predict --engine ray` against the number of model workers, beside the single-process run, on the
synthetic category (defect_vision.data.synthetic, the demo's) with the demo's random-init models (YOLO-World
yolov8n-worldv2 at --imgsz, SAM vit_tiny; speed does not depend on the weights). Every configuration predicts the
same images into a fresh folder; the outputs are checked equal to the single-process run's with as many
torch threads.

Per run: seconds to the first result (actor start, model loading, first batch), images/s over the whole call (the
cluster already up), and steady images/s once results flow (summary.json engine.steady_images_per_s: what a long
run approaches; for the single process, warmed up on the first --batch images: its images/s, model loading
excluded).
Prints a markdown table (the README's "scale" section). Needs the [distributed] extra.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--images", type=int, default=64, help="test images of the synthetic category predicted per run")
    p.add_argument("--size", type=int, default=256, help="side of the synthetic images in pixels")
    p.add_argument("--configs", nargs="+", default=None,
                   help="ray runs as WORKERSxCPUS (CPUs per worker = its torch threads), one row each (default: 1xN "
                        "1x1 Nx1 for N CPUs: one worker on every core, one worker on one core, one worker per core)")
    p.add_argument("--single-threads", type=int, nargs="+", default=None,
                   help="torch threads of the single-process rows (default: N and 1)")
    p.add_argument("--repeats", type=int, default=2, help="runs per configuration (interleaved; the median is shown)")
    p.add_argument("--imgsz", type=int, default=256, help="detector input size (the demo's)")
    p.add_argument("--detector-cfg", default="yolov8n-worldv2.yaml")
    p.add_argument("--sam-type", default="vit_tiny")
    p.add_argument("--max-det", type=int, default=3)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--shard-size", type=int, default=8)
    p.add_argument("--device", default="cpu", help="cpu, or auto (the cluster's GPUs: one worker per GPU)")
    args = p.parse_args(argv)

    import ray
    import torch

    from defect_vision.data.synthetic import make_category
    from defect_vision.distributed.predict import RayOptions, ray_predict_run
    from defect_vision.inference.predictor import DefectPredictor, PredictConfig
    from defect_vision.inference.run import RunOptions, predict_run
    from defect_vision.models.random_init import save_random_detector, save_random_sam

    work = Path(tempfile.mkdtemp(prefix="bench_distributed_"))
    cat = make_category(work / "data", "toy_wood", size=args.size, per_defect=args.images // 4 + 1, seed=0)
    src = work / "images.csv"
    images = sorted((cat / "test").rglob("*.png"))[: args.images]
    src.write_text("image\n" + "".join(f"{p}\n" for p in images))
    det = save_random_detector(work / "det.pt", ["crack", "hole", "scratch", "stain"], cfg=args.detector_cfg,
                               score_bias=0.0, imgsz=args.imgsz)
    sam = save_random_sam(work / "sam.pth", args.sam_type)
    config = PredictConfig(conf=0.1, max_det=args.max_det, model_type=args.sam_type, device=args.device)
    options = RunOptions(batch=args.batch, progress=False, force=True)

    t0 = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    ray_start = time.perf_counter() - t0
    resources = ray.cluster_resources()
    ncpu = int(resources.get("CPU", 1))
    configs = [tuple(int(x) for x in c.lower().split("x")) for c in args.configs or [f"1x{ncpu}", "1x1", f"{ncpu}x1"]]
    predictor = DefectPredictor(det, sam, config)
    warm = work / "warm.csv"
    warm.write_text("image\n" + "".join(f"{p}\n" for p in images[: args.batch]))
    predict_run(predictor, warm, work / "warm", options)  # first forwards are slow (lazy init): not measured
    default_threads = torch.get_num_threads()
    rows: dict[str, list[tuple[float | None, float, float | None]]] = {}
    for r in range(args.repeats):
        for threads in args.single_threads or sorted({default_threads, 1}, reverse=True):
            t = time.perf_counter()
            single = DefectPredictor(det, sam, replace(config, threads=threads, workers=1))
            s = predict_run(single, src, work / f"single{threads}", options)
            rows.setdefault(f"single process, 1 worker x {threads} thread(s)", []).append(
                (None, len(images) / (time.perf_counter() - t), s.images_per_s))
        t = time.perf_counter()
        s = predict_run(predictor, src, work / "single_default", options)
        par = s.parallel
        rows.setdefault(f"single process, predict's default ({par['workers']} workers x {par['torch_threads_per_worker']} "
                        f"thread(s))", []).append((None, len(images) / (time.perf_counter() - t), s.images_per_s))
        for n, cpus in configs:
            out = work / f"ray{n}x{cpus}_{r}"  # a fresh folder: the same one would be resumed (every shard complete)
            t = time.perf_counter()
            s = ray_predict_run(det, sam, config, src, out, options,
                                RayOptions(num_workers=n, cpus_per_worker=cpus, shard_size=args.shard_size))
            name = f"ray, {n} worker(s) x {cpus} CPU"
            rows.setdefault(name, []).append((s.first_result_s, len(images) / (time.perf_counter() - t),
                                              s.steady_images_per_s))
            ref = work / f"single{cpus}"  # torch's thread count changes float sums (a mask pixel may flip)
            same = (out / "predictions.json").read_bytes() == (ref / "predictions.json").read_bytes() if ref.is_dir() else None
            print(f"repeat {r + 1}: {name}: {json.dumps(rows[name][-1])}; predictions.json equal to the "
                  f"single-process one with {cpus} thread(s): {same}", flush=True)
    ray.shutdown()
    shutil.rmtree(work, ignore_errors=True)

    print(f"\n{len(images)} images of {args.size} px, YOLO-World {args.detector_cfg} at {args.imgsz} + SAM {args.sam_type}, "
          f"device {args.device}, {os.cpu_count()} CPU(s) seen, Ray cluster {resources.get('CPU', 0):g} CPU / "
          f"{resources.get('GPU', 0):g} GPU (started in {ray_start:.1f} s), batch {args.batch}, shards of "
          f"{args.shard_size}; median of {args.repeats}\n")
    print("| run | first result, s | img/s, whole call | img/s, steady | steady vs 1 worker x 1 CPU |\n"
          "|---|---:|---:|---:|---:|")
    med = lambda xs: statistics.median(xs) if xs else None  # noqa: E731
    cell = lambda v, f: "" if v is None else format(v, f)  # noqa: E731
    table = {name: (med([v[0] for v in vs if v[0] is not None]), med([v[1] for v in vs]),
                    med([v[2] for v in vs if v[2] is not None])) for name, vs in rows.items()}
    base = table.get("ray, 1 worker(s) x 1 CPU", (None, None, None))[2]
    for name, (first, whole, steady) in table.items():
        ratio = f"{steady / base:.2f}x" if steady and base and name.startswith("ray") else ""
        print(f"| {name} | {cell(first, '.1f')} | {whole:.2f} | {cell(steady, '.2f')} | {ratio} |")
    print("\n(single process, steady: its images/s with model loading excluded, warmed up)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
