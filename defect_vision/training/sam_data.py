"""The SAM prompts JSON of the converters (prompts_<split>.json) as Detections, box jitter, and training targets."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from defect_vision.coco import Categories, to_rle
from defect_vision.detections import Detections, ImageInfo
from defect_vision.errors import DatasetError
from defect_vision.io import complete_pending, read_json
from defect_vision.models.sam_family import padded_target

CONVERT_HINT = "write it with `defect-vision convert --category C` or converters/mvtec_to_sam.py"


@dataclass
class PromptSet(Categories):
    """One prompts_<split>.json: per image a Detections (xyxy = the box prompts, rle = the GT masks, score 1,
    data["annotation_id"], data["points"] (P, 2) and data["point_labels"] (P,) per instance). Box-only instances
    (no mask target) are left out."""

    path: Path
    info: dict
    categories: list[dict]  # sorted by id: class index k is categories[k]
    images: list[Detections]

    @property
    def category(self) -> str:
        return str(self.info.get("category", ""))

    @property
    def with_instances(self) -> list[Detections]:
        """Images that have at least one defect instance (good images have nothing to prompt)."""
        return [det for det in self.images if len(det)]

    @property
    def num_instances(self) -> int:
        return sum(len(det) for det in self.images)


def _instance(raw: dict, height: int, width: int, where: str) -> tuple:
    """(box, category id, annotation id, points, labels, rle) of one instance entry, checked."""
    try:
        box = [float(v) for v in raw["box"]]
        points = np.array([[float(x), float(y)] for x, y in raw.get("points", [])], np.float64).reshape(-1, 2)
        labels = np.array([int(v) for v in raw.get("point_labels", [1] * len(points))], np.int64)
        if not (len(box) == 4 and box[2] > box[0] and box[3] > box[1]):
            raise ValueError(f"box {raw['box']} must be [x0, y0, x1, y1] with x1 > x0, y1 > y0")
        if len(labels) != len(points):
            raise ValueError(f"{len(points)} points but {len(labels)} point_labels (one label per point)")
        rle = to_rle(raw["mask"], height, width)
        return box, int(raw["category_id"]), int(raw.get("annotation_id", 0)), points, labels, rle
    except (KeyError, TypeError, ValueError) as exc:
        raise DatasetError(f"{where}: bad instance ({exc.__class__.__name__}: {exc})") from None


def _image(raw: dict, root: Path, categories: list[dict], path: Path) -> Detections:
    where = f"{path}: image {raw.get('id')} ({raw.get('file_name')})"
    height, width = int(raw["height"]), int(raw["width"])
    rows = [_instance(r, height, width, where) for r in raw.get("instances", []) if not r.get("box_only")]
    extra = {k: v for k, v in raw.items() if k not in ("id", "file_name", "height", "width", "is_good", "instances")}
    image = ImageInfo(int(raw["id"]), str(raw["file_name"]), height, width, (root / raw["file_name"]).resolve(),
                      bool(raw["is_good"]) if "is_good" in raw else not rows, extra)
    names, cat_ids = [str(c["name"]) for c in categories], [int(c["id"]) for c in categories]
    det = Detections.empty(class_names=names, category_ids=cat_ids)
    try:
        class_id = det.class_of([r[1] for r in rows])
    except KeyError as exc:
        raise DatasetError(f"{where}: unknown category id {exc} (known: {cat_ids})") from None
    return Detections(
        np.array([r[0] for r in rows], np.float64).reshape(-1, 4), class_id, np.ones(len(rows)), rle=[r[5] for r in rows],
        data={"annotation_id": np.array([r[2] for r in rows], np.int64), "points": [r[3] for r in rows],
              "point_labels": [r[4] for r in rows]},
        image=image, class_names=names, category_ids=cat_ids)


def load_prompts(path: Path, image_root: Path | None = None) -> PromptSet:
    """Read a prompts JSON; images resolve against `image_root` or the file's `info.image_root`."""
    path = Path(path)
    complete_pending(path)  # an export's commit in progress: completed (or refused) before reading
    if not path.exists():
        raise DatasetError(f"{path}: no such prompts file ({CONVERT_HINT})")
    data = read_json(path, "SAM prompts")
    try:
        info = data.get("info") or {}
        categories = sorted((dict(c) for c in data.get("categories", [])), key=lambda c: int(c["id"]))
        root = Path(image_root or info["image_root"])
        images = [_image(raw, root, categories, path) for raw in data["images"]]
        box_only = sum(bool(i.get("box_only")) for raw in data["images"] for i in raw.get("instances", []))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DatasetError(f"{path}: not a SAM prompts file (missing or bad field {exc})") from None
    if box_only and not any(len(det) for det in images):
        raise DatasetError(f"{path}: no instance has a mask ({box_only} are labelled with boxes only): SAM trains "
                           "on mask targets (label some defects with polygons or masks)")
    return PromptSet(path, info, categories, images)


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
    """A full-size mask in the frame of SAM's low-res logits (defect_vision.models.sam_family.padded_target)."""
    return padded_target(mask, img_size, low)


def padded_points(det: Detections) -> tuple[np.ndarray, np.ndarray]:
    """(N, P, 2) coordinates and (N, P) labels of data["points"] / data["point_labels"], padded with label -1
    (SAM's 'not a point')."""
    points, labels = det.data["points"], det.data["point_labels"]
    p = max((len(pts) for pts in points), default=0)
    coords = np.zeros((len(det), max(p, 1), 2), np.float32)
    out = -np.ones((len(det), max(p, 1)), np.int64)
    for k, (pts, lab) in enumerate(zip(points, labels)):
        if len(pts):
            coords[k, : len(pts)] = pts
            out[k, : len(pts)] = lab
    return coords, out
