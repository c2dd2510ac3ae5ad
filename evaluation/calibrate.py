"""Long-tail calibration: per-class confidence thresholds that maximise detection F1 on val.

Writes the file `inference.predict --thresholds` takes: {"thresholds": {"<class name>": t, ...}, "default": d,
"stats": {"<class name>": {f1, precision, recall, gt, predictions}}}. A prediction is a true positive when its
box overlaps a not yet matched GT box of its class with IoU >= --iou (greedy by score, as COCO matches), so the
matches of a threshold never depend on lower-scored predictions. Classes without GT or without any true positive
on val keep the default. Run inference on val with a low --conf (e.g. 0.01): no threshold below it can be found.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from converters.errors import DatasetError
from converters.io import atomic_write_text
from evaluation.data import (GroundTruth, Prediction, image_id_map, load_ground_truth, load_predictions,
                             predictions_by_image)


@dataclass
class ClassCalibration:
    name: str
    threshold: float | None  # None: keep the default
    f1: float
    precision: float
    recall: float
    gt: int
    predictions: int


def true_positive_flags(gt: GroundTruth, preds: list[Prediction], iou: float = 0.5) -> np.ndarray:
    """Per prediction (input order): matched to a GT box of its class, greedily by descending score."""
    flags = np.zeros(len(preds), bool)
    index = {id(p): i for i, p in enumerate(preds)}
    for image_id, image_preds in predictions_by_image(preds).items():
        image = gt.images[image_id]
        for cid in {p.category_id for p in image_preds}:
            gts = [a["bbox"] for a in image.annotations if a["category_id"] == cid]
            dts = sorted((p for p in image_preds if p.category_id == cid), key=lambda p: -p.score)
            if not gts:
                continue
            ious = np.asarray(mask_utils.iou([p.bbox for p in dts], gts, [0] * len(gts))).reshape(len(dts), len(gts))
            taken = np.zeros(len(gts), bool)
            for r, p in enumerate(dts):
                cand = np.where(~taken & (ious[r] >= iou))[0]
                if cand.size:
                    taken[cand[np.argmax(ious[r, cand])]] = True
                    flags[index[id(p)]] = True
    return flags


def f1_sweep(scores: np.ndarray, tp: np.ndarray, n_gt: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(thresholds, precision, recall, f1) for `score >= t` at every distinct score, highest first."""
    order = np.argsort(-scores, kind="stable")
    s, hits = scores[order], tp[order].astype(float)
    ctp, cnt = np.cumsum(hits), np.arange(1, len(s) + 1)
    last = np.append(s[1:] != s[:-1], True)  # a threshold takes every prediction of its score
    ctp, cnt, s = ctp[last], cnt[last], s[last]
    precision, recall = ctp / cnt, ctp / max(n_gt, 1)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(precision), where=precision + recall > 0)
    return s, precision, recall, f1


def calibrate(gt: GroundTruth, preds: list[Prediction], iou: float = 0.5) -> list[ClassCalibration]:
    flags = true_positive_flags(gt, preds, iou)
    out = []
    for cid, name in sorted(gt.categories.items()):
        sel = np.array([p.category_id == cid for p in preds], bool)
        n_gt = sum(a["category_id"] == cid for im in gt.images.values() for a in im.annotations)
        scores = np.array([p.score for p in preds], float)[sel] if sel.any() else np.zeros(0)
        if n_gt == 0 or not flags[sel].any():
            out.append(ClassCalibration(name, None, 0.0, 0.0, 0.0, n_gt, int(sel.sum())))
            continue
        t, precision, recall, f1 = f1_sweep(scores, flags[sel], n_gt)
        k = int(np.argmax(f1))  # first maximum = the highest threshold among ties
        out.append(ClassCalibration(name, float(t[k]), float(f1[k]), float(precision[k]), float(recall[k]), n_gt, int(sel.sum())))
    return out


def thresholds_document(classes: list[ClassCalibration], default: float) -> dict:
    return {
        "thresholds": {c.name: (c.threshold if c.threshold is not None else default) for c in classes},
        "default": default,
        "stats": {c.name: {"f1": c.f1, "precision": c.precision, "recall": c.recall, "gt": c.gt,
                           "predictions": c.predictions, "calibrated": c.threshold is not None} for c in classes},
    }


def apply_thresholds(preds: list[Prediction], gt: GroundTruth, doc: dict) -> list[Prediction]:
    """The predictions that pass their class threshold."""
    th = doc["thresholds"]
    return [p for p in preds if p.score >= th.get(gt.categories[p.category_id], doc["default"])]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m evaluation.calibrate",
        description="Per-class confidence thresholds maximising detection F1 on val; writes the file "
                    "`python -m inference.predict --thresholds` takes.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--gt", type=Path, required=True, help="COCO ground truth of val (instances_val.json)")
    ap.add_argument("--pred", type=Path, required=True, help="predictions.json of val (run inference with a low --conf)")
    ap.add_argument("--out", type=Path, required=True, help="thresholds.json to write")
    ap.add_argument("--iou", type=float, default=0.5, help="box IoU for a prediction to count as a true positive")
    ap.add_argument("--default", type=float, default=0.25, help="threshold of classes that cannot be calibrated")
    ap.add_argument("--seed", type=int, default=0, help="random seed (the calibration is deterministic; kept for uniformity)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    random.seed(args.seed)
    np.random.seed(args.seed)
    try:
        gt = load_ground_truth(args.gt)
        preds = load_predictions(args.pred, gt, image_id_map(args.pred, gt))
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    classes = calibrate(gt, preds, args.iou)
    doc = thresholds_document(classes, args.default)
    try:
        atomic_write_text(args.out, json.dumps(doc, indent=2) + "\n")
    except OSError as exc:  # e.g. --out is a folder, or not writable
        print(f"error: {args.out}: cannot write ({exc.strerror or exc})", file=sys.stderr)
        return 2
    done = [c for c in classes if c.threshold is not None]
    shown = ", ".join(f"{c.name} {c.threshold:.3f} (F1 {c.f1:.2f})" for c in done) or "none"
    print(f"calibrated {len(done)}/{len(classes)} classes on {len(preds)} predictions: {shown}; "
          f"others {args.default} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
