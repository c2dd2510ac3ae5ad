"""Outputs: COCO results entries (RLE masks), label-mask PNGs (0 = background, k = category id), overlay PNGs."""
from __future__ import annotations

import colorsys
from pathlib import Path

import cv2
import numpy as np

from converters.masks import encode_rle


def result_entries(image_id: int, boxes: np.ndarray, scores: np.ndarray, category_ids: np.ndarray,
                   masks: np.ndarray) -> list[dict]:
    """COCO results: image_id, category_id, bbox [x, y, w, h] (original pixels), score, segmentation RLE."""
    out = []
    for (x0, y0, x1, y1), score, cid, mask in zip(boxes.tolist(), scores.tolist(), category_ids.tolist(), masks):
        out.append({
            "image_id": int(image_id), "category_id": int(cid),
            "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
            "score": round(float(score), 5), "segmentation": encode_rle(mask),
        })
    return out


def box_masks(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """(N, H, W) bool masks filling each xyxy box (the pixels whose centres lie inside): --box-only segmentation."""
    masks = np.zeros((len(boxes), height, width), bool)
    for m, (x0, y0, x1, y1) in zip(masks, np.asarray(boxes, np.float64)):
        c0, r0 = max(0, int(np.ceil(x0 - 0.5))), max(0, int(np.ceil(y0 - 0.5)))
        c1, r1 = min(width, int(np.ceil(x1 - 0.5))), min(height, int(np.ceil(y1 - 0.5)))
        m[r0:r1, c0:c1] = True
    return masks


def label_mask(masks: np.ndarray, category_ids: np.ndarray, scores: np.ndarray, height: int, width: int) -> np.ndarray:
    """HxW label image: 0 background, k = category id; where masks overlap the higher score wins."""
    dtype = np.uint8 if len(category_ids) == 0 or int(np.max(category_ids)) < 256 else np.uint16
    label = np.zeros((height, width), dtype)
    for i in np.argsort(scores, kind="stable"):  # ascending: the best is painted last
        label[masks[i]] = category_ids[i]
    return label


def colour(category_id: int) -> tuple[int, int, int]:
    """A fixed, well-separated RGB colour per category id."""
    r, g, b = colorsys.hsv_to_rgb((category_id * 0.618034) % 1.0, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def overlay(image: np.ndarray, boxes: np.ndarray, masks: np.ndarray, category_ids: np.ndarray, scores: np.ndarray,
            names: dict[int, str], alpha: float = 0.45) -> np.ndarray:
    """RGB image with coloured masks, boxes and 'name score' labels drawn on it."""
    out = image.copy()
    for mask, cid in zip(masks, category_ids.tolist()):
        out[mask] = (out[mask] * (1 - alpha) + np.array(colour(cid)) * alpha).astype(np.uint8)
    scale = max(0.35, min(image.shape[:2]) / 700)
    for (x0, y0, x1, y1), cid, score in zip(boxes.tolist(), category_ids.tolist(), scores.tolist()):
        c = colour(cid)
        p0, p1 = (int(round(x0)), int(round(y0))), (int(round(x1)) - 1, int(round(y1)) - 1)
        cv2.rectangle(out, p0, p1, c, max(1, int(round(2 * scale))))
        text = f"{names.get(cid, cid)} {score:.2f}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        ty = p0[1] - 2 if p0[1] - th - base - 2 >= 0 else p0[1] + th + 2
        cv2.rectangle(out, (p0[0], ty - th - base), (p0[0] + tw, ty + base), c, -1)
        cv2.putText(out, text, (p0[0], ty), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return out


def write_png(path: Path, image: np.ndarray) -> None:
    """A label mask (2-D) as is, an RGB image (3-D) converted for OpenCV; raises OSError if OpenCV cannot write."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    if not cv2.imwrite(str(path), data):
        raise OSError(f"{path}: could not write the PNG")
