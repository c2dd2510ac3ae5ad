"""Outputs of a prediction: label-mask PNGs (0 = background, k = category id), overlay PNGs, box masks."""
from __future__ import annotations

import colorsys
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from defect_vision.detections import Detections, encode_masks


def box_rles(boxes: np.ndarray, height: int, width: int) -> list[dict]:
    """RLEs filling each xyxy box (the pixels whose centres lie inside): --box-only segmentation, one box at a time."""
    out = []
    for x0, y0, x1, y1 in np.asarray(boxes, np.float64).reshape(-1, 4):
        m = np.zeros((1, height, width), bool)
        c0, r0 = max(0, int(np.ceil(x0 - 0.5))), max(0, int(np.ceil(y0 - 0.5)))
        c1, r1 = min(width, int(np.ceil(x1 - 0.5))), min(height, int(np.ceil(y1 - 0.5)))
        m[0, r0:r1, c0:c1] = True
        out += encode_masks(m)
    return out


def finish_masks(det: Detections) -> Detections:
    """Set det.rle from the MaskCrops SAM inference left in det.data["mask_crops"] (RLEs from the crops' columns
    only); a no-op for detections that already hold RLEs or dense masks."""
    crops = det.data.get("mask_crops")
    if crops is not None and det.rle is None:
        det.rle = [c.rle() for c in crops]
    return det


def mask_regions(det: Detections) -> list[tuple[tuple[slice, slice], np.ndarray]]:
    """Per detection (image region, bool mask of that region): the crop and its place for MaskCrops, else the
    whole image decoded from the RLE."""
    crops = det.data.get("mask_crops")
    if crops is not None:
        return [(c.region, c.crop) for c in crops]
    whole = (slice(None), slice(None))
    return [(whole, mask_utils.decode(r).astype(bool)) for r in det.rles()] if len(det) else []


def painting_order(det: Detections) -> np.ndarray:
    """Detections from last to first of `Detections.order()`: painted in this order, the first one wins overlaps,
    so the label PNG agrees with predictions.json (ties included)."""
    return det.order()[::-1]


def label_mask(det: Detections, height: int, width: int) -> np.ndarray:
    """HxW label image: 0 background, k = category id; where masks overlap the higher-ranked detection wins."""
    cids = det.category_id
    dtype = np.uint8 if len(cids) == 0 or int(np.max(cids)) < 256 else np.uint16
    label = np.zeros((height, width), dtype)
    regions = mask_regions(det) if len(det) else []
    for i in painting_order(det):
        where, mask = regions[i]
        label[where][mask] = cids[i]
    return label


def colour(category_id: int) -> tuple[int, int, int]:
    """A fixed, well-separated RGB colour per category id."""
    r, g, b = colorsys.hsv_to_rgb((category_id * 0.618034) % 1.0, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def overlay(image: np.ndarray, det: Detections, alpha: float = 0.45) -> np.ndarray:
    """RGB image with coloured masks, boxes and 'name score' labels drawn on it."""
    out = image.copy()
    cids = det.category_id
    regions = mask_regions(det) if len(det) and (det.has_masks or "mask_crops" in det.data) else []
    for i in painting_order(det) if regions else []:
        where, m = regions[i]
        part = out[where]
        part[m] = (part[m] * (1 - alpha) + np.array(colour(int(cids[i]))) * alpha).astype(np.uint8)
    scale = max(0.35, min(image.shape[:2]) / 700)
    for (x0, y0, x1, y1), cid, name, score in zip(det.xyxy.tolist(), cids.tolist(), det.names, det.score.tolist()):
        c = colour(cid)
        p0, p1 = (int(round(x0)), int(round(y0))), (int(round(x1)) - 1, int(round(y1)) - 1)
        cv2.rectangle(out, p0, p1, c, max(1, int(round(2 * scale))))
        text = f"{name} {score:.2f}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        ty = p0[1] - 2 if p0[1] - th - base - 2 >= 0 else p0[1] + th + 2
        cv2.rectangle(out, (p0[0], ty - th - base), (p0[0] + tw, ty + base), c, -1)
        cv2.putText(out, text, (p0[0], ty), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return out


def write_png(path: Path, image: np.ndarray) -> None:
    """A label mask (2-D) as is, an RGB image (3-D) converted for OpenCV. Written with Python's own file I/O, so a
    full disk or a permission problem raises OSError with its errno (OpenCV's imwrite only says False)."""
    data = png_bytes(image, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def png_bytes(image: np.ndarray, name: Path | str = "image") -> bytes:
    """The PNG file write_png writes: a label mask (2-D) as is, an RGB image (3-D) converted for OpenCV."""
    data = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    ok, buf = cv2.imencode(".png", data)
    if not ok:
        raise OSError(f"{name}: OpenCV could not encode the PNG")
    return buf.tobytes()
