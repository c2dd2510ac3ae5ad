#!/usr/bin/env python
"""Benchmark `defect-vision predict` (defect_vision.inference.predict_run): per-image time in load, detector, SAM encoder, SAM decoder and write,
and the ratio of the whole run to the sum of the three model forwards (target <= 1.15).

Models are random-init checkpoints in the real formats and real sizes (YOLO-World v2 at --detector-cfg, SAM at
--sam-types), since no weights can be downloaded; speed does not depend on the weights. The random detector's
score bias is set so it detects on every image, capped by --max-det, so SAM decodes --max-det boxes per image.
With onnx + onnxruntime installed (the [export] extra), a second table puts the onnxruntime backend (`defect-vision
export`, then predict with backend onnxruntime) head to head with torch, both on the CPU (--no-onnx skips it).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from defect_vision.data.synthetic import make_category
from defect_vision.inference.predictor import DefectPredictor, PredictConfig
from defect_vision.inference.run import RunOptions, predict_run
from defect_vision.models.random_init import save_random_detector, save_random_sam

STAGES = ("load", "detector", "sam_encoder", "sam_decoder", "write")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--images", type=int, default=8, help="images measured (after a warm-up run on 2 others)")
    p.add_argument("--size", type=int, default=256, help="side of the synthetic images in pixels")
    p.add_argument("--sam-types", nargs="+", default=["vit_tiny", "vit_b"], help="SAM model types, one column each")
    p.add_argument("--detector-cfg", default="yolov8s-worldv2.yaml", help="ultralytics model yaml of the detector")
    p.add_argument("--imgsz", type=int, default=640, help="detector input size")
    p.add_argument("--max-det", type=int, default=5, help="detections (so SAM boxes) per image")
    p.add_argument("--batch", type=int, default=4, help="images per detector forward")
    p.add_argument("--sam-batch", type=int, default=None, help="images per SAM encoder forward (default: 4 on CUDA, 1 on CPU)")
    p.add_argument("--workers", type=int, default=1,
                   help="model workers (predict's CPU default is several; with 1 the stage times add up to the run, "
                        "which is what the overhead ratio measures)")
    p.add_argument("--device", default="auto", help="auto|cpu|cuda:N")
    p.add_argument("--precision", default="auto", help="auto|fp32|fp16|bf16 (autocast on CUDA; auto: fp16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--memory-size", type=int, default=2000,
                   help="image side of the peak-memory table (SAM masks of 1..100 boxes; 0: skip it)")
    p.add_argument("--no-onnx", action="store_true",
                   help="skip the onnxruntime vs torch CPU table (it needs onnx + onnxruntime: the [export] extra)")
    p.add_argument("--onnx-threads", type=int, nargs="+", default=None,
                   help="intra-op thread counts of the onnxruntime vs torch table, one row pair each (default: torch's)")
    args = p.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="bench_inference_"))
    cat = make_category(work / "data", "bench", size=args.size, per_defect=max(1, (args.images + 2) // 4 + 1),
                        good_test=0, good_train=0, combined=0, seed=args.seed)
    images = sorted((cat / "test").rglob("*.png"))[: args.images + 2]
    warm, measured = work / "warm", work / "measured"
    for i, path in enumerate(images):
        folder = warm if i < 2 else measured
        folder.mkdir(exist_ok=True)
        (folder / f"{i:03d}.png").write_bytes(path.read_bytes())
    names = ["crack", "hole", "scratch", "stain"]
    detector = save_random_detector(work / "det.pt", names, cfg=args.detector_cfg, score_bias=0.0, imgsz=args.imgsz)

    columns: dict[str, dict] = {}
    for sam_type in args.sam_types:
        sam = save_random_sam(work / f"sam_{sam_type}.pth", sam_type, seed=args.seed)
        config = PredictConfig(conf=0.01, max_det=args.max_det, model_type=sam_type, device=args.device,
                               precision=args.precision, seed=args.seed, sam_batch=args.sam_batch, workers=args.workers)
        options = RunOptions(batch=args.batch, progress=False, force=True)
        predict_run(DefectPredictor(detector, sam, config), warm, work / "out_warm", options)
        summary = predict_run(DefectPredictor(detector, sam, config), measured, work / f"out_{sam_type}", options)
        t, n = summary.timings, max(1, summary.images)
        columns[sam_type] = {**{s: 1000 * getattr(t, s) / n for s in STAGES}, "forwards": 1000 * t.forwards / n,
                             "whole": 1000 * t.wall / n, "ratio": t.overhead_ratio, "images": summary.images,
                             "encoder_calls": summary.sam_encoder_calls, "device": summary_device(work, sam_type)}

    heads = list(columns)
    print(f"\ninference benchmark: {args.images} images of {args.size}x{args.size}, detector {args.detector_cfg} "
          f"@ {args.imgsz}, {args.max_det} boxes/image, batch {args.batch}, device {columns[heads[0]]['device']}")
    print("| ms / image | " + " | ".join(f"SAM {h}" for h in heads) + " |")
    print("|---|" + "---:|" * len(heads))
    for row in (*STAGES, "forwards", "whole"):
        label = {"forwards": "sum of the 3 forwards", "whole": "whole run (wall)"}.get(row, row)
        print(f"| {label} | " + " | ".join(f"{columns[h][row]:.1f}" for h in heads) + " |")
    print("| whole / forwards (target <= 1.15) | " + " | ".join(f"{columns[h]['ratio']:.3f}" for h in heads) + " |")
    print("| images/s | " + " | ".join(f"{1000 / columns[h]['whole']:.2f}" for h in heads) + " |")
    if not args.no_onnx:
        onnx_table(work, detector, args, warm, measured)
    if args.memory_size:
        memory_table(work, args.memory_size, args.device)
    return 0


def measure(detector: Path, sam: Path, config: PredictConfig, warm: Path, measured: Path, out: Path,
            batch: int, threads: int) -> dict:
    """A warm-up run, then the measured run on `threads` threads and one worker: ms per image of each stage, whole
    run, images/s."""
    from dataclasses import replace

    options = RunOptions(batch=batch, progress=False, force=True)
    config = replace(config, threads=threads, workers=1)  # the row's thread count, for both backends
    predict_run(DefectPredictor(detector, sam, config), warm, out.with_name(out.name + "_warm"), options)
    summary = predict_run(DefectPredictor(detector, sam, config), measured, out, options)
    t, n = summary.timings, max(1, summary.images)
    return {**{s: 1000 * getattr(t, s) / n for s in STAGES}, "whole": 1000 * t.wall / n, "images/s": n / t.wall}


def onnx_table(work: Path, detector: Path, args, warm: Path, measured: Path) -> None:
    """onnxruntime (CPUExecutionProvider) vs torch, both on the CPU with the same thread count (--onnx-threads,
    default torch's), same models and images: `defect-vision export` of each SAM type, then the same predict_run."""
    import importlib.util

    if importlib.util.find_spec("onnx") is None or importlib.util.find_spec("onnxruntime") is None:
        print("\nonnxruntime vs torch: skipped (onnx/onnxruntime not installed: pip install 'defect-vision[export]')")
        return
    import onnxruntime
    import torch

    from defect_vision.models.onnx_export import ExportConfig, export_onnx

    exports = {}
    for sam_type in args.sam_types:
        exports[sam_type] = work / f"onnx_{sam_type}"
        export_onnx(ExportConfig(detector, work / f"sam_{sam_type}.pth", exports[sam_type], model_type=sam_type,
                                 imgsz=args.imgsz, force=True))
    rows = []
    for threads in args.onnx_threads or [torch.get_num_threads()]:
        for sam_type in args.sam_types:
            sam = work / f"sam_{sam_type}.pth"
            base = dict(conf=0.01, max_det=args.max_det, model_type=sam_type, device="cpu", seed=args.seed)
            ref = measure(detector, sam, PredictConfig(**base), warm, measured, work / f"cpu_{sam_type}_{threads}", args.batch,
                          threads)
            ort = measure(detector, sam, PredictConfig(**base, backend="onnxruntime", onnx=exports[sam_type]), warm,
                          measured, work / f"ort_{sam_type}_{threads}", args.batch, threads)
            rows += [(sam_type, threads, "torch", ref, ""),
                     (sam_type, threads, "onnxruntime", ort, f"{ort['images/s'] / ref['images/s']:.2f}x")]
    print(f"\nonnxruntime {onnxruntime.__version__} (CPUExecutionProvider) vs torch {torch.__version__}, CPU, "
          f"{args.images} images of {args.size}x{args.size}, detector {args.detector_cfg} @ {args.imgsz}, "
          f"{args.max_det} boxes/image, batch {args.batch}; ms / image")
    print("| SAM | threads | backend | detector | sam_encoder | sam_decoder | whole run | images/s | vs torch |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for sam_type, threads, backend, r, ratio in rows:
        print(f"| {sam_type} | {threads} | {backend} | {r['detector']:.1f} | {r['sam_encoder']:.1f} | "
              f"{r['sam_decoder']:.1f} | {r['whole']:.1f} | {r['images/s']:.2f} | {ratio} |")


PEAK = """
import resource, sys, numpy as np, torch
from defect_vision.inference.segmenter import Segmenter
from defect_vision.models.sam import load_sam
from defect_vision.devices import resolve_device
size, n, budget, sam, device = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4], sys.argv[5]
image = np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)
rng = np.random.default_rng(1)
xy = rng.uniform(0, size * 0.8, (n, 2)); boxes = np.hstack([xy, xy + rng.uniform(20, size * 0.2, (n, 2))])
seg = Segmenter(load_sam(sam, "vit_tiny"), resolve_device(device), budget=int(budget) if budget > 0 else 1 << 62)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
rles, _ = seg.segment(image, boxes)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((after - before) / 1024, seg.upsample_chunks, len(rles))
"""


def memory_table(work: Path, size: int, device: str) -> None:
    """Peak resident memory added by SAM's mask step for 1..100 boxes on one size x size image: chunked (the default
    budget) vs all boxes upsampled at once, each in a fresh process (ru_maxrss)."""
    import subprocess

    from defect_vision.inference.segmenter import MASK_BUDGET_BYTES

    sam = save_random_sam(work / "sam_mem.pth", "vit_tiny")
    print(f"\nSAM mask step, peak memory added (MB), one {size}x{size} image, vit_tiny decoder, device {device}")
    print("| boxes | chunked (budget 256 MB) | all at once | chunks |")
    print("|---:|---:|---:|---:|")
    for n in (1, 10, 100):
        row = []
        for budget in (MASK_BUDGET_BYTES, 0):
            r = subprocess.run([sys.executable, "-c", PEAK, str(size), str(n), str(budget), str(sam), device],
                               capture_output=True, text=True, timeout=1200)
            mb, chunks, _ = r.stdout.split() if r.returncode == 0 else ("failed", "-", "-")
            row.append((mb, chunks))
        fmt = lambda v: v if v == "failed" else f"{float(v):.0f}"  # noqa: E731
        print(f"| {n} | {fmt(row[0][0])} | {fmt(row[1][0])} | {row[0][1]} |")


def summary_device(work: Path, sam_type: str) -> str:
    import json

    s = json.loads((work / f"out_{sam_type}" / "summary.json").read_text())
    return f"{s['device']}" + (f" ({s['autocast']} autocast)" if s["autocast"] else " (fp32)")


if __name__ == "__main__":
    sys.exit(main())
