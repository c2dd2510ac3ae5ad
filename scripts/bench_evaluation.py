"""Benchmark `defect_vision.evaluation.evaluate` on synthetic categories: seconds vs image size and count, with and
without plots; prints a markdown table.

Ground truth: a synthetic MVTec-layout category (defect_vision.data.synthetic) with every image in one COCO split.
Predictions: each GT instance dilated/eroded by a random 0-3 px with a random score, a missed instance now and
then, and low-scored false-positive blobs on a third of the images.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from defect_vision.data.mvtec import read_category
from defect_vision.data.synthetic import make_category
from defect_vision.evaluation import EvalConfig, evaluate
from defect_vision.formats import coco as coco_format
from defect_vision.masks import decode_rle, encode_rle


def build(root: Path, size: int, per_defect: int, seed: int) -> tuple[Path, Path, int]:
    make_category(root / "mvtec", "bench", size=size, per_defect=per_defect, good_test=per_defect, good_train=0, seed=seed)
    cat = read_category(root / "mvtec", "bench")
    ids, starts = coco_format.image_ids(cat), coco_format.first_annotation_ids(cat)
    doc = {"info": {"source": "bench", "category": "bench", "image_root": str(cat.root), "split": "test", "seed": seed},
           "images": [coco_format.image_entry(r, ids[r.file_name]) for r in cat.images],
           "annotations": [a for r in cat.images for a in coco_format.annotations(r, ids[r.file_name], starts[r.file_name], cat)],
           "categories": coco_format.categories(cat)}
    rng = np.random.default_rng(seed)
    preds = []
    for rec in cat.images:
        for inst in rec.instances:
            if rng.random() < 0.1:
                continue  # missed
            m = decode_rle(inst.rle).astype(np.uint8)
            k = int(rng.integers(0, 4))
            if k:
                op = cv2.dilate if rng.random() < 0.5 else cv2.erode
                m = op(m, np.ones((2 * k + 1, 2 * k + 1), np.uint8))
            if m.any():
                x, y, w, h = cv2.boundingRect(m)
                preds.append({"image_id": ids[rec.file_name], "category_id": cat.category_id(inst.category),
                              "bbox": [x, y, w, h], "score": round(float(rng.uniform(0.4, 1.0)), 3),
                              "segmentation": encode_rle(m)})
        if rng.random() < 1 / 3:
            m = np.zeros((rec.height, rec.width), np.uint8)
            cx, cy, r = int(rng.integers(0, rec.width)), int(rng.integers(0, rec.height)), max(3, size // 40)
            cv2.circle(m, (cx, cy), r, 1, -1)
            x, y, w, h = cv2.boundingRect(m)
            preds.append({"image_id": ids[rec.file_name], "category_id": int(rng.integers(1, len(cat.defect_types) + 1)),
                          "bbox": [x, y, w, h], "score": round(float(rng.uniform(0.05, 0.6)), 3),
                          "segmentation": encode_rle(m)})
    gt_path, pred_path = root / "instances_test.json", root / "predictions.json"
    gt_path.write_text(json.dumps(doc))
    pred_path.write_text(json.dumps(preds))
    return gt_path, pred_path, len(cat.images)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 1024], help="image sizes (px)")
    ap.add_argument("--per-defect", type=int, default=6, help="images per defect type (and good test images)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    rows = []
    for size in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            gt, pred, n = build(Path(tmp), size, args.per_defect, args.seed)
            n_pred = len(json.loads(pred.read_text()))
            for plots in (False, True):
                t0 = time.perf_counter()
                m = evaluate(gt, pred, EvalConfig(plots=plots), Path(tmp) / "report")
                seconds = time.perf_counter() - t0
                rows.append((size, n, n_pred, "yes" if plots else "no", seconds, seconds / n,
                             m.mean_instance_iou, m.mask_ap, m.pixel["aupro"]))
    print("\n| image px | images | predictions | plots | seconds | s/image | mean inst IoU | mask AP | AUPRO |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in r) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
