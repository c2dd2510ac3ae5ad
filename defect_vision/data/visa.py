"""VisA: <C>/Data/Images/{Normal,Anomaly}/*.JPG, masks <C>/Data/Masks/Anomaly/<stem>.png (any non-zero value is a
defect pixel: the values are defect-class indices, not 255), labels from <C>/image_anno.csv (image,label,mask; paths
relative to the VisA root, e.g. candle/Data/Images/Anomaly/000.JPG), and with --benchmark-split the train/test of
<root>/split_csv/1cls.csv (object,split,label,image,mask).

An image labelled with several types ("bubble,discolor,scratch") gets each region its own type: a mask value is a
defect-class index of the category (VisA's id2class), learned here from the category's single-type images; where
the values cannot say (a value never seen alone, or seen with two types), the image keeps one combination class."""
from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path, PurePosixPath

import numpy as np

from defect_vision.data.folder import read_table
from defect_vision.data.images import images_in, read_label_mask
from defect_vision.data.records import GOOD
from defect_vision.data.samples import Sample, normalise_label
from defect_vision.errors import DatasetError

LAYOUT = "<C>/Data/Images/{Normal,Anomaly}/*.JPG with <C>/Data/Masks/Anomaly/*.png and <C>/image_anno.csv"
ANNOTATIONS = "image_anno.csv"
BENCHMARK = Path("split_csv") / "1cls.csv"
NORMAL = "normal"
JOIN = "_and_"  # several labels -> one class: 'scratch, chip around edge' -> 'chip_around_edge_and_scratch'


def looks_like(cat_root: Path) -> bool:
    images = cat_root / "Data" / "Images"
    return (images / "Anomaly").is_dir() or (images / "Normal").is_dir()


def labels_of(label: str) -> list[str]:
    """The defect types of an image_anno.csv label: comma-separated, normalised, de-duplicated, sorted."""
    return sorted({normalise_label(p) for p in label.split(",")} - {""})


def class_name(label: str, default: str) -> str:
    """An image_anno.csv label as one class name: 'normal' -> GOOD; several comma-separated labels -> one class, the
    labels joined by '_and_' (used only where the mask values cannot tell the regions apart); empty -> `default`."""
    parts = labels_of(label)
    if parts == [NORMAL]:
        return GOOD
    return JOIN.join(parts) if parts else normalise_label(default)


def dataset_path(cat_root: Path, text: str) -> Path:
    """A path of a VisA CSV: relative to the VisA root (candle/Data/...) or, without the category, to <C>."""
    rel = PurePosixPath(text.replace("\\", "/"))
    return cat_root.parent / rel if rel.parts[:1] == (cat_root.name,) else cat_root / rel


def _name(cat_root: Path, path: Path, where: str) -> str:
    try:
        return path.relative_to(cat_root).as_posix()
    except ValueError:
        raise DatasetError(f"{where}: {path} is not inside the category folder {cat_root}") from None


def from_annotations(cat_root: Path, defect_name: str) -> list[Sample]:
    """One sample per row of <C>/image_anno.csv."""
    csv_path = cat_root / ANNOTATIONS
    out = []
    for line, row in read_table(csv_path, ("image", "label", "mask")):
        if not row["image"]:
            raise DatasetError(f"{csv_path}: line {line}: no image path")
        image = dataset_path(cat_root, row["image"])
        label = class_name(row["label"], defect_name)
        masks = (dataset_path(cat_root, row["mask"]),) if row["mask"] and label != GOOD else ()
        extra = {"listed_in": csv_path}
        if label != GOOD and len(labels_of(row["label"])) > 1:
            extra["labels"] = tuple(labels_of(row["label"]))
        out.append(Sample(image, _name(cat_root, image, f"{csv_path} line {line}"), label, masks, extra=extra))
    return out


def _values(s: Sample, threshold: int) -> Counter:
    """{mask value: pixel count} of a sample's mask, values > threshold; empty when the files are not there (the
    shared read then names what is wrong)."""
    if not s.masks or not s.masks[0].is_file() or not s.path.is_file():
        return Counter()
    try:
        counts = np.bincount(read_label_mask(s.masks[0]).ravel())
    except DatasetError:
        return Counter()
    return Counter({int(v): int(counts[v]) for v in np.flatnonzero(counts) if v > threshold})


