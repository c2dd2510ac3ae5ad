"""Load and check the inputs of the evaluation: a COCO ground truth and a COCO-results predictions file."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from converters.errors import DatasetError


@dataclass
class GtImage:
    id: int
    file_name: str
    height: int
    width: int
    is_good: bool
    annotations: list[dict] = field(default_factory=list)  # each with a compressed "rle" (bytes counts) added


@dataclass
class Prediction:
    image_id: int
    category_id: int
    bbox: list[float]  # x, y, w, h
    score: float
    rle: dict  # compressed RLE (bytes counts) of the mask; the box itself when the file has no segmentation
    has_mask: bool


@dataclass
class GroundTruth:
    path: Path
    dataset: dict  # the COCO json, annotations completed with area/iscrowd where missing
    images: dict[int, GtImage]  # by image id, in file order
    categories: dict[int, str]  # id -> name
    image_root: Path | None

    @property
    def class_names(self) -> list[str]:
        return [self.categories[k] for k in sorted(self.categories)]


def read_json(path: Path) -> object:
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: malformed JSON ({exc})") from None


def to_rle(segmentation, height: int, width: int) -> dict:
    """Compressed RLE (bytes counts) of a COCO segmentation: polygons, compressed or uncompressed RLE."""
    if isinstance(segmentation, list):
        if not segmentation:
            return mask_utils.encode(np.asfortranarray(np.zeros((height, width), np.uint8)))
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    if isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        if list(segmentation["size"]) != [height, width]:
            h, w = segmentation["size"]
            raise ValueError(f"mask is {w}x{h} but the image is {width}x{height}")
        if isinstance(segmentation["counts"], list):
            return mask_utils.frPyObjects(segmentation, height, width)
        counts = segmentation["counts"]
        return {"size": [height, width], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    raise ValueError("segmentation is neither polygons nor RLE")


def box_rle(bbox: list[float], height: int, width: int) -> dict:
    return mask_utils.frPyObjects([list(map(float, bbox))], height, width)[0]


def _need(obj: dict, keys: tuple[str, ...], where: str, path: Path) -> None:
    missing = [k for k in keys if k not in obj]
    if missing:
        raise DatasetError(f"{path}: {where} lacks {', '.join(missing)}")


def load_ground_truth(path: Path) -> GroundTruth:
    """The converters' instances_<split>.json; DatasetError naming the file on anything malformed."""
    path = Path(path)
    data = read_json(path)
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations", "categories")):
        raise DatasetError(f"{path}: not a COCO ground truth (needs lists 'images', 'annotations', 'categories')")
    images: dict[int, GtImage] = {}
    unflagged = set()
    for i, im in enumerate(data["images"]):
        _need(im, ("id", "file_name", "height", "width"), f"images[{i}]", path)
        if im["id"] in images:
            raise DatasetError(f"{path}: duplicate image id {im['id']}")
        images[im["id"]] = GtImage(im["id"], im["file_name"], int(im["height"]), int(im["width"]), bool(im.get("is_good", False)))
        if "is_good" not in im:
            unflagged.add(im["id"])
    categories = {}
    for i, c in enumerate(data["categories"]):
        _need(c, ("id", "name"), f"categories[{i}]", path)
        categories[c["id"]] = c["name"]
    for i, ann in enumerate(data["annotations"]):
        _need(ann, ("id", "image_id", "category_id", "bbox", "segmentation"), f"annotations[{i}]", path)
        im = images.get(ann["image_id"])
        if im is None:
            raise DatasetError(f"{path}: annotation {ann['id']} refers to unknown image id {ann['image_id']}")
        if ann["category_id"] not in categories:
            raise DatasetError(f"{path}: annotation {ann['id']} has unknown category id {ann['category_id']}")
        try:
            ann["rle"] = to_rle(ann["segmentation"], im.height, im.width)
        except (ValueError, TypeError) as exc:
            raise DatasetError(f"{path}: annotation {ann['id']}: {exc}") from None
        ann.setdefault("iscrowd", 0)
        ann.setdefault("area", float(mask_utils.area(ann["rle"])))
        im.annotations.append(ann)
    for image_id in unflagged:  # no is_good flag: an image without instances counts as good
        images[image_id].is_good = not images[image_id].annotations
    info = data.get("info") if isinstance(data.get("info"), dict) else {}
    root = Path(info["image_root"]) if info.get("image_root") else None
    clean = {k: v for k, v in data.items() if k != "annotations"}
    clean["annotations"] = [{k: v for k, v in a.items() if k != "rle"} for a in data["annotations"]]
    return GroundTruth(path, clean, images, categories, root)


def load_predictions(path: Path, gt: GroundTruth) -> list[Prediction]:
    """predictions.json (COCO results); ids must be those of `gt`, masks the size of their image."""
    path = Path(path)
    data = read_json(path)
    if not isinstance(data, list):
        raise DatasetError(f"{path}: not a COCO results list (expected [{{image_id, category_id, bbox, score, segmentation}}, ...])")
    preds = []
    unknown_images = set()
    for i, p in enumerate(data):
        if not isinstance(p, dict):
            raise DatasetError(f"{path}: entry {i} is not an object")
        _need(p, ("image_id", "category_id", "score"), f"entry {i}", path)
        if "bbox" not in p and "segmentation" not in p:
            raise DatasetError(f"{path}: entry {i} has neither bbox nor segmentation")
        im = gt.images.get(p["image_id"])
        if im is None:
            unknown_images.add(p["image_id"])
            continue
        if p["category_id"] not in gt.categories:
            raise DatasetError(f"{path}: entry {i} has category id {p['category_id']}, unknown to {gt.path.name} "
                               f"(known: {sorted(gt.categories)})")
        score = p["score"]
        if not isinstance(score, (int, float)) or not math.isfinite(score):
            raise DatasetError(f"{path}: entry {i} has score {score!r} (expected a finite number)")
        try:
            if p.get("segmentation"):
                rle, has_mask = to_rle(p["segmentation"], im.height, im.width), True
            else:
                rle, has_mask = box_rle(p["bbox"], im.height, im.width), False
            bbox = [float(v) for v in p["bbox"]] if "bbox" in p else mask_utils.toBbox(rle).tolist()
        except (ValueError, TypeError, IndexError) as exc:
            raise DatasetError(f"{path}: entry {i} (image id {p['image_id']}): {exc}") from None
        if len(bbox) != 4:
            raise DatasetError(f"{path}: entry {i} has bbox {p['bbox']!r} (expected [x, y, w, h])")
        preds.append(Prediction(p["image_id"], p["category_id"], bbox, float(score), rle, has_mask))
    if unknown_images:
        shown = ", ".join(map(str, sorted(unknown_images, key=str)[:5]))
        raise DatasetError(f"{path}: {len(unknown_images)} image id(s) not in {gt.path} ({shown}"
                           f"{', ...' if len(unknown_images) > 5 else ''}): predictions and ground truth "
                           f"come from different datasets")
    return preds


def predictions_by_image(preds: list[Prediction]) -> dict[int, list[Prediction]]:
    out: dict[int, list[Prediction]] = {}
    for p in preds:
        out.setdefault(p.image_id, []).append(p)
    return out
