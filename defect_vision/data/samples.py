"""What every reader yields (a Sample per image: its file, its label, its mask files) and the one function that
turns samples into the record the formats write: header size, mask union, 8-connected instances, with the same
checks and one-line errors for every dataset layout."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from defect_vision.data.images import image_size, read_mask
from defect_vision.data.records import GOOD, Category, ImageRecord, mask_to_instances
from defect_vision.errors import DatasetError


@dataclass(frozen=True)
class Sample:
    """One image as a reader found it."""

    path: Path  # the image file
    file_name: str  # relative to the category (dataset) root; unique; image ids follow its sort order
    label: str  # defect type (class name), or GOOD
    masks: tuple[Path, ...] = ()  # ground-truth mask files of a defect image; their union is the defect
    labelled: bool = True  # False: no ground truth at all (prediction only, e.g. MVTec AD 2's test_private)
    extra: dict = field(default_factory=dict, compare=False, hash=False)  # anything else the layout says


def read_sample(s: Sample, min_area: int, mask_threshold: int = 0) -> ImageRecord:
    """The record of one sample: its size from the header; for a defect image the union of its masks (> threshold)
    split into instances. DatasetError naming the file: unreadable, missing mask, size mismatch, empty mask."""
    path = s.path if s.path.is_absolute() else s.path.resolve()
    height, width = image_size(path)
    rec = ImageRecord(s.file_name, path, height, width, s.label, split_hint=s.extra.get("split"))
    if rec.is_good or not s.labelled:
        return rec
    if not s.masks:
        raise DatasetError(f"{path}: defect image ({s.label}) without a ground-truth mask")
    union = None
    for m in s.masks:
        if not m.is_file():
            raise DatasetError(f"{m}: missing mask for defect image {path}")
        mask = read_mask(m, mask_threshold)
        if mask.shape != (height, width):
            raise DatasetError(f"{m}: mask is {mask.shape[1]}x{mask.shape[0]} but its image {path.name} is {width}x{height}")
        union = mask if union is None else union | mask
    rec.mask_path = s.masks[0]
    if not union.any():
        raise DatasetError(f"{s.masks[0]}: mask is empty (no defect pixel) for defect image {path.name}")
    rec.instances, rec.dropped_specks = mask_to_instances(union, s.label, min_area)
    return rec


def build_category(name: str, root: Path, samples: Sequence[Sample], min_area: int = 10, mask_threshold: int = 0,
                   progress: bool = False) -> Category:
    """Read every sample (DatasetError on the first bad file) into a Category sorted by file_name."""
    from tqdm import tqdm

    if not samples:
        raise DatasetError(f"{root}: no images found")
    seen: dict[str, Path] = {}
    for s in samples:
        if s.file_name in seen:
            raise DatasetError(f"{s.path}: same name '{s.file_name}' as {seen[s.file_name]}")
        seen[s.file_name] = s.path
    labelled = [s for s in samples if s.labelled]
    records = [read_sample(s, min_area, mask_threshold)
               for s in tqdm(labelled, desc=f"read {name}", unit="img", disable=not progress)]
    records.sort(key=lambda r: r.file_name)
    unlabelled = sorted((read_sample(s, min_area) for s in samples if not s.labelled), key=lambda r: r.file_name)
    if not records:
        raise DatasetError(f"{root}: no labelled images (only {len(unlabelled)} without ground truth)")
    defect_types = sorted({r.defect_type for r in records if not r.is_good})
    return Category(name, Path(root), records, defect_types, unlabelled=unlabelled)


def normalise_label(text: str) -> str:
    """A free-text or folder label as a class name: trimmed, lower case, inner spaces as '_' (the prompt turns '_'
    back into spaces): ' Chip around edge ' -> 'chip_around_edge'."""
    return "_".join(str(text).strip().lower().replace("-", " ").split())

