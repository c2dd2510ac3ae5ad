"""An ultralytics YOLO dataset (`--format yolo --root DATASET_DIR`, the folder holding data.yaml): `path` (relative
to data.yaml's folder; default that folder), `train`/`val`/`test` as image folders or .txt lists (a str or a list
of them), `names` a list or {index: name}; each image's label file where ultralytics looks (the last `/images/` of
its path -> `/labels/`, suffix .txt): `cls cx cy w h` (detect: box-only) or `cls x1 y1 x2 y2 ...` (segment: one
polygon), normalised. An image without a label file, or with an empty one, is good. Roboflow's `../train/images`
entries resolve as ultralytics does (without the `../` when the path with it does not exist). --benchmark-split
keeps the yaml's train/val/test."""
from __future__ import annotations

import os
from pathlib import Path

from defect_vision.data.images import IMAGE_SUFFIXES, image_size
from defect_vision.data.labelled import ImageFinder, Notes, labelled_sample
from defect_vision.data.samples import Samples, normalise_label, note_lines
from defect_vision.data.shapes import Shape
from defect_vision.errors import DatasetError

LAYOUT = "<root>/data.yaml with images/ and labels/ (ultralytics)"
YAMLS = ("data.yaml", "data.yml")
SPLITS = {"train": "train", "val": "val", "test": "test"}


def looks_like(root: Path) -> bool:
    return any((root / y).is_file() for y in YAMLS)


def load_yaml(path: Path) -> dict:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict) or "names" not in data:
        raise DatasetError(f"{path}: not an ultralytics data.yaml (no 'names')")
    return data


def class_names(data: dict, path: Path) -> dict[int, str]:
    names = data["names"]
    if isinstance(names, list):
        return {i: normalise_label(n) for i, n in enumerate(names)}
    if isinstance(names, dict):
        return {int(i): normalise_label(n) for i, n in names.items()}
    raise DatasetError(f"{path}: names must be a list or a mapping of index -> name, got {type(names).__name__}")


def split_images(base: Path, entry: str, yaml_path: Path) -> list[Path]:
    """The images of one train/val/test entry: a folder (searched recursively) or a .txt list of image paths."""
    where = base / entry
    if not where.exists() and entry.startswith("../"):
        where = base / entry[3:]  # what ultralytics does for Roboflow's data.yaml
    if where.is_dir():
        return sorted(Path(os.path.abspath(Path(d) / f)) for d, _, files in os.walk(where) for f in files
                      if os.path.splitext(f)[1].lower() in IMAGE_SUFFIXES)
    if where.is_file() and where.suffix == ".txt":
        lines = [ln.strip() for ln in where.read_text().splitlines() if ln.strip()]
        return [Path(os.path.abspath(Path(ln) if Path(ln).is_absolute() else where.parent / ln)) for ln in lines]
    raise DatasetError(f"{yaml_path}: '{entry}' is neither a folder nor a .txt list under {base}")


def label_path(image: Path) -> Path:
    """Where ultralytics reads an image's labels: the last /images/ of its path -> /labels/, suffix .txt."""
    text = image.as_posix()
    head, sep, tail = text.rpartition("/images/")
    return Path(f"{head}/labels/{tail}" if sep else text).with_suffix(".txt")


def label_shapes(path: Path, names: dict[int, str], image: Path, notes: Notes) -> tuple[list[Shape], tuple | None]:
    """The shapes of one label file (pixel coordinates; the image's header gives its size)."""
    if not path.is_file():
        return [], None
    lines = [ln.split() for ln in path.read_text().splitlines() if ln.strip()]
    if not lines or not image.is_file():
        return [], None
    height, width = image_size(image)
    shapes = []
    for k, parts in enumerate(lines, 1):
        where = f"{path} line {k}"
        try:
            cls, values = int(parts[0]), [float(v) for v in parts[1:]]
        except ValueError:
            raise DatasetError(f"{where}: not a YOLO label line (cls and numbers)") from None
        if cls not in names:
            notes.add("labels of a class index data.yaml does not name (skipped)", where)
            continue
        if len(values) == 4:
            cx, cy, w, h = values
            box = ((cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height)
            shapes.append(Shape(names[cls], "box", box, where))
        elif len(values) >= 6 and len(values) % 2 == 0:
            ring = [v * (width if i % 2 == 0 else height) for i, v in enumerate(values)]
            shapes.append(Shape(names[cls], "polygon", [ring], where))
        else:
            raise DatasetError(f"{where}: {len(values)} coordinates (4 for a box, an even number >= 6 for a polygon)")
    return shapes, (height, width)


def samples(source) -> Samples:
    root = Path(source.root)
    yaml_path = next((root / y for y in YAMLS if (root / y).is_file()), None)
    if yaml_path is None:
        raise DatasetError(f"{root}: no data.yaml (--format yolo reads the folder holding an ultralytics data.yaml)")
    data = load_yaml(yaml_path)
    names = class_names(data, yaml_path)
    base = Path(data.get("path") or ".")
    base = Path(os.path.abspath(base if base.is_absolute() else yaml_path.parent / base))
    finder, notes, out = ImageFinder(root), Notes(source.strict), []
    for key, split in SPLITS.items():
        entries = data.get(key) or []
        for entry in [entries] if isinstance(entries, str) else entries:
            for image in split_images(base, str(entry), yaml_path):
                shapes, size = label_shapes(label_path(image), names, image, notes)
                out.append(labelled_sample(finder, str(image), shapes, yaml_path, size,
                                           split if source.benchmark_split else None))
    if not out:
        raise DatasetError(f"{yaml_path}: no images in its train/val/test")
    return Samples(out, note_lines(notes))
