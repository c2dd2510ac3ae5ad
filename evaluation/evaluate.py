"""`python -m evaluation.evaluate`: predictions.json vs a COCO ground truth -> metrics.json, report.md, plots."""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from converters.errors import DatasetError
from evaluation import calibrate as cal
from evaluation import mask_iou, pixel_metrics, plots, report_md
from evaluation.coco_metrics import coco_metrics
from evaluation.data import (GroundTruth, Prediction, image_id_map, load_ground_truth, load_predictions,
                             predictions_by_image)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m evaluation.evaluate",
        description="Evaluate predictions.json (COCO results with RLE masks) against the converters' COCO ground "
                    "truth: mask IoU (instance, image, class, good images), COCO box/mask AP (pycocotools), MVTec "
                    "pixel AUROC / AUPRO@0.3 / max-F1 / region max-F1, image AUROC. Writes metrics.json, "
                    "report.md, per_image.json and plots into --out.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--gt", type=Path, required=True, help="COCO ground truth (instances_test.json)")
    ap.add_argument("--pred", type=Path, required=True, help="predictions.json of the same images")
    ap.add_argument("--out", type=Path, required=True, help="report folder (files in it are replaced one by one)")
    ap.add_argument("--val-gt", type=Path, help="instances_val.json: calibrate per-class thresholds on val ...")
    ap.add_argument("--val-pred", type=Path, help="... with these val predictions, and report test at them")
    ap.add_argument("--score-threshold", type=float, default=0.0,
                    help="predictions below it are ignored by the mask IoU figures (AP and pixel metrics use all)")
    ap.add_argument("--calib-iou", type=float, default=0.5, help="box IoU of a true positive in the calibration")
    ap.add_argument("--default-threshold", type=float, default=0.25, help="threshold of classes calibration cannot set")
    ap.add_argument("--region-steps", type=int, default=200, help="most thresholds swept for region max-F1")
    ap.add_argument("--worst", type=int, default=12, help="images in the worst-case overlay grid")
    ap.add_argument("--no-plots", action="store_true", help="skip the figures")
    ap.add_argument("--seed", type=int, default=0, help="random seed (the evaluation is deterministic; kept for uniformity)")
    args = ap.parse_args(argv)
    if (args.val_gt is None) != (args.val_pred is None):
        ap.error("--val-gt and --val-pred go together")
    return args


def iou_figures(gt: GroundTruth, by_image: dict[int, list[Prediction]], progress: bool = False,
                pixel: pixel_metrics.PixelAccumulator | None = None, score_threshold: float = 0.0):
    """Mask IoU per image/instance (predictions >= score_threshold); feeds `pixel` with every prediction."""
    images, instances, class_images = [], [], {}
    for image in tqdm(list(gt.images.values()), desc="evaluate", unit="img", disable=not progress):
        preds = by_image.get(image.id, [])
        kept = [p for p in preds if p.score >= score_threshold]
        im, inst = mask_iou.image_ious(image, kept)
        images.append(im)
        instances += inst
        for cid in {a["category_id"] for a in image.annotations}:
            class_images.setdefault(cid, []).append(mask_iou.class_image_iou(image, kept, cid))
        if pixel is not None:
            scores = pixel_metrics.score_map([p.rle for p in preds], [p.score for p in preds], image.height, image.width)
            pixel.add(scores, pixel_metrics.gt_map([a["rle"] for a in image.annotations], image.height, image.width),
                      anomalous=not image.is_good, levels=np.unique([0.0] + [p.score for p in preds]))
    return images, instances, class_images


def detection_at_thresholds(gt: GroundTruth, preds: list[Prediction], doc: dict, iou: float) -> dict:
    kept = cal.apply_thresholds(preds, gt, doc)
    flags = cal.true_positive_flags(gt, kept, iou)
    out = {}
    for cid, name in sorted(gt.categories.items()):
        n_gt = sum(a["category_id"] == cid for im in gt.images.values() for a in im.annotations)
        sel = np.array([p.category_id == cid for p in kept], bool)
        tp, n = int(flags[sel].sum()) if sel.size else 0, int(sel.sum())
        p = tp / n if n else None
        r = tp / n_gt if n_gt else None
        f1 = 2 * tp / (n + n_gt) if n + n_gt else None
        out[name] = {"threshold": doc["thresholds"][name], "precision": p, "recall": r, "f1": f1,
                     "tp": tp, "predictions": n, "gt": n_gt}
    return out


