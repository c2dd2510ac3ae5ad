"""Image and mask files: suffixes, header-only sizes (with truncated-PNG detection), RGB pixels, binary masks."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from defect_vision.errors import DatasetError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


def images_in(folder: Path) -> list[Path]:
    """The image files directly in a folder, sorted (none if it does not exist)."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()) if folder.is_dir() else []


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
    except FileNotFoundError:
        raise DatasetError(f"{path}: missing (no such image file)") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ImportError) as exc:
        # ImportError: once ultralytics is imported, its patched Image.open answers an unknown file by importing
        # an optional HEIF plugin (absent offline) instead of raising UnidentifiedImageError
        raise DatasetError(f"{path}: not a readable image ({exc.__class__.__name__})") from None
    if truncated:
        raise DatasetError(f"{path}: not a readable image (truncated PNG: no IEND chunk)")
    return height, width


def read_mask(path: Path, threshold: int = 0) -> np.ndarray:
    """Binary mask (value > threshold) of a ground-truth image (PNG, BMP, TIF, JPEG; 8 or 16 bit); any colour channel
    counts, an alpha channel does not."""
    data = np.fromfile(path, np.uint8) if Path(path).is_file() else np.zeros(0, np.uint8)
    mask = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if mask is None:
        raise DatasetError(f"{path}: not a readable mask image")
    if mask.ndim == 3:
        mask = mask[..., :3].max(axis=2)  # BGR(A): an opaque alpha channel is not a defect
    return mask > threshold


def read_image(path: Path) -> np.ndarray:
    """RGB uint8 HxWx3 image; grayscale images come back as 3 channels, 16-bit ones scaled to 8 bit."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: missing (no such image file)")
    data = np.fromfile(path, np.uint8) if path.is_file() else np.zeros(0, np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None  # IMREAD_COLOR: gray -> 3 ch, 16 -> 8 bit
    if img is None:
        raise DatasetError(f"{path}: not a readable image")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
