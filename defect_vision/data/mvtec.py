"""Read an MVTec AD category (<root>/<category>/{train/good, test/<defect>, ground_truth/<defect>}) into records."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from defect_vision.errors import DatasetError
from defect_vision.data.records import GOOD, Category, ImageRecord, mask_to_instances

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


def list_categories(root: Path) -> list[str]:
    """Category folders under root (those with a test/ folder)."""
    if not root.is_dir():
        raise DatasetError(f"{root}: no such folder (the MVTec AD root)")
    return sorted(p.name for p in root.iterdir() if (p / "test").is_dir())


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []


def _png_is_cut_short(f) -> bool:
    """True if an open PNG file lacks its closing IEND chunk (a truncated copy or download): one seek, no decoding."""
    f.seek(0, 2)
    f.seek(max(0, f.tell() - 1024))
    return b"IEND" not in f.read()


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) from the image header alone; DatasetError if it is not a readable image or a cut-short PNG."""
    try:
        with Image.open(path) as im:
            width, height = im.size
            truncated = im.format == "PNG" and _png_is_cut_short(im.fp)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DatasetError(f"{path}: not a readable image ({exc.__class__.__name__})") from None
    if truncated:
        raise DatasetError(f"{path}: not a readable image (truncated PNG: no IEND chunk)")
    return height, width


def read_mask(path: Path) -> np.ndarray:
    """Binary mask (> 0) of a ground-truth PNG; any colour channel counts (an alpha channel does not)."""
    data = np.fromfile(path, np.uint8) if path.is_file() else np.zeros(0, np.uint8)
    mask = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if mask is None:
        raise DatasetError(f"{path}: not a readable mask image")
    if mask.ndim == 3:
        mask = mask[..., :3].max(axis=2)  # BGR(A): an opaque alpha channel is not a defect
    return mask > 0


def read_image(path: Path) -> np.ndarray:
    """RGB uint8 HxWx3 image; grayscale images come back as 3 channels."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: missing (no such image file)")
    data = np.fromfile(path, np.uint8) if path.is_file() else np.zeros(0, np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None  # IMREAD_COLOR: gray -> 3 channels
    if img is None:
        raise DatasetError(f"{path}: not a readable image")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def iter_image_paths(cat_root: Path) -> Iterator[tuple[str, Path]]:
    """(defect type, image path) for train/good and every test/<type> image."""
    for p in _images_in(cat_root / "train" / GOOD):
        yield GOOD, p
    for d in sorted(p for p in (cat_root / "test").iterdir() if p.is_dir()):
        for p in _images_in(d):
            yield d.name, p


def mask_path_for(cat_root: Path, defect_type: str, image: Path) -> Path:
    return cat_root / "ground_truth" / defect_type / f"{image.stem}_mask.png"


def read_record(cat_root: Path, defect_type: str, path: Path, min_area: int) -> ImageRecord:
    """One image record: header size, and for a defect image its mask split into instances."""
    height, width = image_size(path)
    rec = ImageRecord(path.relative_to(cat_root).as_posix(), path if path.is_absolute() else path.resolve(), height, width, defect_type)
    if rec.is_good:
        return rec
    rec.mask_path = mask_path_for(cat_root, defect_type, path)
    if not rec.mask_path.is_file():
        raise DatasetError(f"{rec.mask_path}: missing mask for defect image {path}")
    mask = read_mask(rec.mask_path)
    if mask.shape != (height, width):
        raise DatasetError(
            f"{rec.mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but its image {path.name} is {width}x{height}"
        )
    if not mask.any():
        raise DatasetError(f"{rec.mask_path}: mask is empty (no defect pixel) for defect image {path.name}")
    rec.instances, rec.dropped_specks = mask_to_instances(mask, defect_type, min_area)
    return rec


def category_root(root: Path, category: str) -> Path:
    found = list_categories(root)
    if not found:
        raise DatasetError(f"{root}: no MVTec categories found (expected {root}/<category>/test/<defect>/*.png)")
    if category not in found:
        raise DatasetError(f"{root}: unknown category '{category}' (found: {', '.join(found)})")
    return root / category


def read_category(root: Path, category: str, min_area: int = 10, progress: bool = False) -> Category:
    """Read every image of a category; DatasetError on the first bad file."""
    from tqdm import tqdm

    cat_root = category_root(Path(root), category).resolve()  # once: every image path below is absolute
    paths = list(iter_image_paths(cat_root))
    if not paths:
        raise DatasetError(f"{cat_root}: no images under test/ or train/good/")
    records = [
        read_record(cat_root, t, p, min_area)
        for t, p in tqdm(paths, desc=f"read {category}", unit="img", disable=not progress)
    ]
    records.sort(key=lambda r: r.file_name)
    defect_types = sorted({r.defect_type for r in records if not r.is_good})
    return Category(category, cat_root, records, defect_types)
