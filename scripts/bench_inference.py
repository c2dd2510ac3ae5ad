#!/usr/bin/env python
"""Benchmark python -m inference.predict: per-image time in load, detector, SAM encoder, SAM decoder and write,
and the ratio of the whole run to the sum of the three model forwards (target <= 1.15).

Models are random-init checkpoints in the real formats and real sizes (YOLO-World v2 at --detector-cfg, SAM at
--sam-types), since no weights can be downloaded; speed does not depend on the weights. The random detector's
score bias is set so it detects on every image, capped by --max-det, so SAM decodes --max-det boxes per image.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from converters.synthetic import make_category  # noqa: E402
from inference.predict import build_parser, run  # noqa: E402
from inference.random_models import save_random_detector, save_random_sam  # noqa: E402

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
    p.add_argument("--device", default="auto", help="auto|cpu|cuda:N")
    p.add_argument("--precision", default="auto", help="auto|fp32|fp16|bf16 (autocast on CUDA)")
    p.add_argument("--seed", type=int, default=0)
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
        common = ["--detector", str(detector), "--sam", str(sam), "--model-type", sam_type, "--conf", "0.01",
                  "--max-det", str(args.max_det), "--batch", str(args.batch), "--device", args.device,
                  "--precision", args.precision, "--seed", str(args.seed), "--quiet"]
        run(build_parser().parse_args(["--source", str(warm), "--out", str(work / "out_warm"), *common]), progress=False)
        summary, _ = run(build_parser().parse_args(["--source", str(measured), "--out", str(work / f"out_{sam_type}"),
                                                    *common]), progress=False)
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
    return 0


def summary_device(work: Path, sam_type: str) -> str:
    import json

    s = json.loads((work / f"out_{sam_type}" / "summary.json").read_text())
    return f"{s['device']}" + (f" ({s['autocast']} autocast)" if s["autocast"] else " (fp32)")


if __name__ == "__main__":
    sys.exit(main())
