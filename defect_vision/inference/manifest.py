"""`--source images.csv`: a CSV listing the images to predict (column `image`; other columns, e.g. the converters'
mask,label, are ignored). Paths are absolute or relative to the CSV's folder; ids are 1..N in row order."""
from __future__ import annotations

import os
from pathlib import Path

from defect_vision.data.folder import read_table, under_root
from defect_vision.detections import ImageInfo
from defect_vision.errors import DatasetError


def manifest_images(path: Path) -> list[ImageInfo]:
    """Images with ids 1..N in row order and file names relative to their common folder; a listed
    file that is missing stays in the list (predict reports it as skipped, as it does for a COCO json)."""
    path = Path(path)
    rows = read_table(path, ("image",))
    paths: list[Path] = []
    first_line: dict[Path, int] = {}
    for line, row in rows:
        if not row["image"]:
            raise DatasetError(f"{path}: line {line}: no image path")
        image = Path(os.path.realpath(under_root(path.parent.resolve(), row["image"])))
        if image in first_line:
            raise DatasetError(f"{path}: line {line}: {row['image']} is listed twice (first on line {first_line[image]})")
        first_line[image] = line
        paths.append(image)
    if not paths:
        raise DatasetError(f"{path}: no rows (expected a header line with a column 'image' and one row per image)")
    base = Path(os.path.commonpath([p.parent for p in paths]))
    return [ImageInfo(i, p.relative_to(base).as_posix(), path=p) for i, p in enumerate(paths, 1)]