def evaluate(args: argparse.Namespace, workdir: Path) -> tuple[dict, str]:
    gt = load_ground_truth(args.gt)
    remap = image_id_map(args.pred, gt)
    preds = load_predictions(args.pred, gt, remap)
    val = None
    if args.val_gt:
        val_gt = load_ground_truth(args.val_gt)
        val = (val_gt, load_predictions(args.val_pred, val_gt, image_id_map(args.val_pred, val_gt)))
    by_image = predictions_by_image(preds)

    levels = np.array([p.score for p in preds] + [0.0])
    pixel = pixel_metrics.PixelAccumulator(pixel_metrics.region_thresholds(levels, args.region_steps))
    images, instances, class_images = iou_figures(gt, by_image, True, pixel, args.score_threshold)
    px = pixel.result()
    coco = coco_metrics(gt, preds)
    n_good = sum(im.is_good for im in gt.images.values())
    metrics = {
        "inputs": {"gt": str(args.gt), "pred": str(args.pred), "score_threshold": args.score_threshold,
                   "image_ids_matched_by_path": remap is not None},
        "counts": {"images": len(gt.images), "good_images": n_good, "defect_images": len(gt.images) - n_good,
                   "gt_instances": len(instances), "predictions": len(preds),
                   "predictions_without_mask": sum(not p.has_mask for p in preds)},
        "mask_iou": mask_iou.summarize(images, instances, class_images, gt.categories),
        "coco": {t: r.summary for t, r in coco.items()},
        "pixel": {k: v for k, v in px.items() if k != "image_auroc"},
        "image_auroc": px["image_auroc"],
        "calibrated": None,
    }
    if val is not None:
        doc = cal.thresholds_document(cal.calibrate(*val, args.calib_iou), args.default_threshold)
        (workdir / "thresholds.json").write_text(json.dumps(doc, indent=2) + "\n")
        kept = cal.apply_thresholds(preds, gt, doc)
        c_images, c_instances, c_class = iou_figures(gt, predictions_by_image(kept))
        metrics["calibrated"] = {
            "thresholds": doc["thresholds"], "default": doc["default"], "val": doc["stats"],
            "per_class": detection_at_thresholds(gt, preds, doc, args.calib_iou),
            "mask_iou": mask_iou.summarize(c_images, c_instances, c_class, gt.categories),
        }
    per_image = [vars(im) for im in images]
    (workdir / "per_image.json").write_text(json.dumps(per_image, indent=1) + "\n")
    drawn = []
    if not args.no_plots:
        plots.pr_curves({t: r.pr_curves for t, r in coco.items()}, workdir / "pr_curves.png")
        plots.iou_histogram(mask_iou.instance_iou_values(instances), workdir / "iou_histogram.png")
        drawn = ["pr_curves.png", "iou_histogram.png"]
        if plots.overlay_grid(plots.worst_cases(images, args.worst), gt.images, by_image, gt.image_root,
                              workdir / "worst_cases.png", gt.categories):
            drawn.append("worst_cases.png")
    metrics["plots"] = drawn
    (workdir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (workdir / "report.md").write_text(report_md.render(metrics, drawn))
    return metrics, _summary_line(metrics)


def _summary_line(m: dict) -> str:
    f = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    c = m["counts"]
    return (f"evaluated {c['images']} images ({c['defect_images']} defect, {c['good_images']} good), "
            f"{c['predictions']} predictions: mask IoU {f(m['mask_iou']['mean_instance'])} (instance) / "
            f"{f(m['mask_iou']['mean_image'])} (image), mask AP {f(m['coco']['segm']['AP'])}, box AP50 "
            f"{f(m['coco']['bbox']['AP50'])}, pixel AUROC {f(m['pixel']['auroc'])}, AUPRO {f(m['pixel']['aupro'])}, "
            f"image AUROC {f(m['image_auroc'])}, good FP images {m['mask_iou']['good_fp_images']}/{c['good_images']}")


def publish(workdir: Path, out: Path) -> None:
    """Move every finished file into `out`, each by an atomic rename (other files in `out` stay)."""
    out.mkdir(parents=True, exist_ok=True)
    for f in sorted(workdir.iterdir()):
        os.replace(f, out / f.name)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    random.seed(args.seed)
    np.random.seed(args.seed)
    start = time.perf_counter()
    if args.out.exists() and not args.out.is_dir():
        print(f"error: {args.out}: exists and is not a folder (--out is the report folder)", file=sys.stderr)
        return 2
    workdir = None
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix=f".{args.out.name}.", suffix=".tmp", dir=args.out.parent))
        _, line = evaluate(args, workdir)
        publish(workdir, args.out)
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. --out is a file, or not writable
        print(f"error: {exc.filename or args.out}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    finally:
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"{line} ({time.perf_counter() - start:.1f} s) -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
