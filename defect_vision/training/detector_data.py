"""The YOLO export a detector trains on: its data.yaml, the images and labels of each split, the checks that
refuse a degenerate export before training, and the data hash recorded in best.json."""
from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path

import yaml

from defect_vision.data.images import IMAGE_SUFFIXES
from defect_vision.errors import DatasetError
from defect_vision.io import complete_pending

LOG = logging.getLogger("defect_vision.yolo_world")
SPLITS = ("train", "val", "test")  # the data.yaml keys naming image folders


def read_data_yaml(path: Path) -> dict:
    """The export's data.yaml (a convert commit in progress on it is completed or refused first)."""
    complete_pending(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such file (run converters/mvtec_to_yolo.py for the category first)")
    try:
        data = yaml.safe_load(path.read_text())
        names = data["names"]
        names = names if isinstance(names, dict) else dict(enumerate(names))
    except (yaml.YAMLError, TypeError, KeyError) as exc:
        raise DatasetError(f"{path}: not an ultralytics data.yaml ({exc.__class__.__name__}: {exc})") from None
    if not names:
        raise DatasetError(f"{path}: no class names")
    data["names"] = {int(k): str(v) for k, v in names.items()}
    bad = [n for n in data["names"].values() if "/" in n]
    if bad:
        raise DatasetError(f"{path}: class names must not contain '/': {bad}")
    return data


def dataset_root(data_yaml: Path, data: dict) -> Path:
    """The folder data.yaml's split paths are relative to (its `path`, else data.yaml's folder)."""
    root = Path(data.get("path") or data_yaml.parent)
    return root if root.is_absolute() else (data_yaml.parent / root).resolve()


def split_images(data_yaml: Path, data: dict, split: str) -> tuple[Path, list[Path]]:
    """(the split's image folder, its images sorted); DatasetError when the folder does not exist."""
    from ultralytics.data.utils import IMG_FORMATS

    folder = dataset_root(data_yaml, data) / str(data.get(split, ""))
    if not folder.is_dir():
        raise DatasetError(f"{data_yaml}: {split} folder {folder} does not exist")
    return folder, sorted(p for p in folder.rglob("*") if p.suffix[1:].lower() in IMG_FORMATS)


def label_files(images: list[Path]) -> list[Path]:
    """The label file ultralytics reads for each image (images/<split>/x.png -> labels/<split>/x.txt)."""
    from ultralytics.data.utils import img2label_paths

    return [Path(p) for p in img2label_paths([str(p) for p in images])]


def boxes_in(labels: list[Path]) -> int:
    """How many label lines (boxes or polygons) the label files hold; missing files count as none."""
    return sum(sum(1 for line in p.read_text().splitlines() if line.strip()) for p in labels if p.is_file())


def check_splits(data_yaml: Path, data: dict) -> None:
    """Refuse an export ultralytics would fail on late (empty val split) or train on uselessly (no boxes)."""
    for split in ("train", "val"):
        folder, images = split_images(data_yaml, data, split)
        if not images:
            hint = ("no training images" if split == "train" else
                    "no validation images (the val split is empty: too few defect images to hold some out? "
                    "re-convert the category with a larger val share, convert --split)")
            raise DatasetError(f"{folder}: {hint}")
        labels = label_files(images)
        if boxes_in(labels) == 0:
            raise DatasetError(f"{labels[0].parent}: no labelled boxes in the {split} split ({len(images)} images): "
                               f"nothing to {'train' if split == 'train' else 'validate'} on (a category with good "
                               "images only?)")


def data_hash(data_yaml: Path, data: dict) -> str:
    """sha256 over class names and, for train and val, each image's name, size and label file."""
    h = hashlib.sha256(json.dumps(data["names"], sort_keys=True).encode())
    for split in ("train", "val"):
        folder, images = split_images(data_yaml, data, split)
        if split == "train" and not images:
            raise DatasetError(f"{folder}: no training images")
        for img, lab in zip(images, label_files(images)):
            h.update(f"{split}/{img.relative_to(folder)}:{img.stat().st_size}\n".encode())
            h.update(lab.read_bytes() if lab.is_file() else b"<no label>")
    return h.hexdigest()


def image_folders(data_yaml: Path, data: dict) -> list[Path]:
    """The folders the images of every split really live in: the YOLO export's images are symlinks into the
    category's own folders, which a run folder must never replace."""
    folders = set()
    for split in SPLITS:
        if data.get(split) and (dataset_root(data_yaml, data) / str(data[split])).is_dir():
            folders |= {p.resolve().parent for p in split_images(data_yaml, data, split)[1]}
    return sorted(folders)


def small_data_settings(data_yaml: Path, data: dict, batch: int, epochs: int) -> dict:
    """Ultralytics' defaults assume thousands of images: gradients accumulated to a nominal batch of 64 and at
    least 100 warm-up iterations. On a few dozen defect images that means one optimizer step every few epochs,
    all of them in warm-up. Below those sizes, step every batch and skip the warm-up."""
    root = Path(data.get("path") or data_yaml.parent)
    train = root / str(data.get("train", "images/train"))
    n_train = sum(1 for p in train.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if train.is_dir() else 0
    if batch <= 0 or n_train == 0:
        return {}
    settings = {}
    if n_train < 4 * 64:
        settings["nbs"] = batch
    if epochs * math.ceil(n_train / batch) < 400:
        settings["warmup_epochs"] = 0
    if settings:
        LOG.info("small dataset (%d training images): %s (override with key=value)", n_train,
                 ", ".join(f"{k}={v}" for k, v in settings.items()))
    return settings
