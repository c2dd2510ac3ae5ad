"""COCO I/O in one module, symmetric: `load_coco`/`save_coco` for datasets (instances json) and
`load_results`/`save_results` for detection results, all as the one record (defect_vision.detections).

Every malformed entry is a DatasetError naming the file and the entry. Class indices are the categories sorted by
id (any ids: real COCO files need not number them 1..K); `Detections.category_id` maps them back.
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from defect_vision.detections import Detections, ImageInfo
from defect_vision.errors import DatasetError
from defect_vision.io import atomic_write_text, complete_pending, read_json


class Categories:
    """Class names and COCO category ids of a `categories` list sorted by id (class index k = categories[k])."""

    categories: list[dict]

    @property
    def class_names(self) -> list[str]:
        return [str(c["name"]) for c in self.categories]

    @property
    def category_ids(self) -> list[int]:
        return [int(c["id"]) for c in self.categories]


@dataclass
class CocoDataset(Categories):
    """A COCO instances file: its images, their ground truth as Detections (score 1, RLE masks, annotation ids in
    data["annotation_id"]) and its categories."""

    images: list[ImageInfo]  # in file order
    detections: dict[int, Detections]  # image id -> ground truth
    categories: list[dict]  # the category entries (id, name, prompt, supercategory, ...), sorted by id
    info: dict = field(default_factory=dict)
    path: Path | None = None

    @property
    def prompts(self) -> list[str]:
        """Per class: its `prompt`, else its name with '_' -> ' '."""
        return [str(c.get("prompt") or str(c["name"]).replace("_", " ")) for c in self.categories]

    @property
    def image_root(self) -> Path | None:
        root = self.info.get("image_root")
        return Path(root) if root else None

    def image(self, image_id: int) -> ImageInfo:
        return self._by_id[image_id]

    def __post_init__(self) -> None:
        self._by_id = {im.id: im for im in self.images}

    def ground_truth(self, image_id: int) -> Detections:
        return self.detections[image_id]

    def to_dict(self) -> dict:
        """The COCO json (segmentation as RLE with str counts), e.g. for pycocotools' COCO()."""
        images, anns = [], []
        for im in self.images:
            images.append({"id": im.id, "file_name": im.file_name, "height": im.height, "width": im.width,
                           **({"is_good": im.is_good} if im.is_good is not None else {}), **im.extra})
            det = self.detections.get(im.id)
            if det is None or not len(det):
                continue
            ann_ids = det.data.get("annotation_id")
            area = det.area
            iscrowd = det.data.get("iscrowd", [0] * len(det))
            for k, (entry, cid) in enumerate(zip(det.xywh.tolist(), det.category_id.tolist())):
                seg = det.data.get("segmentation", [None] * len(det))[k]
                if seg is None and det.has_masks:
                    r = det.rles()[k]
                    seg = {"size": list(r["size"]), "counts": r["counts"].decode("ascii") if isinstance(r["counts"], bytes) else r["counts"]}
                anns.append({"id": int(ann_ids[k]) if ann_ids is not None else len(anns) + 1, "image_id": im.id,
                             "category_id": int(cid), "bbox": entry, "area": float(area[k]), "iscrowd": int(iscrowd[k]),
                             **({"segmentation": seg} if seg is not None else {})})
        return {"info": dict(self.info), "images": images, "annotations": anns, "categories": list(self.categories)}


# ---------------------------------------------------------------- checks
def _is_id(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_box(value) -> bool:
    return (isinstance(value, list) and len(value) == 4
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value))


def _need(obj, keys: tuple[str, ...], where: str, path: Path) -> None:
    if not isinstance(obj, dict):
        raise DatasetError(f"{path}: {where} is not an object")
    missing = [k for k in keys if k not in obj]
    if missing:
        raise DatasetError(f"{path}: {where} lacks {', '.join(missing)}")


def _check_box(box, where: str, path: Path) -> None:
    if not _is_box(box):
        raise DatasetError(f"{path}: {where} has bbox {box!r} (expected [x, y, w, h])")
    if box[2] < 0 or box[3] < 0:
        raise DatasetError(f"{path}: {where} has bbox {box!r} with a negative width or height (expected [x, y, w, h])")


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
        if not all(isinstance(p, list) and len(p) >= 6 and all(isinstance(v, (int, float)) for v in p) for p in segmentation):
            raise ValueError("polygons must be lists of at least 3 x, y pairs")
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


def box_rle(xywh: list[float], height: int, width: int) -> dict:
    """The RLE of a box (what a box-only result's mask is taken to be)."""
    return mask_utils.frPyObjects(np.array([xywh], np.float64), height, width)[0]


