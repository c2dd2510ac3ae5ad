"""Records -> ultralytics YOLO labels (detect boxes or segment polygons) and data.yaml."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from defect_vision.data.records import Category, ImageRecord, Instance
from defect_vision.data.splits import SPLITS


def flat_name(rec: ImageRecord) -> str:
    """A unique file name for images/<split>/: the category-relative path with '/' -> '_' (test_hole_003.png)."""
    return rec.file_name.replace("/", "_")


def box_line(cls: int, inst: Instance, width: int, height: int) -> str:
    """`cls cx cy w h`, normalised, from the COCO box."""
    x, y, w, h = inst.bbox
    return f"{cls} {(x + w / 2) / width:.6f} {(y + h / 2) / height:.6f} {w / width:.6f} {h / height:.6f}"


def joined_polygon(polygons: list[list[float]]) -> np.ndarray:
    """One (N, 2) polygon for an instance; several pieces are joined with ultralytics' merge_multi_segment."""
    if len(polygons) == 1:
        return np.asarray(polygons[0], float).reshape(-1, 2)
    from ultralytics.data.converter import (
        merge_multi_segment,  # heavy import: only when needed
    )

    return np.concatenate(merge_multi_segment(polygons), axis=0)


def segment_line(cls: int, inst: Instance, width: int, height: int) -> str:
    """`cls x1 y1 x2 y2 ...`, normalised and clipped to [0, 1]."""
    pts = np.clip(joined_polygon(inst.polygons) / [width, height], 0, 1)
    return f"{cls} " + " ".join(f"{v:.6f}" for v in pts.ravel())


def label_text(rec: ImageRecord, cat: Category, task: str = "detect") -> str:
    """The label file of one image; empty for a good image (a background image). Segment labels leave box-only
    instances out (they have no polygon, and ultralytics cannot mix boxes with polygons in one file)."""
    line = segment_line if task == "segment" else box_line
    lines = [line(cat.category_id(inst.category) - 1, inst, rec.width, rec.height) for inst in rec.instances
             if task != "segment" or not inst.box_only]
    return "".join(f"{ln}\n" for ln in lines)


def data_yaml(dataset_dir: Path, cat: Category) -> str:
    """ultralytics data.yaml; `path` is the final (absolute) dataset folder."""
    import yaml

    data = {
        "path": str(Path(dataset_dir).resolve()),
        "train": "images/train",
        "val": "images/val",
        "test": "images/test",
        "nc": len(cat.defect_types),
        "names": dict(enumerate(cat.defect_types)),
    }
    return yaml.safe_dump(data, sort_keys=False)


def place_image(src: Path, dst: Path, copy: bool) -> None:
    """The image at dst: a symlink to src, or a copy."""
    if copy:
        shutil.copyfile(src, dst)
    else:
        os.symlink(src, dst)


def write_yolo(job, folder: Path, final: Path, config) -> None:
    """images/<split>/ (symlinks or copies), labels/<split>/*.txt and data.yaml (whose `path` is the final folder)."""
    from defect_vision.formats.coco import records_of_split

    for split in SPLITS:
        (folder / "images" / split).mkdir(parents=True)
        (folder / "labels" / split).mkdir(parents=True)
        for rec in job.bar(records_of_split(job.cat, job.split, split), f"yolo {split}"):
            name = flat_name(rec)
            place_image(rec.path, folder / "images" / split / name, config.copy)
            (folder / "labels" / split / f"{Path(name).stem}.txt").write_text(label_text(rec, job.cat, config.task))
    (folder / "data.yaml").write_text(data_yaml(final, job.cat))
