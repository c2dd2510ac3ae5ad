"""Per-instance shapes as labelling tools export them (polygons, COCO RLE, boxes, Label Studio brush RLE, CVAT mask
RLE) and their one decoder: a Sample carries its shapes, `read_sample` turns each into ONE Instance (a COCO
annotation stays one instance even when it is a multi-polygon), decoded only then (per image: large exports stream).
"""
from __future__ import annotations

import contextlib
import io
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from defect_vision.data.records import GOOD, Instance
from defect_vision.errors import DatasetError

# kind -> its data
#   polygon    list of rings [x0, y0, x1, y1, ...] in pixels of the image (COCO polygons; a ring needs 3 points)
#   rle        a COCO RLE {"size": [h, w], "counts": str | bytes | [int, ...]} (compressed or uncompressed)
#   box        (x, y, w, h) in pixels, floats: a box-only label (no mask target)
#   brush      Label Studio brush RLE (list of ints): RGBA of the original image, decoded by label-studio-converter
#   cvat_mask  (counts, left, top, width, height): CVAT's mask RLE, row-major over its box, background run first
KINDS = ("polygon", "rle", "box", "brush", "cvat_mask")
OUTSIDE = "shapes reaching outside their image (clipped)"
EMPTY = "shapes with no pixel inside their image (dropped)"


@dataclass(frozen=True, eq=False)
class Shape:
    """One labelled instance: its class, the kind of shape and the shape (see KINDS), and where it came from (for a
    warning: 'export.json annotation 12')."""

    category: str
    kind: str
    data: object
    where: str = ""


def majority_label(categories: Sequence[str]) -> str:
    """An image's defect type: the most frequent class of its instances (ties: the first by name); GOOD for none."""
    if not categories:
        return GOOD
    counts = Counter(categories)
    return min(counts, key=lambda c: (-counts[c], c))


def _polygon_mask(rings: list, height: int, width: int) -> np.ndarray:
    from pycocotools import mask as mask_utils

    rings = [[float(v) for v in r] for r in rings if len(r) >= 6 and len(r) % 2 == 0]
    if not rings:
        return np.zeros((height, width), bool)
    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(rings, height, width))).astype(bool)


def _box_bounds(box, height: int, width: int) -> tuple[int, int, int, int]:
    """The pixels a float box (x, y, w, h) covers, clipped: x0, y0, x1, y1 (exclusive); edges within 0.01 px of a
    pixel edge are taken as on it (normalised YOLO boxes keep 6 decimals)."""
    x, y, w, h = (float(v) for v in box)
    x0, y0 = max(0, math.floor(x + 0.01)), max(0, math.floor(y + 0.01))
    x1, y1 = min(width, math.ceil(x + w - 0.01)), min(height, math.ceil(y + h - 0.01))
    return x0, y0, max(x0, x1), max(y0, y1)


def brush_decode(rle: list[int], height: int, width: int) -> np.ndarray:
    """A Label Studio brush RLE as a bool HxW mask (alpha > 0), decoded by Label Studio's own converter (label-studio-converter)."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # its package prints a missing optional module
            from label_studio_converter.brush import decode_rle
    except ImportError:
        raise DatasetError("Label Studio brush labels need label-studio-converter (pip install 'defect-vision[labelling]')") from None
    flat = decode_rle(bytes(int(v) & 0xFF for v in rle))
    if flat.size != height * width * 4:
        raise ValueError(f"brush RLE holds {flat.size} values, not {height}x{width}x4 (original_width/height)")
    return flat.reshape(height, width, 4)[:, :, 3] > 0


def cvat_mask_decode(data, height: int, width: int) -> np.ndarray:
    """CVAT's mask RLE (counts over its box of width x height at left, top, row-major, background first)."""
    counts, left, top, w, h = data
    counts = np.asarray(counts, np.int64)
    if counts.sum() != w * h or (counts < 0).any():
        raise ValueError(f"mask RLE sums to {counts.sum()}, not its box {w}x{h}")
    crop = np.repeat(np.arange(len(counts)) % 2 == 1, counts).reshape(h, w)
    full = np.zeros((height, width), bool)
    x0, y0, x1, y1 = max(left, 0), max(top, 0), min(left + w, width), min(top + h, height)
    if x1 > x0 and y1 > y0:
        full[y0:y1, x0:x1] = crop[y0 - top : y1 - top, x0 - left : x1 - left]
    return full


