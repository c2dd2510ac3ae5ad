"""COCO instances json + its images (`--format coco --root IMAGE_DIR --annotations FILE.json`): polygons,
multi-polygons, compressed and uncompressed RLE (iscrowd too: one instance), box-only annotations (no segmentation);
any category ids. Without --annotations the tools' COCO exports are found under --root: Roboflow
`{train,valid,test}/_annotations.coco.json` (images beside; --benchmark-split keeps their split, valid -> val), CVAT
"COCO 1.0" `annotations/instances_*.json` + `images/`, Label Studio "COCO" `result.json` + `images/`."""
from __future__ import annotations

from pathlib import Path

from defect_vision.data.labelled import ImageFinder, Notes, labelled_sample
from defect_vision.data.samples import Samples, normalise_label, note_lines
from defect_vision.data.shapes import Shape
from defect_vision.errors import DatasetError
from defect_vision.io import read_json

LAYOUT = ("--annotations FILE.json, or <root>/{train,valid,test}/_annotations.coco.json (Roboflow), "
          "<root>/annotations/instances_*.json (CVAT COCO 1.0), <root>/result.json (Label Studio COCO)")
ROBOFLOW = "_annotations.coco.json"
SPLIT_NAMES = {"train": "train", "valid": "val", "val": "val", "test": "test"}


def found_files(root: Path) -> list[Path]:
    """The COCO files of a tool's export under root (none when it holds none)."""
    roboflow = [root / d / ROBOFLOW for d in SPLIT_NAMES if (root / d / ROBOFLOW).is_file()]
    if roboflow or (root / ROBOFLOW).is_file():
        return roboflow or [root / ROBOFLOW]
    cvat = sorted((root / "annotations").glob("instances_*.json")) if (root / "annotations").is_dir() else []
    if cvat:
        return cvat
    return [root / "result.json"] if (root / "result.json").is_file() else []


def looks_like(root: Path) -> bool:
    return bool(found_files(root))


def segmentation_shape(ann: dict, category: str, where: str) -> Shape:
    """The shape of one annotation: polygons, RLE (compressed or not), or its bbox when it has no segmentation."""
    seg = ann.get("segmentation")
    if isinstance(seg, dict):
        return Shape(category, "rle", seg, where)
    if isinstance(seg, list) and seg:
        rings = seg if isinstance(seg[0], list) else [seg]  # a flat list: one ring
        return Shape(category, "polygon", rings, where)
    if "bbox" not in ann:
        raise DatasetError(f"{where}: neither segmentation nor bbox")
    return Shape(category, "box", tuple(float(v) for v in ann["bbox"]), where)


def file_samples(path: Path, finder: ImageFinder, notes: Notes, split: str | None) -> list:
    """One sample per image of one COCO file (its annotations as shapes, decoded later per image)."""
    data = read_json(path, "COCO json")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DatasetError(f"{path}: not a COCO instances json (no 'images' list)")
    try:
        names = {c["id"]: normalise_label(c["name"]) for c in data.get("categories", [])}
        shapes: dict = {im["id"]: [] for im in data["images"]}
        for ann in data.get("annotations", []):
            where = f"{path.name} annotation {ann.get('id')}"
            if ann.get("image_id") not in shapes:
                notes.add("annotations of an image id the file does not list (skipped)", where)
            elif ann.get("category_id") not in names:
                notes.add("annotations of an unknown category id (skipped)", where)
            else:
                shapes[ann["image_id"]].append(segmentation_shape(ann, names[ann["category_id"]], where))
        return [labelled_sample(finder, str(im["file_name"]), shapes[im["id"]], path,
                                (im.get("height"), im.get("width")), split, path.parent) for im in data["images"]]
    except (KeyError, TypeError, AttributeError) as exc:
        raise DatasetError(f"{path}: not a COCO instances json (missing or bad field {exc})") from None


def samples(source) -> Samples:
    root = Path(source.root)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such folder (the image folder, --root)")
    files = [Path(source.annotations)] if source.annotations else found_files(root)
    if not files:
        raise DatasetError(f"{root}: no COCO json found (pass --annotations FILE.json; looked for {LAYOUT})")
    finder, notes, out = ImageFinder(root), Notes(source.strict), []
    for path in files:
        split = SPLIT_NAMES.get(path.parent.name) if source.benchmark_split and path.name == ROBOFLOW else None
        out += file_samples(path, finder, notes, split)
    return Samples(out, note_lines(notes))
