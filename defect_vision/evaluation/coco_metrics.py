"""COCO box and mask mAP through pycocotools' COCOeval (AP, AP50, AP75, per class, PR curves)."""
from __future__ import annotations

import contextlib
import copy
import io
from dataclasses import dataclass

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from defect_vision.coco import CocoDataset
from defect_vision.evaluation.inputs import Predictions


@dataclass
class CocoResult:
    summary: dict  # {AP, AP50, AP75, AR100, per_class: {name: {AP, AP50, AP75}}}
    pr_curves: dict[str, tuple[np.ndarray, np.ndarray]]  # class name -> (recall, precision) at IoU 0.5
    stats: list[float]  # COCOeval.stats, the 12 numbers it prints


def _quiet():
    return contextlib.redirect_stdout(io.StringIO())


def gt_coco(gt: CocoDataset) -> COCO:
    coco = COCO()
    coco.dataset = gt.to_dict()
    with _quiet():
        coco.createIndex()
    return coco


def results(predictions: Predictions, iou_type: str) -> list[dict]:
    """COCO results entries at full precision: boxes only for "bbox", masks only for "segm" (pycocotools derives
    the rest); a box-only prediction's mask is its box (defect_vision.coco.load_results)."""
    out = []
    for image_id, det in predictions.items():
        cids, scores = det.category_id.tolist(), det.score.tolist()
        if iou_type == "bbox":
            out += [{"image_id": image_id, "category_id": c, "bbox": b, "score": s}
                    for c, b, s in zip(cids, det.xywh.tolist(), scores)]
        else:
            out += [{"image_id": image_id, "category_id": c, "score": s,
                     "segmentation": {"size": list(r["size"]), "counts": r["counts"]}}
                    for c, r, s in zip(cids, det.rles(), scores)]
    return out


def _load_res(coco: COCO, entries: list[dict]) -> COCO:
    if entries:
        with _quiet():
            return coco.loadRes(entries)
    res = COCO()  # loadRes cannot take an empty list: an empty result set over the same images
    res.dataset = {"images": list(coco.dataset["images"]), "categories": copy.deepcopy(coco.dataset["categories"]),
                   "annotations": []}
    with _quiet():
        res.createIndex()
    return res


def _ap(precision: np.ndarray) -> float | None:
    valid = precision[precision > -1]
    return float(valid.mean()) if valid.size else None


def evaluate_coco(gt: CocoDataset, predictions: Predictions, iou_type: str, coco: COCO | None = None) -> CocoResult:
    coco = coco or gt_coco(gt)
    ev = COCOeval(coco, _load_res(coco, results(predictions, iou_type)), iou_type)
    with _quiet():
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    precision = ev.eval["precision"]  # [T iou, R recall, K class, A area, M maxDets]
    if list(ev.params.catIds) != gt.category_ids:  # COCOeval sorts the ids, as CocoDataset orders its classes
        raise AssertionError(f"COCOeval categories {ev.params.catIds} != {gt.category_ids}")
    iou_thrs = ev.params.iouThrs
    t50, t75 = int(np.argmin(np.abs(iou_thrs - 0.5))), int(np.argmin(np.abs(iou_thrs - 0.75)))
    per_class, curves = {}, {}
    for k, name in enumerate(gt.class_names):  # axis K of `precision` is the class index
        p = precision[:, :, k, 0, -1]
        per_class[name] = {"AP": _ap(p), "AP50": _ap(p[t50]), "AP75": _ap(p[t75])}
        if (p[t50] > -1).any():
            curves[name] = (ev.params.recThrs.copy(), np.clip(p[t50], 0, None))
    stats = [float(s) for s in ev.stats]
    none = lambda v: None if v < 0 else v  # noqa: E731  (COCOeval writes -1 where nothing is defined)
    summary = {"AP": none(stats[0]), "AP50": none(stats[1]), "AP75": none(stats[2]), "AR100": none(stats[8]),
               "per_class": per_class}
    return CocoResult(summary, curves, stats)


def coco_metrics(gt: CocoDataset, predictions: Predictions) -> dict[str, CocoResult]:
    """{"bbox": ..., "segm": ...}; segm uses the box itself for a prediction without a mask."""
    coco = gt_coco(gt)
    return {t: evaluate_coco(gt, predictions, t, coco) for t in ("bbox", "segm")}