def _xyxy(xywh: list[list[float]]) -> np.ndarray:
    b = np.asarray(xywh, np.float64).reshape(-1, 4)
    b[:, 2:] += b[:, :2]
    return b


# ---------------------------------------------------------------- datasets
def load_coco(path: Path, image_root: Path | None = None, masks: bool = True) -> CocoDataset:
    """A COCO instances json (the converters' or any other); `image_root` overrides info.image_root (else the
    json's folder). With `masks`, every annotation's segmentation becomes an RLE (checked against the image size);
    an annotation without segmentation then takes its box."""
    path = Path(path)
    complete_pending(path)  # an export interrupted in its commit is completed first (or refused): never half
    data = read_json(path, "COCO json")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DatasetError(f"{path}: not a COCO instances json (no 'images' list)")
    for key in ("annotations", "categories"):
        if not isinstance(data.get(key, []), list):
            raise DatasetError(f"{path}: not a COCO instances json ('{key}' is not a list)")
    info = data.get("info") if isinstance(data.get("info"), dict) else {}
    root = Path(image_root) if image_root else (Path(info["image_root"]) if info.get("image_root") else path.parent)
    images: dict[int, ImageInfo] = {}
    flagged = set()
    for i, im in enumerate(data["images"]):
        _need(im, ("id", "file_name"), f"images[{i}]", path)
        if not _is_id(im["id"]):
            raise DatasetError(f"{path}: images[{i}] has id {im['id']!r} (expected an integer)")
        if im["id"] in images:
            raise DatasetError(f"{path}: duplicate image id {im['id']}")
        h, w = im.get("height"), im.get("width")
        if masks and not all(_is_id(v) and v > 0 for v in (h, w)):
            raise DatasetError(f"{path}: images[{i}] has height/width {h!r}/{w!r} (expected positive integers)")
        extra = {k: v for k, v in im.items() if k not in ("id", "file_name", "height", "width", "is_good")}
        images[im["id"]] = ImageInfo(im["id"], str(im["file_name"]), h, w, (root / im["file_name"]).resolve(),
                                     bool(im["is_good"]) if "is_good" in im else None, extra)
        if "is_good" in im:
            flagged.add(im["id"])
    categories = []
    for i, c in enumerate(data.get("categories", [])):
        _need(c, ("id", "name"), f"categories[{i}]", path)
        if not _is_id(c["id"]):
            raise DatasetError(f"{path}: categories[{i}] has id {c['id']!r} (expected an integer)")
        categories.append(dict(c))
    categories.sort(key=lambda c: c["id"])
    class_of = {c["id"]: k for k, c in enumerate(categories)}
    if len(class_of) != len(categories):
        raise DatasetError(f"{path}: duplicate category ids")
    names, cat_ids = [str(c["name"]) for c in categories], [c["id"] for c in categories]
    per_image: dict[int, list[dict]] = {i: [] for i in images}
    for i, ann in enumerate(data.get("annotations", [])):
        _need(ann, ("id", "image_id", "category_id", "bbox"), f"annotations[{i}]", path)
        _check_box(ann["bbox"], f"annotation {ann['id']}", path)
        if not (_is_id(ann["image_id"]) and ann["image_id"] in images):
            raise DatasetError(f"{path}: annotation {ann['id']} refers to unknown image id {ann['image_id']}")
        if ann["category_id"] not in class_of:
            raise DatasetError(f"{path}: annotation {ann['id']} has unknown category id {ann['category_id']}")
        per_image[ann["image_id"]].append(ann)
    detections = {}
    for image_id, anns in per_image.items():
        im = images[image_id]
        rles = None
        if masks:
            rles = []
            for ann in anns:
                try:
                    seg = ann.get("segmentation")
                    rles.append(to_rle(seg, im.height, im.width) if seg else box_rle(ann["bbox"], im.height, im.width))
                except Exception as exc:  # noqa: BLE001 - pycocotools raises bare Exception on malformed input
                    raise DatasetError(f"{path}: annotation {ann['id']}: {exc}") from None
        data_cols = {"annotation_id": np.array([a["id"] for a in anns], np.int64),
                     "iscrowd": np.array([int(a.get("iscrowd", 0)) for a in anns], np.int64)}
        detections[image_id] = Detections(
            _xyxy([a["bbox"] for a in anns]), [class_of[a["category_id"]] for a in anns], np.ones(len(anns)),
            rle=rles, data=data_cols, image=im, class_names=names, category_ids=cat_ids)
        if image_id not in flagged:  # no is_good flag: an image without annotations counts as good
            im.is_good = not anns
    return CocoDataset(list(images.values()), detections, categories, info, path)


