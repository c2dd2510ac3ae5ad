"""Load and check the inputs of the evaluation: a COCO ground truth and a COCO-results predictions file."""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from converters.errors import DatasetError
from converters.io import read_json


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


def rle_string_counts(counts: bytes) -> list[int]:
    """The run lengths of a compressed COCO RLE string (pycocotools' rleFrString, in Python)."""
    out, i, n = [], 0, len(counts)
    while i < n:
        x, k, more = 0, 0, True
        while more:
            if i >= n:
                raise ValueError("RLE counts string ends inside a number")
            c = counts[i] - 48
            if not 0 <= c < 64:
                raise ValueError(f"RLE counts string has a character outside the COCO alphabet ({chr(counts[i])!r})")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            i, k = i + 1, k + 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(out) > 2:
            x += out[-2]
        out.append(x)
    return out


def _check_counts(counts: list[int], height: int, width: int) -> None:
    """pycocotools trusts the counts (a corrupt string can make it loop or write out of bounds): check them first."""
    if any(c < 0 for c in counts) or sum(counts) != height * width:
        raise ValueError(f"RLE counts do not describe a {width}x{height} mask (corrupt or for another image size)")


def union_rle(rles: list[dict], height: int, width: int) -> dict:
    """The union of compressed RLEs; an empty mask when there are none."""
    if not rles:
        return mask_utils.encode(np.asfortranarray(np.zeros((height, width), np.uint8)))
    return mask_utils.merge(rles, intersect=False) if len(rles) > 1 else rles[0]


def to_rle(segmentation, height: int, width: int) -> dict:
    """Compressed RLE (bytes counts) of a COCO segmentation: polygons, compressed or uncompressed RLE."""
    if isinstance(segmentation, list):
        return union_rle(mask_utils.frPyObjects(segmentation, height, width) if segmentation else [], height, width)
    if isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        if list(segmentation["size"]) != [height, width]:
            h, w = segmentation["size"]
            raise ValueError(f"mask is {w}x{h} but the image is {width}x{height}")
        counts = segmentation["counts"]
        if isinstance(counts, list):
            _check_counts([int(c) for c in counts], height, width)
            return mask_utils.frPyObjects(segmentation, height, width)
        counts = counts.encode("ascii") if isinstance(counts, str) else counts
        if not isinstance(counts, bytes):
            raise ValueError("RLE counts is neither a string nor a list")
        _check_counts(rle_string_counts(counts), height, width)
        return {"size": [height, width], "counts": counts}
    raise ValueError("segmentation is neither polygons nor RLE")


def box_rle(bbox: list[float], height: int, width: int) -> dict:
    return mask_utils.frPyObjects([list(map(float, bbox))], height, width)[0]


def _is_id(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_box(value) -> bool:
    return (isinstance(value, list) and len(value) == 4
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value))


def _need(obj: dict, keys: tuple[str, ...], where: str, path: Path) -> None:
    if not isinstance(obj, dict):
        raise DatasetError(f"{path}: {where} is not an object")
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
        if not _is_id(im["id"]):
            raise DatasetError(f"{path}: images[{i}] has id {im['id']!r} (expected an integer)")
        if im["id"] in images:
            raise DatasetError(f"{path}: duplicate image id {im['id']}")
        if not all(_is_id(im[k]) and im[k] > 0 for k in ("height", "width")):
            raise DatasetError(f"{path}: images[{i}] has height/width {im['height']!r}/{im['width']!r} "
                               f"(expected positive integers)")
        images[im["id"]] = GtImage(im["id"], im["file_name"], int(im["height"]), int(im["width"]), bool(im.get("is_good", False)))
        if "is_good" not in im:
            unflagged.add(im["id"])
    categories = {}
    for i, c in enumerate(data["categories"]):
        _need(c, ("id", "name"), f"categories[{i}]", path)
        if not _is_id(c["id"]):
            raise DatasetError(f"{path}: categories[{i}] has id {c['id']!r} (expected an integer)")
        categories[c["id"]] = c["name"]
    for i, ann in enumerate(data["annotations"]):
        _need(ann, ("id", "image_id", "category_id", "bbox", "segmentation"), f"annotations[{i}]", path)
        if not _is_box(ann["bbox"]):
            raise DatasetError(f"{path}: annotation {ann['id']} has bbox {ann['bbox']!r} (expected [x, y, w, h])")
        im = images.get(ann["image_id"]) if _is_id(ann["image_id"]) else None
        if im is None:
            raise DatasetError(f"{path}: annotation {ann['id']} refers to unknown image id {ann['image_id']}")
        if ann["category_id"] not in categories:
            raise DatasetError(f"{path}: annotation {ann['id']} has unknown category id {ann['category_id']}")
        try:
            ann["rle"] = to_rle(ann["segmentation"], im.height, im.width)
        except Exception as exc:  # noqa: BLE001 - pycocotools raises bare Exception on malformed input
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


