"""Training sets derived from a converted category: all classes but one (leave-one-defect-out) or k labelled defect
images per class (few-shot), written as the YOLO, COCO and SAM-prompt exports the training stages read.

Images are never copied: the derived YOLO export links to the original files and rewrites only the label files
(class indices renumbered). Few-shot subsets are nested and seeded: per class, one permutation of its training
images drawn from `seed`; k images per class = the first k of each permutation, so the subset for k is inside the
subset for every larger k. Good (defect-free) training images need no labelling and are always kept."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from defect_vision.errors import ConfigError, DatasetError
from defect_vision.io import read_json

ALL = "all"


@dataclass(frozen=True)
class Export:
    """The converted category the experiments start from (defect-vision convert's folders)."""

    coco: Path  # instances_{train,val,test}.json (+ prompts.yaml)
    yolo: Path  # data.yaml, images/, labels/
    sam: Path | None = None  # prompts_{train,val,test}.json

    def check(self) -> None:
        for f in (self.coco / "instances_train.json", self.coco / "instances_val.json",
                  self.coco / "instances_test.json", self.yolo / "data.yaml"):
            if not f.is_file():
                raise DatasetError(f"{f}: no such file (run defect-vision convert for the category first)")
        if self.sam is not None and not (self.sam / "prompts_train.json").is_file():
            raise DatasetError(f"{self.sam / 'prompts_train.json'}: no such file (defect-vision convert writes it)")


def classes_of(coco: Path) -> list[str]:
    """The class names of a COCO export, in category-id order."""
    cats = read_json(coco / "instances_train.json", "COCO instances").get("categories") or []
    return [c["name"] for c in sorted(cats, key=lambda c: c["id"])]


def image_classes(coco_json: Path) -> dict[str, set[str]]:
    """file_name -> the class names annotated in it (empty for a good image), in the json's image order."""
    data = read_json(coco_json, "COCO instances")
    try:
        names = {c["id"]: c["name"] for c in data["categories"]}
        out = {im["file_name"]: set() for im in data["images"]}
        by_id = {im["id"]: im["file_name"] for im in data["images"]}
        for a in data["annotations"]:
            out[by_id[a["image_id"]]].add(names[a["category_id"]])
    except (KeyError, TypeError) as exc:
        raise DatasetError(f"{coco_json}: not a COCO instances file ({exc.__class__.__name__}: {exc})") from None
    return out


def without_class(images: dict[str, set[str]], held_out: str) -> list[str]:
    """Leave-one-out: every image but those showing `held_out` (kept out entirely, not even as background)."""
    return [f for f, cls in images.items() if held_out not in cls]


def class_orders(images: dict[str, set[str]], classes: list[str], seed: int) -> dict[str, list[str]]:
    """Per class, its training images in a seeded random order (independent of k: the base of nesting)."""
    rng = np.random.default_rng(seed)
    return {c: [str(f) for f in rng.permutation(sorted(f for f, cls in images.items() if c in cls))] for c in classes}


def few_shot(images: dict[str, set[str]], classes: list[str], k: int | str, seed: int) -> list[str]:
    """Good images + the first k images of each class's seeded order (k = "all": every image), in json order."""
    if k == ALL:
        return list(images)
    if not isinstance(k, int) or k < 0:
        raise ConfigError(f"{{shots}} {k}: expected a number >= 0 or 'all'", "shots")
    orders = class_orders(images, classes, seed)
    picked = {f for c in classes for f in orders[c][:k]}
    return [f for f, cls in images.items() if not cls or f in picked]


def labelled_counts(images: dict[str, set[str]], chosen: list[str], classes: list[str]) -> dict[str, int]:
    """Per class, how many chosen images show it (an image picked for one class may show another too)."""
    return {c: sum(c in images[f] for f in chosen) for c in classes}


def flat(file_name: str) -> str:
    """The YOLO export's image name of a COCO file_name (formats/yolo.py flat_name)."""
    return file_name.replace("/", "_")


def _link_split(src: Path, out: Path, split: str, files: list[str], remap: dict[int, int]) -> None:
    (out / "images" / split).mkdir(parents=True)
    (out / "labels" / split).mkdir(parents=True)
    for f in files:
        name = flat(f)
        image = src / "images" / split / name
        if not image.exists():
            raise DatasetError(f"{image}: missing from the YOLO export (convert the category again)")
        os.symlink(image.resolve(), out / "images" / split / name)
        label = src / "labels" / split / f"{Path(name).stem}.txt"
        lines = label.read_text().splitlines() if label.is_file() else []
        rows = [ln.split(" ", 1) for ln in lines if ln.strip()]
        kept = [f"{remap[int(cls)]} {rest}" for cls, rest in rows if int(cls) in remap]
        (out / "labels" / split / f"{Path(name).stem}.txt").write_text("".join(f"{ln}\n" for ln in kept))


def write_subset(export: Export, out: Path, classes: list[str], train: list[str], val: list[str]) -> dict:
    """out/{yolo, coco, sam}: the exports the stages train on, restricted to `classes` and these images. Returns
    their paths ({data, coco, sam})."""
    src_names = classes_of(export.coco)
    remap = {src_names.index(c): i for i, c in enumerate(classes)}
    yolo = out / "yolo"
    for split, files in (("train", train), ("val", val)):
        _link_split(export.yolo, yolo, split, files, remap)
    (yolo / "data.yaml").write_text(yaml.safe_dump({"path": str(yolo.resolve()), "train": "images/train",
                                                    "val": "images/val", "nc": len(classes),
                                                    "names": dict(enumerate(classes))}, sort_keys=False))
    coco = out / "coco"
    coco.mkdir(parents=True)
    for split, files in (("train", train), ("val", val)):
        (coco / f"instances_{split}.json").write_text(json.dumps(
            _coco_subset(export.coco / f"instances_{split}.json", set(files), set(classes))))
    if (export.coco / "prompts.yaml").is_file():
        table = yaml.safe_load((export.coco / "prompts.yaml").read_text()) or {}
        (coco / "prompts.yaml").write_text(yaml.safe_dump({c: table[c] for c in classes if c in table}, sort_keys=False))
    paths = {"data": yolo / "data.yaml", "coco": coco, "sam": None}
    if export.sam is not None:
        sam = out / "sam"
        sam.mkdir(parents=True)
        for split, files in (("train", train), ("val", val)):
            (sam / f"prompts_{split}.json").write_text(json.dumps(
                _sam_subset(export.sam / f"prompts_{split}.json", set(files), set(classes))))
        paths["sam"] = sam
    return paths


def _coco_subset(path: Path, files: set[str], classes: set[str]) -> dict:
    data = read_json(path, "COCO instances")
    cats = [c for c in data["categories"] if c["name"] in classes]
    ids = {c["id"] for c in cats}
    images = [im for im in data["images"] if im["file_name"] in files]
    kept = {im["id"] for im in images}
    anns = [a for a in data["annotations"] if a["image_id"] in kept and a["category_id"] in ids]
    return {**data, "images": images, "annotations": anns, "categories": cats}


def _sam_subset(path: Path, files: set[str], classes: set[str]) -> dict:
    data = read_json(path, "SAM prompts")
    cats = [c for c in data["categories"] if c["name"] in classes]
    ids = {c["id"] for c in cats}
    images = [{**im, "instances": [i for i in im.get("instances", []) if i.get("category_id") in ids]}
              for im in data["images"] if im["file_name"] in files]
    return {**data, "images": images, "categories": cats}
