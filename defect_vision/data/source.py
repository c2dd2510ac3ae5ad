"""Which dataset to read and how: `DatasetSource` (layout, root, category, reader options) and `read_dataset`, the
one entry point from any supported layout to the record (`Category`). One reader module per layout, each with

    LAYOUT: str                                    what it reads, in one line (shown by --format auto on failure)
    looks_like(cat_root: Path) -> bool             a cheap check of the layout's markers
    samples(source: DatasetSource) -> list[Sample] the images, their labels and mask files (or labelled shapes)

The exports of labelling tools (coco, yolo, labelstudio, cvat) are read from `root` itself (the image folder, or
the folder holding data.yaml): their `looks_like` takes that folder, and `category` only names the dataset.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from defect_vision.errors import DatasetError

if TYPE_CHECKING:  # the records (OpenCV, numpy) are imported when a dataset is read, so --help and FORMATS stay cheap
    from defect_vision.data.records import Category

# layout -> reader module; `auto` tries them in this order (the most specific markers first)
READERS = {
    "mvtec_ad2": "defect_vision.data.mvtec_ad2",
    "mvtec_loco": "defect_vision.data.mvtec_loco",
    "mvtec_3d": "defect_vision.data.mvtec_3d",
    "visa": "defect_vision.data.visa",
    "kolektor2": "defect_vision.data.kolektor2",
    "mvtec": "defect_vision.data.mvtec",
}
# labelling tools' exports, read from root itself; `auto` tries them after the layouts above (--annotations: by file)
LABELLED = {
    "coco": "defect_vision.data.coco_json",
    "yolo": "defect_vision.data.yolo_dataset",
    "labelstudio": "defect_vision.data.labelstudio",
    "cvat": "defect_vision.data.cvat",
}
ROOTED = ("folder", *LABELLED)  # formats whose files are named relative to root (not root/category)
FORMATS = ("auto", "mvtec", "mvtec_ad2", "mvtec_loco", "mvtec_3d", "visa", "kolektor2", "folder", *LABELLED)


@dataclass(frozen=True)
class DatasetSource:
    """A dataset to read: `root`/`category` in `format` (auto: detected), plus the options some layouts take."""

    root: Path
    category: str
    min_area: int = 10  # mask components smaller than this (pixels) are dropped
    format: str = "mvtec"
    mask_threshold: int = 0  # a mask pixel is defect when its value is > this (lossy or anti-aliased masks)
    defect_name: str = "defect"  # the class of layouts without defect-type names (MVTec AD 2, KolektorSDD2)
    names: Path | None = None  # YAML: class name -> prompt text (or a list: prompt first, then synonyms)
    images: str | None = None  # folder: glob of the images, relative to root
    masks: str | None = None  # folder: mask path template ({dir} = the image's folder, {stem} = its name w/o suffix)
    manifest: Path | None = None  # folder: CSV with columns image,mask[,label]
    benchmark_split: bool = False  # the dataset's own split (VisA's 1cls.csv, KolektorSDD2's, Roboflow's, YOLO's)
    strict: bool = False  # what a reader would skip with a warning is an error (missing images, unknown classes, ...)
    annotations: Path | None = None  # coco, labelstudio, cvat: the export's annotation file

    @property
    def cat_root(self) -> Path:
        """The folder the images are read from (file names are relative to it)."""
        return Path(self.root) if self.format in ROOTED else Path(self.root) / self.category


def reader(fmt: str):
    if fmt == "folder":
        return importlib.import_module("defect_vision.data.folder")
    if fmt in LABELLED:
        return importlib.import_module(LABELLED[fmt])
    if fmt not in READERS:
        raise DatasetError(f"--format {fmt}: unknown layout (choose from {', '.join(FORMATS)})")
    return importlib.import_module(READERS[fmt])


def detect_format(source: DatasetSource) -> str:
    """The layout of <root>/<category>; DatasetError listing what was looked for when none fits."""
    root = Path(source.root)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such folder (the dataset root)")
    if source.images or source.manifest:
        return "folder"
    if source.annotations:
        from defect_vision.data.labelled import annotation_format

        return annotation_format(Path(source.annotations))
    cat_root = root / source.category
    if cat_root.is_dir():
        for fmt in READERS:
            if reader(fmt).looks_like(cat_root):
                return fmt
    for fmt in LABELLED:
        if reader(fmt).looks_like(root):
            return fmt
    if not cat_root.is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise DatasetError(f"{root}: no category folder '{source.category}' (found: {', '.join(found) or 'none'}) and "
                           f"no labelling tool's export ({'; '.join(f'{f}: {reader(f).LAYOUT}' for f in LABELLED)})")
    looked = "; ".join(f"{fmt}: {reader(fmt).LAYOUT}" for fmt in [*READERS, *LABELLED])
    raise DatasetError(f"{cat_root}: no known dataset layout found (looked for {looked}; for any other layout use "
                       "--format folder --images GLOB --masks TEMPLATE)")


def resolve(source: DatasetSource) -> DatasetSource:
    """The source with `format` decided (auto detected, and said on stderr)."""
    import sys
    from dataclasses import replace

    if source.format != "auto":
        reader(source.format)  # unknown -> error
        return source
    fmt = detect_format(source)
    found = replace(source, format=fmt)
    print(f"--format auto: {found.cat_root} is a {fmt} layout", file=sys.stderr)
    return found


def load_phrasings(path: Path | None, what: str = "names") -> dict[str, list[str]]:
    """names.yaml / prompts.yaml: {class name: prompt | [prompt, phrasing, ...]} -> {class name: [phrasings]}."""
    if path is None:
        return {}
    import yaml

    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such {what} file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise DatasetError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a mapping of class name -> prompt (or list of prompts)")
    out = {}
    for name, value in data.items():
        prompts = value if isinstance(value, list) else [value]
        if not prompts or not all(isinstance(v, str) and v.strip() for v in prompts):
            raise DatasetError(f"{path}: class '{name}' needs a prompt text (or a list of them), got {value!r}")
        out[str(name)] = list(dict.fromkeys(v.strip() for v in prompts))
    return out


def read_dataset(source: DatasetSource, progress: bool = False) -> Category:
    """Read a dataset of any supported layout into the record the formats write; what it skipped or could not tell
    is in `Category.warnings` (and on stderr, one `warning:` line each)."""
    import sys

    from defect_vision.data.samples import build_category

    source = resolve(source)
    samples = reader(source.format).samples(source)
    cat = build_category(source.category, source.cat_root.resolve(), samples, source.min_area, source.mask_threshold,
                         progress, source.strict)
    check_defects(cat, source)
    phrasings = load_phrasings(source.names)
    names = {name: prompts[0] for name, prompts in phrasings.items()}
    unknown = sorted(set(names) - set(cat.defect_types))
    if unknown:
        raise DatasetError(f"{source.names}: classes {', '.join(unknown)} are not in the dataset "
                           f"(its classes: {', '.join(cat.defect_types)})")
    cat.prompts = names
    cat.phrasings = phrasings
    for w in cat.warnings:
        print(f"warning: {w}", file=sys.stderr)
    return cat


def check_defects(cat: Category, source: DatasetSource) -> None:
    """DatasetError when a category has no defect image: nothing to train or evaluate a detector on (a folder of
    good images only, or a layout read with the wrong format); names the layout the files look like."""
    if cat.defect_types:
        return
    hint = ""
    if source.format not in ROOTED:
        fits = [fmt for fmt in READERS if reader(fmt).looks_like(source.cat_root)]
        hint = (f"; its files look like {fits[0]} ({reader(fits[0]).LAYOUT})" if fits and source.format not in fits
                else f"; format {source.format} reads defect images from {reader(source.format).LAYOUT}")
    raise DatasetError(f"{source.cat_root}: no defect image read as format {source.format} "
                       f"({len(cat.images)} good images only){hint}")
