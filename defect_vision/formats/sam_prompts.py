"""Records -> SAM prompts (one split): per instance the box, positive/negative points and the mask RLE."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from defect_vision.data.records import Category, ImageRecord, Instance
from defect_vision.data.splits import SPLITS, Split
from defect_vision.formats.coco import (
    categories,
    first_annotation_ids,
    image_entry,
    image_ids,
    info,
    records_of_split,
)
from defect_vision.io import json_bytes


def sample_points(region: np.ndarray, n: int, rng: np.random.Generator) -> list[list[float]]:
    """n distinct pixels (x, y) of a bool region, fewer if it has fewer."""
    ys, xs = np.nonzero(region)
    if n <= 0 or len(xs) == 0:
        return []
    pick = rng.choice(len(xs), size=min(n, len(xs)), replace=False)
    return [[float(xs[i]), float(ys[i])] for i in sorted(pick)]


def instance_prompt(inst: Instance, annotation_id: int, category_id: int, defect: np.ndarray | None,
                    positive_points: int, negative_points: int, rng: np.random.Generator) -> dict:
    """Box xyxy, points (the distance-transform point first, then extra positives, then negatives) and the mask.

    Points are pixel indices (x = column, y = row): mask[y, x] is True for positives, and negatives lie in
    the box but outside every defect pixel of the image (`defect`). A box-only instance has its box and
    `"box_only": true`, no points and no mask (SAM training skips it: it has no mask target)."""
    if inst.box_only:
        return {"annotation_id": annotation_id, "category_id": category_id, "box": list(inst.xyxy), "box_only": True}
    points, labels = [list(inst.point)], [1]
    if positive_points > 1 or negative_points > 0:
        mask = inst.full_mask()
        x0, y0, x1, y1 = inst.xyxy
        if positive_points > 1:
            inside = mask.copy()
            inside[int(inst.point[1]), int(inst.point[0])] = False
            extra = sample_points(inside, positive_points - 1, rng)
            points += extra
            labels += [1] * len(extra)
        if negative_points > 0:
            outside = np.zeros_like(mask)
            outside[y0:y1, x0:x1] = ~(defect if defect is not None else mask)[y0:y1, x0:x1]
            neg = sample_points(outside, negative_points, rng)
            points += neg
            labels += [0] * len(neg)
    return {
        "annotation_id": annotation_id, "category_id": category_id, "box": list(inst.xyxy),
        "points": points, "point_labels": labels, "mask": dict(inst.rle),
    }


def image_prompts(rec: ImageRecord, cat: Category, image_id: int, first_id: int, positive_points: int = 1,
                  negative_points: int = 0, seed: int = 0) -> dict:
    """The image entry with its instances' prompts; sampling is seeded per image (order-independent)."""
    rng = np.random.default_rng([seed, image_id])
    defect = None
    if negative_points > 0 and rec.instances:
        defect = np.logical_or.reduce([i.full_mask() for i in rec.instances])
    entry = image_entry(rec, image_id)
    entry["instances"] = [
        instance_prompt(inst, first_id + k, cat.category_id(inst.category), defect, positive_points, negative_points, rng)
        for k, inst in enumerate(rec.instances)
    ]
    return entry


def to_sam_prompts(cat: Category, split: Split, split_name: str, positive_points: int = 1,
                   negative_points: int = 0, seed: int = 0) -> dict:
    """The prompts dict of one split (see docs/formats.md)."""
    ids, starts = image_ids(cat), first_annotation_ids(cat)
    return {
        "info": {**info(cat, split, split_name), "positive_points": positive_points, "negative_points": negative_points},
        "categories": categories(cat),
        "images": [
            image_prompts(r, cat, ids[r.file_name], starts[r.file_name], positive_points, negative_points, seed)
            for r in records_of_split(cat, split, split_name)
        ],
    }


def write_sam(job, folder: Path, final: Path, config) -> None:
    """prompts_<split>.json for each split."""
    for split in SPLITS:
        data = to_sam_prompts(job.cat, job.split, split, config.positive_points, config.negative_points, config.split.seed)
        (folder / f"prompts_{split}.json").write_bytes(json_bytes(data))
