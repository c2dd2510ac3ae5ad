"""Predictions as a COCO instances json (images, categories, annotations with `score`): what CVAT's and FiftyOne's
COCO importers read, built from the one record (defect_vision.detections) through `CocoDataset.to_dict`."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from defect_vision.coco import CocoDataset, rle_string_counts
from defect_vision.detections import Detections


def class_table(detections: Sequence[Detections]) -> tuple[list[str], list[int]]:
    """(class names, COCO category ids) of the detections (all share one vocabulary; empty for none)."""
    for det in detections:
        if det.class_names:
            ids = det.category_ids or list(range(1, len(det.class_names) + 1))
            return list(det.class_names), [int(i) for i in ids]
    return [], []


def has_mask(det: Detections) -> list[bool]:
    """Per detection, whether it has a mask of its own (a box-only result's RLE is its box: no)."""
    flags = det.data.get("has_mask")
    if not det.has_masks:
        return [False] * len(det)
    return [True] * len(det) if flags is None else [bool(f) for f in flags]


def _segmentation(rle: dict, uncompressed: bool) -> dict:
    counts = rle["counts"]
    counts = counts.encode("ascii") if isinstance(counts, str) else counts
    size = [int(v) for v in rle["size"]]
    if uncompressed:
        return {"counts": rle_string_counts(counts), "size": size}
    return {"counts": counts.decode("ascii"), "size": size}


def coco_predictions(detections: Sequence[Detections], uncompressed: bool = False, iscrowd_masks: bool = False,
                     attributes: dict | None = None) -> dict:
    """A COCO instances dict of the detections' images (every one, with or without detections) and their detections,
    each annotation with its `score`. Masks as compressed RLE (str counts) or, `uncompressed`, as run lengths (as
    CVAT's own COCO 1.0 export writes them); `iscrowd_masks`: iscrowd 1 on every mask (CVAT reads those as masks,
    iscrowd 0 RLEs too but polygons only as polygons). A detection without a mask gets `segmentation: []` (a box).
    `attributes`: an `attributes` object added to every annotation."""
    names, ids = class_table(detections)
    images, by_image, scores = [], {}, []
    for det in detections:
        if det.image is None:
            raise ValueError("coco_predictions: every Detections needs its image (id, file_name, height, width)")
        images.append(det.image)
        masked = has_mask(det)
        segs = [_segmentation(r, uncompressed) if m else [] for r, m in
                zip(det.rles() if det.has_masks else [None] * len(det), masked)]
        crowd = [int(iscrowd_masks and m) for m in masked]
        by_image[det.image.id] = replace(det, data={"segmentation": segs, "iscrowd": crowd})
        scores += [round(float(s), 5) for s in det.score]
    categories = [{"id": i, "name": n, "supercategory": ""} for i, n in zip(ids, names)]
    doc = CocoDataset(images, by_image, categories).to_dict()
    for ann, score in zip(doc["annotations"], scores):
        ann["score"] = score
        if attributes is not None:
            ann["attributes"] = dict(attributes)
    doc.pop("info", None)
    return {"info": {"description": "defect-vision predictions"}, "licenses": [], **doc}