def value_types(found: list[Sample], threshold: int) -> dict[int, str]:
    """{mask value: defect type} of a category, from its single-type images: each value seen with one type only."""
    seen: dict[int, set[str]] = {}
    for s in found:
        if s.label != GOOD and s.masks and "labels" not in s.extra:
            for v in _values(s, threshold):
                seen.setdefault(v, set()).add(s.label)
    return {v: next(iter(types)) for v, types in seen.items() if len(types) == 1}


def with_region_types(found: list[Sample], threshold: int) -> list[Sample]:
    """Each several-type image with extra["types_by_value"] and, as its label, the type with the most pixels,
    where every mask value maps to one of its types (a single unknown value takes the single type left);
    otherwise it stays the combination class."""
    several = [s for s in found if "labels" in s.extra]
    if not several:
        return found
    known = value_types(found, threshold)
    resolved = {}
    for s in several:
        counts, labels = _values(s, threshold), set(s.extra["labels"])
        types = {v: known.get(v) if known.get(v) in labels else None for v in counts}
        unknown = [v for v, t in types.items() if t is None]
        left = labels - set(types.values())
        if len(unknown) == 1 and len(left) == 1:
            types[unknown[0]] = left.pop()
        if not counts or None in types.values():
            continue
        area = Counter()
        for v, t in types.items():
            area[t] += counts[v]
        main = max(sorted(area), key=area.__getitem__)
        resolved[s.file_name] = replace(s, label=main, extra={**s.extra, "types_by_value": types})
    return [resolved.get(s.file_name, s) for s in found]


def from_folders(cat_root: Path, defect_name: str) -> list[Sample]:
    """Without image_anno.csv: Normal/ images are good, Anomaly/ ones get the class --defect-name."""
    images, masks = cat_root / "Data" / "Images", cat_root / "Data" / "Masks" / "Anomaly"
    out = [Sample(p, p.relative_to(cat_root).as_posix(), GOOD) for p in images_in(images / "Normal")]
    label = normalise_label(defect_name)
    out += [Sample(p, p.relative_to(cat_root).as_posix(), label, (masks / f"{p.stem}.png",))
            for p in images_in(images / "Anomaly")]
    return out


def with_benchmark_split(found: list[Sample], root: Path, cat_root: Path) -> list[Sample]:
    """Each sample with extra={"split": "train" | "test"} from <root>/split_csv/1cls.csv (rows of this category)."""
    csv_path = root / BENCHMARK
    if not csv_path.is_file():
        raise DatasetError(f"{csv_path}: no such file (--benchmark-split reads VisA's split_csv/1cls.csv under --root)")
    split_of = {}
    for line, row in read_table(csv_path, ("object", "split", "image")):
        if row["object"] != cat_root.name:
            continue
        if row["split"] not in ("train", "test"):
            raise DatasetError(f"{csv_path}: line {line}: split '{row['split']}' is neither train nor test")
        split_of[dataset_path(cat_root, row["image"])] = row["split"]
    if not split_of:
        raise DatasetError(f"{csv_path}: no rows for object '{cat_root.name}'")
    out = []
    for s in found:
        if s.path not in split_of:
            raise DatasetError(f"{csv_path}: no row for {cat_root.name}/{s.file_name} "
                               "(--benchmark-split needs every image)")
        out.append(replace(s, extra={**s.extra, "split": split_of[s.path]}))
    return out


def samples(source) -> list[Sample]:
    cat_root = Path(source.cat_root)
    if not cat_root.is_dir():
        raise DatasetError(f"{cat_root}: no such folder (the VisA category)")
    if (cat_root / ANNOTATIONS).is_file():
        found = with_region_types(from_annotations(cat_root, source.defect_name), source.mask_threshold)
    else:
        found = from_folders(cat_root, source.defect_name)
    if not found:
        raise DatasetError(f"{cat_root}: no images in Data/Images/Normal or Data/Images/Anomaly")
    return with_benchmark_split(found, Path(source.root), cat_root) if source.benchmark_split else found
