"""Any other layout, described on the command line: `--images GLOB` (relative to --root) with `--masks TEMPLATE`
({dir} = the image's folder, {stem} = its name without suffix), or `--manifest CSV` (image,mask[,label]).
An image's class is its parent folder's name unless the manifest gives one; an image without a mask, or with an
all-zero mask (at --mask-threshold), is good."""
from __future__ import annotations

import csv
import os
import string
from pathlib import Path

from defect_vision.data.images import IMAGE_SUFFIXES, read_mask
from defect_vision.data.records import GOOD
from defect_vision.data.samples import Sample, normalise_label
from defect_vision.errors import DatasetError

LAYOUT = "--images GLOB with --masks TEMPLATE, or --manifest CSV with columns image,mask[,label]"
FIELDS = ("dir", "stem")


def looks_like(cat_root: Path) -> bool:
    """Never detected from files: --images or --manifest choose this layout."""
    return False


def read_table(path: Path, required: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    """(line number, {column: stripped text}) for each row of a CSV file with a header line (UTF-8, BOM and CRLF
    allowed); DatasetError when the file or a required column is missing."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such CSV file")
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip().lower() for h in reader.fieldnames or []]
            missing = [c for c in required if c not in header]
            if missing:
                raise DatasetError(f"{path}: no column {', '.join(missing)} in the header line (expected "
                                   f"{','.join(required)}, found {','.join(header) or 'nothing'})")
            reader.fieldnames = header
            rows = []
            for row in reader:
                if any(v and v.strip() for k, v in row.items() if k is not None):  # blank lines are skipped
                    rows.append((reader.line_num, {k: (v or "").strip() for k, v in row.items() if k is not None}))
            return rows
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{path}: not a readable CSV file ({exc.__class__.__name__}: {exc})") from None


def under_root(root: Path, text: str) -> Path:
    """A path from a command line or CSV (absolute, or relative to root), absolute and normalised ('a/../b' -> 'b')."""
    path = Path(text.replace("\\", "/"))
    return Path(os.path.abspath(path if path.is_absolute() else Path(root) / path))


def mask_for(template: str, image: Path, root: Path) -> Path:
    """The mask path the template gives for an image."""
    return under_root(root, template.format(dir=image.parent.as_posix(), stem=image.stem))


def check_template(template: str) -> None:
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:
        raise DatasetError(f"--masks {template}: not a valid template ({exc})") from None
    unknown = sorted(fields - set(FIELDS))
    if unknown:
        raise DatasetError(f"--masks {template}: unknown field {{{unknown[0]}}} (use {{dir}} and {{stem}})")
    if "stem" not in fields:
        raise DatasetError(f"--masks {template}: needs {{stem}} (the image's name without suffix)")


def _file_name(root: Path, image: Path, what: str) -> str:
    try:
        return image.relative_to(os.path.abspath(root)).as_posix()
    except ValueError:
        raise DatasetError(f"{image}: {what} lies outside --root {root}") from None


def _label_of(image: Path, mask: Path, threshold: int, label: str | None) -> str:
    """The class of an image with a mask file: the given label, else GOOD for an all-zero mask, else the folder."""
    if label:
        return label
    if not read_mask(mask, threshold).any():
        return GOOD
    folder = normalise_label(image.parent.name)
    if folder == GOOD:
        raise DatasetError(f"{mask}: mask has defect pixels but its image {image} is in a folder named "
                           f"'{image.parent.name}'")
    return folder


def from_glob(root: Path, pattern: str, template: str, threshold: int) -> list[Sample]:
    """--images GLOB --masks TEMPLATE; files the glob matches that are some image's mask are not images."""
    check_template(template)
    try:
        matched = [p for p in root.glob(pattern) if p.is_file()]
    except (ValueError, NotImplementedError) as exc:
        raise DatasetError(f"--images {pattern}: not a usable glob relative to --root ({exc})") from None
    found = sorted(p for p in matched if p.suffix.lower() in IMAGE_SUFFIXES)
    if matched and not found:
        suffixes = sorted({p.suffix.lower() or "(none)" for p in matched})
        raise DatasetError(f"{root}: no image matches --images '{pattern}' ({len(matched)} files match, none with an "
                           f"image suffix: found {', '.join(suffixes)}; read are {', '.join(sorted(IMAGE_SUFFIXES))})")
    found = [Path(os.path.abspath(p)) for p in found]
    masks = {p: mask_for(template, p, root) for p in found}
    taken = {m for p, m in masks.items() if m != p}
    images = [p for p in found if p not in taken]
    for image in images:
        if masks[image] == image:
            raise DatasetError(f"{image}: --masks {template} names the image itself as its mask")
    if not images:
        raise DatasetError(f"{root}: no image matches --images '{pattern}'" + (" (only mask files)" if found else
                                                                               " (no file matches)"))
    out = []
    for image in images:
        mask = masks[image]
        name = _file_name(root, image, "image")
        if not mask.is_file():
            out.append(Sample(image, name, GOOD))
            continue
        label = _label_of(image, mask, threshold, None)
        out.append(Sample(image, name, label, () if label == GOOD else (mask,)))
    return out


def from_manifest(root: Path, manifest: Path, threshold: int) -> list[Sample]:
    """--manifest CSV: image,mask[,label] per row (paths relative to --root); an empty mask means a good image."""
    out = []
    for line, row in read_table(manifest, ("image", "mask")):
        if not row["image"]:
            raise DatasetError(f"{manifest}: line {line}: no image path")
        image = under_root(root, row["image"])
        name = _file_name(root, image, f"image of {manifest} line {line}")
        label = normalise_label(row.get("label", ""))
        if not row["mask"] or label == GOOD:
            out.append(Sample(image, name, label or GOOD))
            continue
        mask = under_root(root, row["mask"])
        if not mask.is_file():
            raise DatasetError(f"{mask}: missing mask for image {image} ({manifest} line {line})")
        label = _label_of(image, mask, threshold, label)
        out.append(Sample(image, name, label, () if label == GOOD else (mask,)))
    if not out:
        raise DatasetError(f"{manifest}: no rows (expected a header line image,mask[,label] and one row per image)")
    return out


def samples(source) -> list[Sample]:
    root = Path(source.root)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such folder (the dataset root)")
    if source.manifest and source.images:
        raise DatasetError(f"--manifest {source.manifest} and --images {source.images}: give only one of them")
    if source.manifest:
        return from_manifest(root, Path(source.manifest), source.mask_threshold)
    if not source.images:
        raise DatasetError("--format folder: needs --images GLOB (with --masks TEMPLATE) or --manifest CSV")
    if not source.masks:
        raise DatasetError(f"--images {source.images}: needs --masks TEMPLATE (e.g. '{{dir}}/{{stem}}_mask.png'), "
                           "or use --manifest CSV")
    return from_glob(root, source.images, source.masks, source.mask_threshold)
