"""Mask IoU: per instance (one-to-one matching by IoU), per image (union vs union), per class, and on good images."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pycocotools import mask as mask_utils
from scipy.optimize import linear_sum_assignment

from defect_vision.coco import union_rle
from defect_vision.detections import Detections


@dataclass
class InstanceIoU:
    image_id: int
    annotation_id: int
    class_id: int  # class index of the GT instance
    iou: float  # 0 when no prediction was matched
    matched_class_id: int | None  # class index of the matched prediction


@dataclass
class ImageIoU:
    image_id: int
    file_name: str
    is_good: bool
    iou: float | None  # union of predicted masks vs union of GT; None on images without GT pixels
    gt_pixels: int
    pred_pixels: int
    fp_pixels: int  # predicted pixels outside the GT
    n_gt: int
    n_pred: int
    unmatched_predictions: int  # predictions matched to no GT instance
    pixels: int  # image area


def iou_matrix(pred_rles: list[dict], gt_rles: list[dict]) -> np.ndarray:
    """IoU of every prediction (rows) with every GT instance (columns), by pycocotools."""
    if not pred_rles or not gt_rles:
        return np.zeros((len(pred_rles), len(gt_rles)))
    return np.asarray(mask_utils.iou(pred_rles, gt_rles, [0] * len(gt_rles))).reshape(len(pred_rles), len(gt_rles))


def match_instances(ious: np.ndarray) -> list[tuple[int, int]]:
    """One-to-one (prediction, GT) pairs maximising the total IoU (Hungarian); pairs with IoU 0 are dropped."""
    if ious.size == 0:
        return []
    rows, cols = linear_sum_assignment(-ious)
    return [(int(r), int(c)) for r, c in zip(rows, cols) if ious[r, c] > 0]


def image_ious(gt: Detections, pred: Detections) -> tuple[ImageIoU, list[InstanceIoU]]:
    """IoU figures of one image (`gt` carries the image): class-agnostic matching (classification is measured by
    the COCO AP)."""
    im = gt.image
    gt_rles, pred_rles = gt.rles(), pred.rles()
    gt_union = union_rle(gt_rles, im.height, im.width)
    pred_union = union_rle(pred_rles, im.height, im.width)
    gt_px = int(mask_utils.area(gt_union))
    pred_px = int(mask_utils.area(pred_union))
    inter = int(mask_utils.area(mask_utils.merge([gt_union, pred_union], intersect=True))) if gt_px and pred_px else 0
    union = gt_px + pred_px - inter
    ious = iou_matrix(pred_rles, gt_rles)
    pairs = match_instances(ious)
    by_gt = {c: r for r, c in pairs}
    ann_ids = gt.data.get("annotation_id", np.arange(1, len(gt) + 1))
    instances = [
        InstanceIoU(im.id, int(ann_ids[j]), int(gt.class_id[j]), float(ious[by_gt[j], j]) if j in by_gt else 0.0,
                    int(pred.class_id[by_gt[j]]) if j in by_gt else None)
        for j in range(len(gt))
    ]
    summary = ImageIoU(im.id, im.file_name, bool(im.is_good), inter / union if gt_px else None,
                       gt_px, pred_px, pred_px - inter, len(gt), len(pred), len(pred) - len(pairs),
                       im.height * im.width)
    return summary, instances


def class_image_iou(gt: Detections, pred: Detections, class_id: int) -> float | None:
    """Union IoU restricted to one class (its predictions vs its GT); None when the image has no GT of it."""
    g = gt[gt.class_id == class_id].rles()
    if not g:
        return None
    p = pred[pred.class_id == class_id].rles()
    if not p:
        return 0.0
    h, w = gt.image.height, gt.image.width
    return float(mask_utils.iou([union_rle(p, h, w)], [union_rle(g, h, w)], [0])[0][0])


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def summarize(images: list[ImageIoU], instances: list[InstanceIoU], class_images: dict[int, list[float]],
              class_names: list[str]) -> dict:
    """The `mask_iou` block of metrics.json (`class_images`: class index -> per-image class IoUs)."""
    defect = [im for im in images if im.iou is not None]
    good = [im for im in images if im.is_good]
    per_class = {}
    for k, name in enumerate(class_names):
        vals = [i.iou for i in instances if i.class_id == k]
        per_class[name] = {
            "mean_instance": _mean(vals),
            "mean_image": _mean(class_images.get(k, [])),
            "instances": len(vals),
            "detected": sum(v > 0 for v in vals),
            "correct_class": sum(i.matched_class_id == k for i in instances if i.class_id == k),
        }
    return {
        "mean_instance": _mean([i.iou for i in instances]),
        "mean_image": _mean([im.iou for im in defect]),
        "per_class": per_class,
        "instances": len(instances),
        "defect_images": len(defect),
        "unmatched_predictions": sum(im.unmatched_predictions for im in images),
        "good_images": len(good),
        "good_fp_images": sum(im.pred_pixels > 0 for im in good),
        "good_fp_predictions": sum(im.n_pred for im in good),
        # IoU convention on a good image: 1 when nothing is predicted (empty vs empty), 0 otherwise
        "mean_good": _mean([float(im.pred_pixels == 0) for im in good]),
        "good_fp_pixel_fraction": _mean([im.fp_pixels / im.pixels for im in good]),
    }


def instance_iou_values(instances: list[InstanceIoU]) -> np.ndarray:
    return np.array([i.iou for i in instances], float)
