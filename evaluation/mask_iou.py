"""Mask IoU: per instance (one-to-one matching by IoU), per image (union vs union), per class, and on good images."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pycocotools import mask as mask_utils
from scipy.optimize import linear_sum_assignment

from evaluation.data import GtImage, Prediction, union_rle


@dataclass
class InstanceIoU:
    image_id: int
    annotation_id: int
    category_id: int
    iou: float  # 0 when no prediction was matched
    matched_category_id: int | None  # category of the matched prediction


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


def image_ious(image: GtImage, preds: list[Prediction]) -> tuple[ImageIoU, list[InstanceIoU]]:
    """IoU figures of one image: class-agnostic matching (classification is measured by the COCO AP)."""
    gt_rles = [a["rle"] for a in image.annotations]
    pred_rles = [p.rle for p in preds]
    gt_union = union_rle(gt_rles, image.height, image.width)
    pred_union = union_rle(pred_rles, image.height, image.width)
    gt_px = int(mask_utils.area(gt_union))
    pred_px = int(mask_utils.area(pred_union))
    inter = int(mask_utils.area(mask_utils.merge([gt_union, pred_union], intersect=True))) if gt_px and pred_px else 0
    union = gt_px + pred_px - inter
    ious = iou_matrix(pred_rles, gt_rles)
    pairs = match_instances(ious)
    by_gt = {c: r for r, c in pairs}
    instances = [
        InstanceIoU(image.id, a["id"], a["category_id"], float(ious[by_gt[j], j]) if j in by_gt else 0.0,
                    preds[by_gt[j]].category_id if j in by_gt else None)
        for j, a in enumerate(image.annotations)
    ]
    summary = ImageIoU(image.id, image.file_name, image.is_good, inter / union if gt_px else None,
                       gt_px, pred_px, pred_px - inter, len(gt_rles), len(preds), len(preds) - len(pairs),
                       image.height * image.width)
    return summary, instances


def class_image_iou(image: GtImage, preds: list[Prediction], category_id: int) -> float | None:
    """Union IoU restricted to one class (its predictions vs its GT); None when the image has no GT of it."""
    gt = [a["rle"] for a in image.annotations if a["category_id"] == category_id]
    if not gt:
        return None
    pr = [p.rle for p in preds if p.category_id == category_id]
    if not pr:
        return 0.0
    g, p = union_rle(gt, image.height, image.width), union_rle(pr, image.height, image.width)
    return float(mask_utils.iou([p], [g], [0])[0][0])


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def summarize(images: list[ImageIoU], instances: list[InstanceIoU], class_images: dict[int, list[float]],
              categories: dict[int, str]) -> dict:
    """The `mask_iou` block of metrics.json."""
    defect = [im for im in images if im.iou is not None]
    good = [im for im in images if im.is_good]
    per_class = {}
    for cid, name in sorted(categories.items()):
        vals = [i.iou for i in instances if i.category_id == cid]
        per_class[name] = {
            "mean_instance": _mean(vals),
            "mean_image": _mean(class_images.get(cid, [])),
            "instances": len(vals),
            "detected": sum(v > 0 for v in vals),
            "correct_class": sum(i.matched_category_id == cid for i in instances if i.category_id == cid),
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
