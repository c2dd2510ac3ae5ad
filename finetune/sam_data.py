"""The SAM prompts JSON of the converters (prompts_<split>.json) as records, box jitter, and training targets."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from segment_anything.utils.transforms import ResizeLongestSide

from converters.errors import DatasetError
from converters.masks import decode_rle


@dataclass
class SamInstance:
    annotation_id: int
    category_id: int
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in original image pixels
    points: list[tuple[float, float]]
    point_labels: list[int]  # 1 positive, 0 negative
    rle: dict  # compressed COCO RLE of the full-size mask

    def mask(self) -> np.ndarray:
        return decode_rle(self.rle)


@dataclass
class SamImage:
    id: int
    file_name: str
    path: Path  # info.image_root / file_name
    height: int
    width: int
    instances: list[SamInstance] = field(default_factory=list)


@dataclass
class PromptSet:
    """One prompts_<split>.json."""

    path: Path
    category: str
    categories: list[dict]
    images: list[SamImage]

    @property
    def with_instances(self) -> list[SamImage]:
        """Images that have at least one defect instance (good images have nothing to prompt)."""
        return [im for im in self.images if im.instances]

    @property
    def num_instances(self) -> int:
        return sum(len(im.instances) for im in self.images)


def _instance(raw: dict, where: str) -> SamInstance:
    try:
        box = tuple(float(v) for v in raw["box"])
        points = [(float(x), float(y)) for x, y in raw.get("points", [])]
        labels = [int(v) for v in raw.get("point_labels", [1] * len(points))]
        rle = raw["mask"]
        ok = len(box) == 4 and box[2] > box[0] and box[3] > box[1] and len(labels) == len(points) and "counts" in rle
    except (KeyError, TypeError, ValueError) as exc:
        raise DatasetError(f"{where}: bad instance ({exc.__class__.__name__}: {exc})") from None
    if not ok:
        raise DatasetError(f"{where}: bad instance (box must be [x0, y0, x1, y1] with x1 > x0, y1 > y0; one label per point; mask RLE)")
    return SamInstance(int(raw.get("annotation_id", 0)), int(raw.get("category_id", 0)), box, points, labels, rle)


def load_prompts(path: Path, image_root: Path | None = None) -> PromptSet:
    """Read a prompts JSON; images resolve against `image_root` or the file's `info.image_root`."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such prompts file (write it with converters/mvtec_to_sam.py)")
    try:
        data = json.loads(path.read_text())
        info = data.get("info", {})
        root = Path(image_root or info["image_root"])
        images = []
        for raw in data["images"]:
            where = f"{path}: image {raw.get('id')} ({raw.get('file_name')})"
            insts = [_instance(r, where) for r in raw.get("instances", [])]
            images.append(SamImage(int(raw["id"]), raw["file_name"], root / raw["file_name"], int(raw["height"]), int(raw["width"]), insts))
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DatasetError(f"{path}: not a SAM prompts file (missing or bad field {exc})") from None
    return PromptSet(path, str(info.get("category", "")), data.get("categories", []), images)


def jitter_boxes(boxes: np.ndarray, height: int, width: int, rng: np.random.Generator,
                 frac: float = 0.1, max_px: float = 20.0) -> np.ndarray:
    """Noisy xyxy boxes as in the SAM paper: per-coordinate noise with std = frac x box side, clipped to
    +-max_px pixels; the result stays inside the image and keeps at least one pixel of width and height."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    side = np.concatenate([boxes[:, 2:] - boxes[:, :2]] * 2, axis=1)  # w, h, w, h
    noise = np.clip(rng.normal(size=boxes.shape) * frac * side, -max_px, max_px)
    out = boxes + noise
    out[:, [0, 2]] = np.clip(out[:, [0, 2]], 0, width)
    out[:, [1, 3]] = np.clip(out[:, [1, 3]], 0, height)
    x0, x1 = np.minimum(out[:, 0], out[:, 2]), np.maximum(out[:, 0], out[:, 2])
    y0, y1 = np.minimum(out[:, 1], out[:, 3]), np.maximum(out[:, 1], out[:, 3])
    x0, y0 = np.minimum(x0, width - 1), np.minimum(y0, height - 1)
    x1, y1 = np.maximum(x1, x0 + 1), np.maximum(y1, y0 + 1)
    return np.stack([x0, y0, x1, y1], axis=1)


def lowres_target(mask: np.ndarray, img_size: int, low: int) -> np.ndarray:
    """A full-size mask in the frame of SAM's low-res logits (low x low, 4x the embedding grid): resized as
    ResizeLongestSide does, padded bottom/right to img_size like Sam.preprocess, then area-averaged to
    low x low (soft values in [0, 1])."""
    h, w = mask.shape
    newh, neww = ResizeLongestSide.get_preprocess_shape(h, w, img_size)
    frame = np.zeros((img_size, img_size), np.float32)
    frame[:newh, :neww] = cv2.resize(mask.astype(np.float32), (neww, newh), interpolation=cv2.INTER_LINEAR)
    return cv2.resize(frame, (low, low), interpolation=cv2.INTER_AREA)


def padded_points(instances: list[SamInstance]) -> tuple[np.ndarray, np.ndarray]:
    """(N, P, 2) coordinates and (N, P) labels, padded with label -1 (SAM's 'not a point')."""
    p = max((len(i.points) for i in instances), default=0)
    coords = np.zeros((len(instances), max(p, 1), 2), np.float32)
    labels = -np.ones((len(instances), max(p, 1)), np.int64)
    for k, inst in enumerate(instances):
        if inst.points:
            coords[k, : len(inst.points)] = inst.points
            labels[k, : len(inst.points)] = inst.point_labels
    return coords, labels
