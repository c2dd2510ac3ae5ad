"""What every reader yields (a Sample per image: its file, its label, its mask files or labelled shapes) and the one
function that turns samples into the record the formats write: header size, mask union, 8-connected instances (or
one instance per labelled shape), with the same checks and one-line errors for every dataset layout."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from defect_vision.data.images import image_size, read_label_mask
from defect_vision.data.records import Category, ImageRecord, mask_to_instances
from defect_vision.data.shapes import Shape, majority_label, shapes_to_instances
from defect_vision.errors import DatasetError


@dataclass(frozen=True)
class Sample:
    """One image as a reader found it."""

    path: Path  # the image file
    file_name: str  # relative to the category (dataset) root; unique; image ids follow its sort order
    label: str  # defect type (class name), or GOOD
    masks: tuple[Path, ...] = ()  # ground-truth mask files of a defect image; their union is the defect
    labelled: bool = True  # False: no ground truth at all (prediction only, e.g. MVTec AD 2's test_private)
    extra: dict = field(default_factory=dict, compare=False, hash=False)  # anything else the layout says:
    # "split": the dataset's own train/test; "listed_in": the list file naming this image (a missing image is then
    # skipped with a warning, or an error with strict); "labels": several defect types of one image;
    # "types_by_value": {mask value: defect type} where the mask's values tell its regions' types apart;
    # "size": (height, width) the labelling tool recorded (its shapes' coordinates are in it)
    shapes: tuple[Shape, ...] = ()  # labelled instances (a labelling tool's export): one instance each, no masks


class Samples(list):
    """A reader's samples and the warning lines of what it skipped or could not take as it came (labelled exports:
    unknown classes, annotations of missing images)."""

    def __init__(self, items=(), warnings: Sequence[str] = ()):
        super().__init__(items)
        self.warnings = list(warnings)


def note_lines(notes: Sequence[tuple[str, str]]) -> list[str]:
    """One line per kind of note (kind, where): how many, and the first place."""
    kinds: dict[str, list] = {}
    for kind, where in notes:
        kinds.setdefault(kind, [0, where])[0] += 1
    return [f"{n} {kind} (first: {where})" for kind, (n, where) in kinds.items()]


def strict_error(kind: str, where: str) -> DatasetError:
    return DatasetError(f"{where}: {kind.split(' (')[0]} (--strict makes this an error)")


def read_sample(s: Sample, min_area: int, mask_threshold: int = 0, strict: bool = False) -> ImageRecord:
    """The record of one sample: its size from the header; for a defect image the union of its masks (> threshold)
    split into instances (of their own types where extra["types_by_value"] says), or one instance per labelled shape
    (its type the most frequent of theirs; GOOD when none has a pixel in the image). DatasetError naming the file:
    unreadable, missing mask, size mismatch, empty mask; with strict also a shape clipped or dropped."""
    path = s.path if s.path.is_absolute() else s.path.resolve()
    height, width = image_size(path)
    rec = ImageRecord(s.file_name, path, height, width, s.label, split_hint=s.extra.get("split"))
    said = s.extra.get("size")
    if said is not None and tuple(said) != (height, width):
        raise DatasetError(f"{path}: image is {width}x{height} but the labels were drawn on {said[1]}x{said[0]} "
                           f"({s.extra.get('listed_in', 'the export')})")
    if rec.is_good or not s.labelled:
        return rec
    if s.shapes:
        rec.instances, rec.notes = shapes_to_instances(s.shapes, height, width, s.file_name)
        if strict and rec.notes:
            raise strict_error(*rec.notes[0])
        rec.defect_type = majority_label([i.category for i in rec.instances])
        return rec
    if not s.masks:
        raise DatasetError(f"{path}: defect image ({s.label}) without a ground-truth mask")
    values = None
    for m in s.masks:
        if not m.is_file():
            raise DatasetError(f"{m}: missing mask for defect image {path}")
        mask = read_label_mask(m)
        if mask.shape != (height, width):
            raise DatasetError(f"{m}: mask is {mask.shape[1]}x{mask.shape[0]} but its image {path.name} is {width}x{height}")
        values = mask if values is None else np.maximum(values, mask)
    union = values > mask_threshold
    rec.mask_path = s.masks[0]
    if not union.any():
        raise DatasetError(f"{s.masks[0]}: mask is empty (no defect pixel) for defect image {path.name}")
    by_value = s.extra.get("types_by_value")
    if not by_value:
        rec.instances, rec.dropped_specks = mask_to_instances(union, s.label, min_area)
        return rec
    for kind in sorted(set(by_value.values())):
        part = union & np.isin(values, [v for v, t in by_value.items() if t == kind])
        found, dropped = mask_to_instances(part, kind, min_area)
        rec.instances += found
        rec.dropped_specks += dropped
    return rec


def present(samples: Sequence[Sample], strict: bool = False) -> tuple[list[Sample], list[str]]:
    """The samples whose image is on disk, and a warning for those a list file names but the disk lacks (a partial
    download); with strict, DatasetError instead."""
    missing = [s for s in samples if "listed_in" in s.extra and not s.path.is_file()]
    if not missing:
        return list(samples), []
    where = missing[0].extra["listed_in"]
    first = ", ".join(s.file_name for s in missing[:3]) + (", ..." if len(missing) > 3 else "")
    msg = f"{where}: {len(missing)} of {len(samples)} images it lists are not on disk ({first})"
    if strict:
        raise DatasetError(f"{msg}; strict: a partial copy is an error")
    gone = {id(s) for s in missing}
    return [s for s in samples if id(s) not in gone], [f"{msg}: skipped"]


def combination_note(samples: Sequence[Sample]) -> list[str]:
    """A warning for images with several defect types whose mask values could not tell their regions apart."""
    kept = [s for s in samples if len(s.extra.get("labels", ())) > 1 and not s.extra.get("types_by_value")]
    if not kept:
        return []
    first = ", ".join(s.file_name for s in kept[:3]) + (", ..." if len(kept) > 3 else "")
    return [f"{len(kept)} images with several defect types kept as one combination class each (their mask values "
            f"do not say which region is which type: {first})"]


def build_category(name: str, root: Path, samples: Sequence[Sample], min_area: int = 10, mask_threshold: int = 0,
                   progress: bool = False, strict: bool = False) -> Category:
    """Read every sample (DatasetError on the first bad file) into a Category sorted by file_name; images a list
    file names but the disk lacks are skipped with a warning (strict: DatasetError)."""
    if not samples:
        raise DatasetError(f"{root}: no images found")
    warnings = list(getattr(samples, "warnings", []))
    samples, missing = present(samples, strict)
    warnings += missing
    if not samples:
        raise DatasetError(warnings[0].removesuffix(": skipped") + ": none to read")
    warnings += combination_note(samples)
    seen: dict[str, Path] = {}
    for s in samples:
        if s.file_name in seen:
            raise DatasetError(f"{s.path}: same name '{s.file_name}' as {seen[s.file_name]}")
        seen[s.file_name] = s.path
    labelled = [s for s in samples if s.labelled]
    if progress:  # tqdm (and the multiprocessing lock it makes) only when a bar is shown
        from tqdm import tqdm

        labelled = tqdm(labelled, desc=f"read {name}", unit="img")
    records = [read_sample(s, min_area, mask_threshold, strict) for s in labelled]
    records.sort(key=lambda r: r.file_name)
    warnings += note_lines([n for r in records for n in r.notes])
    unlabelled = sorted((read_sample(s, min_area) for s in samples if not s.labelled), key=lambda r: r.file_name)
    if not records:
        raise DatasetError(f"{root}: no labelled images (only {len(unlabelled)} without ground truth)")
    defect_types = sorted({r.defect_type for r in records if not r.is_good}
                          | {i.category for r in records for i in r.instances})
    return Category(name, Path(root), records, defect_types, unlabelled=unlabelled, warnings=warnings)


def normalise_label(text: str) -> str:
    """A free-text or folder label as a class name: trimmed, lower case, inner spaces as '_' (the prompt turns '_'
    back into spaces): ' Chip around edge ' -> 'chip_around_edge'."""
    return "_".join(str(text).strip().lower().replace("-", " ").split())