def image_id_map(pred_path: Path, gt: GroundTruth) -> dict[int, int] | None:
    """Prediction image id -> GT image id from inference's image_ids.json beside predictions.json, matched by the
    image's resolved path (GT: info.image_root + file_name; by file_name only when the GT has no image_root); None
    when there is no such file or it changes no id (predictions made on the GT json keep its ids)."""
    listing = Path(pred_path).with_name("image_ids.json")
    if not listing.is_file():
        return None
    entries = read_json(listing)
    if not isinstance(entries, list):
        raise DatasetError(f"{listing}: expected a list of {{id, file_name, path}}")
    by_name = {im.file_name: im.id for im in gt.images.values()}
    by_path = {(gt.image_root / im.file_name).resolve(): im.id for im in gt.images.values()} if gt.image_root else {}
    mapping = {}
    for e in entries:
        if not isinstance(e, dict) or not _is_id(e.get("id")):
            raise DatasetError(f"{listing}: entry {e!r:.80} has no integer 'id'")
        if by_path:
            found = by_path.get(Path(e["path"]).resolve()) if e.get("path") else None
        else:
            found = by_name.get(e.get("file_name"))
        if found is not None:
            mapping[e["id"]] = found
    same_ids = all(gt.images.get(e["id"]) is not None and gt.images[e["id"]].file_name == e.get("file_name")
                   for e in entries)
    if not mapping and same_ids:
        return None  # predicted on this GT json, images since moved: its ids stand
    if not mapping:
        raise DatasetError(f"{listing}: none of its {len(entries)} images is in {gt.path} (matched by path under "
                           f"info.image_root, else by file_name): predictions and ground truth come from different datasets")
    return None if all(k == v for k, v in mapping.items()) and len(mapping) == len(entries) else mapping


def load_predictions(path: Path, gt: GroundTruth, ids: dict[int, int] | None = None) -> list[Prediction]:
    """predictions.json (COCO results); ids must be those of `gt` (after `ids`, see image_id_map), masks the size
    of their image."""
    path = Path(path)
    data = read_json(path)
    if not isinstance(data, list):
        raise DatasetError(f"{path}: not a COCO results list (expected [{{image_id, category_id, bbox, score, segmentation}}, ...])")
    preds = []
    unknown_images, outside = set(), set()
    for i, p in enumerate(data):
        if not isinstance(p, dict):
            raise DatasetError(f"{path}: entry {i} is not an object")
        _need(p, ("image_id", "category_id", "score"), f"entry {i}", path)
        if "bbox" not in p and "segmentation" not in p:
            raise DatasetError(f"{path}: entry {i} has neither bbox nor segmentation")
        if not _is_id(p["image_id"]):
            raise DatasetError(f"{path}: entry {i} has image_id {p['image_id']!r} (expected an integer)")
        if "bbox" in p and not _is_box(p["bbox"]):
            raise DatasetError(f"{path}: entry {i} has bbox {p['bbox']!r} (expected [x, y, w, h])")
        if ids is not None and p["image_id"] not in ids:
            outside.add(p["image_id"])  # an image of the prediction run that is not in this split
            continue
        image_id = ids[p["image_id"]] if ids is not None else p["image_id"]
        im = gt.images.get(image_id)
        if im is None:
            unknown_images.add(p["image_id"])
            continue
        if not _is_id(p["category_id"]) or p["category_id"] not in gt.categories:
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
        except Exception as exc:  # noqa: BLE001 - pycocotools raises bare Exception on malformed input
            raise DatasetError(f"{path}: entry {i} (image id {p['image_id']}): {exc}") from None
        if len(bbox) != 4:
            raise DatasetError(f"{path}: entry {i} has bbox {p['bbox']!r} (expected [x, y, w, h])")
        preds.append(Prediction(image_id, p["category_id"], bbox, float(score), rle, has_mask))
    if unknown_images:
        shown = ", ".join(map(str, sorted(unknown_images, key=str)[:5]))
        raise DatasetError(f"{path}: {len(unknown_images)} image id(s) not in {gt.path} ({shown}"
                           f"{', ...' if len(unknown_images) > 5 else ''}): predictions and ground truth "
                           f"come from different datasets")
    if outside:
        print(f"warning: {path}: predictions on {len(outside)} image(s) outside {gt.path} ignored "
              f"(images matched through image_ids.json)", file=sys.stderr)
    return preds


def predictions_by_image(preds: list[Prediction]) -> dict[int, list[Prediction]]:
    out: dict[int, list[Prediction]] = {}
    for p in preds:
        out.setdefault(p.image_id, []).append(p)
    return out