def shape_mask(shape: Shape, height: int, width: int) -> np.ndarray:
    """Bool HxW mask of a shape, clipped to the image (a box: the filled box). ValueError on a malformed shape."""
    kind, data = shape.kind, shape.data
    if kind == "polygon":
        return _polygon_mask(data, height, width)
    if kind == "rle":
        from defect_vision.masks import decode_rle

        size = [int(v) for v in data["size"]]
        if size != [height, width]:
            raise ValueError(f"RLE of size {size[1]}x{size[0]} for an image of {width}x{height}")
        return decode_rle(data)
    if kind == "box":
        x0, y0, x1, y1 = _box_bounds(data, height, width)
        full = np.zeros((height, width), bool)
        full[y0:y1, x0:x1] = True
        return full
    if kind == "brush":
        return brush_decode(data, height, width)
    if kind == "cvat_mask":
        return cvat_mask_decode(data, height, width)
    raise ValueError(f"unknown shape kind {kind!r} (known: {', '.join(KINDS)})")


def reaches_outside(shape: Shape, height: int, width: int, tol: float = 0.5) -> bool:
    """True when a polygon or box has coordinates outside the image (beyond `tol` pixels), or a CVAT mask's box does."""
    if shape.kind == "polygon":
        pts = [np.asarray(r, float).reshape(-1, 2) for r in shape.data if len(r) >= 2 and len(r) % 2 == 0]
        return any(((p < -tol) | (p > np.array([width, height]) + tol)).any() for p in pts)
    if shape.kind == "box":
        x, y, w, h = (float(v) for v in shape.data)
        return x < -tol or y < -tol or x + w > width + tol or y + h > height + tol
    if shape.kind == "cvat_mask":
        _, left, top, w, h = shape.data
        return left < 0 or top < 0 or left + w > width or top + h > height
    return False


def shape_instance(shape: Shape, height: int, width: int) -> Instance | None:
    """The one instance of a shape (its tight box, area and crop; a box: the box, flagged box_only), None when no
    pixel of it lies inside the image."""
    mask = shape_mask(shape, height, width)
    if shape.kind == "box":
        x0, y0, x1, y1 = _box_bounds(shape.data, height, width)
        if x1 <= x0 or y1 <= y0:
            return None
        return Instance(shape.category, (x0, y0, x1 - x0, y1 - y0), (x1 - x0) * (y1 - y0),
                        np.ones((y1 - y0, x1 - x0), bool), (height, width), box_only=True)
    x, y, w, h = cv2.boundingRect(mask.view(np.uint8))
    if w == 0 or h == 0:
        return None
    crop = np.ascontiguousarray(mask[y : y + h, x : x + w])
    return Instance(shape.category, (x, y, w, h), int(np.count_nonzero(crop)), crop, (height, width))


def shapes_to_instances(shapes: Sequence[Shape], height: int, width: int, image: str
                        ) -> tuple[list[Instance], list[tuple[str, str]]]:
    """Each shape's instance, in order, and the notes (kind, where) of what was clipped or dropped. DatasetError
    naming the shape when one is malformed."""
    out, notes = [], []
    for s in shapes:
        where = f"{s.where} ({image})" if s.where else image
        try:
            inst = shape_instance(s, height, width)
        except DatasetError:
            raise
        except Exception as exc:  # noqa: BLE001 - pycocotools raises bare Exception on malformed input
            raise DatasetError(f"{where}: bad {s.kind} ({exc.__class__.__name__}: {exc})") from None
        if inst is None:
            notes.append((EMPTY, where))
            continue
        if reaches_outside(s, height, width):
            notes.append((OUTSIDE, where))
        out.append(inst)
    return out, notes
