"""Drawing detections on an image (OpenCV): predicted masks tinted red, ground truth outlined green, boxes yellow."""
from __future__ import annotations

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from defect_vision.coco import union_rle
from defect_vision.detections import Detections


def tint_and_outline(image: np.ndarray, pred: np.ndarray, gt: np.ndarray, thick: int) -> np.ndarray:
    """RGB copy of `image` with the predicted pixels tinted red and the ground truth outlined green."""
    out = image.astype(np.float32)
    out[pred] = 0.55 * out[pred] + 0.45 * np.array([255, 0, 0], np.float32)
    out = out.astype(np.uint8)
    contours, _ = cv2.findContours(gt.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, contours, -1, (0, 255, 0), thick)
    return out


def union_mask(det: Detections, height: int, width: int) -> np.ndarray:
    """The union of the detections' masks as a bool HxW array."""
    return mask_utils.decode(union_rle(det.rles(), height, width)).astype(bool)


def overlay(image: np.ndarray, gt: Detections, pred: Detections) -> np.ndarray:
    """Predicted masks tinted red, GT outlines green, predicted boxes yellow with class name and score."""
    h, w = gt.image.height, gt.image.width
    thick = max(1, round(max(h, w) / 256))
    out = tint_and_outline(image, union_mask(pred, h, w), union_mask(gt, h, w), thick)
    for (x, y, bw, bh), name, score in zip(pred.xywh.tolist(), pred.names, pred.score.tolist()):
        x, y, bw, bh = (round(v) for v in (x, y, bw, bh))
        cv2.rectangle(out, (x, y), (x + bw - 1, y + bh - 1), (255, 255, 0), thick)
        cv2.putText(out, f"{name} {score:.2f}", (x, max(y - 3, 10 * thick)), cv2.FONT_HERSHEY_SIMPLEX, 0.35 * thick,
                    (255, 255, 0), thick)
    return out
