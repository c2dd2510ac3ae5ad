"""Long-tail calibration: per-class confidence thresholds that maximise detection F1 on val.

`Thresholds.to_dict()` is the file `defect-vision predict --thresholds` takes: {"thresholds": {"<class name>": t},
"default": d, "stats": {"<class name>": {f1, precision, recall, gt, predictions, calibrated}}}. A prediction is a
true positive when its box overlaps a not yet matched GT box of its class with IoU >= `iou` (greedy by score, as
COCO matches), so the matches of a threshold never depend on lower-scored predictions. Classes without GT or
without any true positive on val keep the default. Run inference on val with a low --conf (e.g. 0.01): no
threshold below it can be found.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from defect_vision.coco import CocoDataset
from defect_vision.evaluation.inputs import Predictions, load_gt, resolve
from defect_vision.thresholds import ThresholdsFile


@dataclass
class ClassCalibration:
    name: str
    threshold: float | None  # None: keep the default
    f1: float
    precision: float
    recall: float
    gt: int
    predictions: int


@dataclass
class Thresholds:
    """Per-class thresholds (a class that could not be calibrated keeps `default`)."""

    classes: list[ClassCalibration]
    default: float = 0.25

    @property
    def by_name(self) -> dict[str, float]:
        return {c.name: (c.threshold if c.threshold is not None else self.default) for c in self.classes}

    def stats(self) -> dict:
        return {c.name: {"f1": c.f1, "precision": c.precision, "recall": c.recall, "gt": c.gt,
                         "predictions": c.predictions, "calibrated": c.threshold is not None} for c in self.classes}

    def to_dict(self) -> dict:
        return {"thresholds": self.by_name, "default": self.default, "stats": self.stats()}

    def save(self, path: Path, inputs: Iterable[Path] = ()) -> None:
        """Write the thresholds json (defect_vision.thresholds, the one reader and writer of the file)."""
        ThresholdsFile(self.by_name, self.default).save(path, self.stats(), inputs)

    def summary_line(self) -> str:
        done = [c for c in self.classes if c.threshold is not None]
        shown = ", ".join(f"{c.name} {c.threshold:.3f} (F1 {c.f1:.2f})" for c in done) or "none"
        n = sum(c.predictions for c in self.classes)
        return f"calibrated {len(done)}/{len(self.classes)} classes on {n} predictions: {shown}; others {self.default}"


def true_positive_flags(gt: CocoDataset, predictions: Predictions, iou: float = 0.5) -> dict[int, np.ndarray]:
    """Per image, per prediction: matched to a GT box of its class, greedily by descending score."""
    flags = {}
    for image_id, det in predictions.items():
        truth = gt.detections[image_id]
        hit = np.zeros(len(det), bool)
        for k in np.unique(det.class_id):
            gts = truth.xywh[truth.class_id == k]
            if not len(gts):
                continue
            rows = np.flatnonzero(det.class_id == k)
            rows = rows[np.argsort(-det.score[rows], kind="stable")]
            ious = np.asarray(mask_utils.iou(det.xywh[rows], gts, [0] * len(gts))).reshape(len(rows), len(gts))
            taken = np.zeros(len(gts), bool)
            for r, row in enumerate(rows):
                cand = np.where(~taken & (ious[r] >= iou))[0]
                if cand.size:
                    taken[cand[np.argmax(ious[r, cand])]] = True
                    hit[row] = True
        flags[image_id] = hit
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


def _columns(gt: CocoDataset, predictions: Predictions, iou: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(class index, score, true positive) of every prediction, and the number of GT instances per class."""
    flags = true_positive_flags(gt, predictions, iou)
    dets = list(predictions.values())
    cls = np.concatenate([d.class_id for d in dets] + [np.zeros(0, np.int64)])
    scores = np.concatenate([d.score for d in dets] + [np.zeros(0)])
    tp = np.concatenate([flags[i] for i in predictions] + [np.zeros(0, bool)])
    n_gt = np.bincount(np.concatenate([d.class_id for d in gt.detections.values()] + [np.zeros(0, np.int64)]),
                       minlength=len(gt.class_names))
    return cls, scores, tp, n_gt


def calibrate(gt: CocoDataset | Path, predictions: Predictions | Path, iou: float = 0.5,
              default: float = 0.25) -> Thresholds:
    """Per-class thresholds maximising detection F1 of `predictions` (a COCO results file or detections by image
    id) against `gt` (a COCO json or dataset)."""
    gt = load_gt(gt)
    predictions, _, _ = resolve(predictions, gt)
    cls, scores, tp, n_gt = _columns(gt, predictions, iou)
    out = []
    for k, name in enumerate(gt.class_names):
        sel = cls == k
        if n_gt[k] == 0 or not tp[sel].any():
            out.append(ClassCalibration(name, None, 0.0, 0.0, 0.0, int(n_gt[k]), int(sel.sum())))
            continue
        t, precision, recall, f1 = f1_sweep(scores[sel], tp[sel], int(n_gt[k]))
        j = int(np.argmax(f1))  # first maximum = the highest threshold among ties
        out.append(ClassCalibration(name, float(t[j]), float(f1[j]), float(precision[j]), float(recall[j]),
                                    int(n_gt[k]), int(sel.sum())))
    return Thresholds(out, default)


def apply_thresholds(predictions: Predictions, thresholds: Mapping[str, float], default: float) -> Predictions:
    """The predictions that reach their class's threshold (by class name; `default` for classes not listed)."""
    out = {}
    for image_id, det in predictions.items():
        need = np.array([thresholds.get(name, default) for name in det.class_names] + [default], float)
        out[image_id] = det[det.score >= need[det.class_id]]
    return out


def detection_at_thresholds(gt: CocoDataset, predictions: Predictions, thresholds: Thresholds, iou: float) -> dict:
    """Per class: precision, recall and F1 of the predictions kept by `thresholds` (the `calibrated.per_class`
    block of metrics.json)."""
    kept = apply_thresholds(predictions, thresholds.by_name, thresholds.default)
    cls, _, tp, n_gt = _columns(gt, kept, iou)
    out = {}
    for k, name in enumerate(gt.class_names):
        sel = cls == k
        hits, n, g = int(tp[sel].sum()), int(sel.sum()), int(n_gt[k])
        out[name] = {"threshold": thresholds.by_name[name], "precision": hits / n if n else None,
                     "recall": hits / g if g else None, "f1": 2 * hits / (n + g) if n + g else None,
                     "tp": hits, "predictions": n, "gt": g}
    return out