def save_coco(dataset: CocoDataset, path: Path) -> None:
    """Write a dataset as a COCO instances json (atomically); load_coco reads it back unchanged."""
    atomic_write_text(Path(path), json.dumps(dataset.to_dict()))


# ---------------------------------------------------------------- results
def load_results(path: Path, dataset: CocoDataset, ids: dict[int, int] | None = None) -> dict[int, Detections]:
    """A COCO results json -> image id -> Detections over `dataset`'s images and classes. `ids` maps result image
    ids to the dataset's (results on other images are ignored with a warning; unknown ids are an error). Entries
    without segmentation (box-only results) take their box as mask and have data["has_mask"] False."""
    import sys

    path = Path(path)
    raw = read_json(path, "COCO results")
    if not isinstance(raw, list):
        raise DatasetError(f"{path}: not a COCO results list (expected [{{image_id, category_id, bbox, score, segmentation}}, ...])")
    cat_index = {cid: k for k, cid in enumerate(dataset.category_ids)}
    rows: dict[int, list[tuple]] = {}
    unknown_images, outside = set(), set()
    for i, p in enumerate(raw):
        if not isinstance(p, dict):
            raise DatasetError(f"{path}: entry {i} is not an object")
        _need(p, ("image_id", "category_id", "score"), f"entry {i}", path)
        if "bbox" not in p and not p.get("segmentation"):
            raise DatasetError(f"{path}: entry {i} has neither bbox nor segmentation")
        if not _is_id(p["image_id"]):
            raise DatasetError(f"{path}: entry {i} has image_id {p['image_id']!r} (expected an integer)")
        if "bbox" in p:
            _check_box(p["bbox"], f"entry {i}", path)
        if ids is not None and p["image_id"] not in ids:
            outside.add(p["image_id"])  # an image of the prediction run that is not in this dataset
            continue
        image_id = ids[p["image_id"]] if ids is not None else p["image_id"]
        if image_id not in dataset.detections:
            unknown_images.add(p["image_id"])
            continue
        im = dataset.image(image_id)
        if not _is_id(p["category_id"]) or p["category_id"] not in cat_index:
            raise DatasetError(f"{path}: entry {i} has category id {p['category_id']}, unknown to "
                               f"{dataset.path.name if dataset.path else 'the dataset'} (known: {sorted(cat_index)})")
        score = p["score"]
        if not isinstance(score, (int, float)) or isinstance(score, bool) or not math.isfinite(score):
            raise DatasetError(f"{path}: entry {i} has score {score!r} (expected a finite number)")
        try:
            if p.get("segmentation"):
                rle, has_mask = to_rle(p["segmentation"], im.height, im.width), True
            else:
                rle, has_mask = box_rle(p["bbox"], im.height, im.width), False
            bbox = [float(v) for v in p["bbox"]] if "bbox" in p else mask_utils.toBbox(rle).tolist()
        except Exception as exc:  # noqa: BLE001 - pycocotools raises bare Exception on malformed input
            raise DatasetError(f"{path}: entry {i} (image id {p['image_id']}): {exc}") from None
        rows.setdefault(image_id, []).append((bbox, cat_index[p["category_id"]], float(score), rle, has_mask, i))
    if unknown_images:
        shown = ", ".join(map(str, sorted(unknown_images, key=str)[:5]))
        raise DatasetError(f"{path}: {len(unknown_images)} image id(s) not in {dataset.path} ({shown}"
                           f"{', ...' if len(unknown_images) > 5 else ''}): predictions and ground truth "
                           f"come from different datasets")
    if outside:
        print(f"warning: {path}: predictions on {len(outside)} image(s) outside {dataset.path} ignored "
              f"(images matched through image_ids.json)", file=sys.stderr)
    out = {}
    for image_id, r in rows.items():
        out[image_id] = Detections(
            _xyxy([x[0] for x in r]), [x[1] for x in r], [x[2] for x in r], rle=[x[3] for x in r],
            data={"has_mask": np.array([x[4] for x in r], bool), "entry": np.array([x[5] for x in r], np.int64)},
            image=dataset.image(image_id), class_names=dataset.class_names, category_ids=dataset.category_ids)
    return out


def save_results(detections: Iterable[Detections], path: Path) -> list[dict]:
    """COCO results of several images (each Detections carries its image), image by image in `order()`; written
    atomically; returns the entries."""
    entries = [e for det in detections for e in det.to_coco()]
    atomic_write_text(Path(path), json.dumps(entries))
    return entries
