"""Image and mask files: suffixes, header-only sizes as the pixel readers decode them (EXIF orientation applied;
truncated PNG and JPEG detected), RGB pixels, label and binary masks."""
from __future__ import annotations

import struct
import sys
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from defect_vision.errors import DatasetError

if TYPE_CHECKING:  # PIL is imported only for what the PNG fast path below leaves to it
    from PIL import Image

# what OpenCV, PIL and ultralytics all read
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
ORIENTATION = 0x0112  # EXIF tag; values 5-8 turn the image by 90 degrees (width and height swap)
JPEG_EOI = b"\xff\xd9"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_HEAD = 4096  # bytes read for the header chunks; a PNG whose IDAT starts later goes to PIL
# header chunks PIL reads without error or EXIF when complete and of this length (None: any); others go to PIL
PNG_PLAIN_CHUNKS = {b"gAMA": 4, b"sRGB": 1, b"pHYs": 9, b"cHRM": 32, b"tEXt": None, b"bKGD": None, b"tIME": None,
                    b"sBIT": None}
# (bit depth, colour type) pairs PIL opens (PngImagePlugin._MODES)
PNG_MODES = {(1, 0), (1, 3), (2, 0), (2, 3), (4, 0), (4, 3), (8, 0), (8, 2), (8, 3), (8, 4), (8, 6), (16, 0), (16, 2),
             (16, 4), (16, 6)}
PIL_MAX_PIXELS = 89478485  # PIL.Image.MAX_IMAGE_PIXELS' default: above it PIL warns, so those go to PIL


def images_in(folder: Path) -> list[Path]:
    """The image files directly in a folder, sorted (none if it does not exist)."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()) if folder.is_dir() else []


def _png_is_cut_short(f) -> bool:
    """True if an open PNG file lacks its closing IEND chunk (a truncated copy or download): one seek, no decoding."""
    f.seek(0, 2)
    f.seek(max(0, f.tell() - 1024))
    return b"IEND" not in f.read()


def _jpeg_is_cut_short(im: Image.Image) -> bool:
    """True if an open JPEG lacks its end-of-image marker after the start of its scan (OpenCV then refuses it).
    The tail is read first; only a file with data after its end marker is read further."""
    f, scan = im.fp, im.tile[0][2] if im.tile else 0
    f.seek(0, 2)
    size = f.tell()
    f.seek(max(scan, size - 1024))
    if JPEG_EOI in f.read():
        return False
    f.seek(scan)
    return JPEG_EOI not in f.read()


def _turned(im: Image.Image) -> bool:
    """True if the file's EXIF orientation turns it by 90 degrees, as OpenCV applies when decoding (5-8). Reads only
    what the header parse holds (a PNG's eXIf chunk after its pixels is not looked for, so nothing is decoded).
    A TIFF's orientation is a tag of its own, which PIL's size already applies."""
    if "exif" not in im.info:
        return False
    from PIL import Image

    try:
        exif = Image.Exif()
        exif.load(im.info["exif"])
        return int(exif.get(ORIENTATION) or 1) in (5, 6, 7, 8)
    except (ValueError, TypeError, OSError, SyntaxError):
        return False  # unreadable EXIF: OpenCV ignores it too


def _plain_png_size(f) -> tuple[int, int] | None:
    """(width, height) of an open PNG whose header chunks (up to its first IDAT) are plain ones, complete, with
    good checksums, as PIL reads them; None for anything else (not a PNG, EXIF, an unusual or damaged header, a huge
    image), which PIL then reads as before: same sizes, same errors, and PIL is imported only for those."""
    head = f.read(PNG_HEAD)
    if not head.startswith(PNG_SIGNATURE):
        return None
    pos, size = len(PNG_SIGNATURE), None
    while pos + 8 <= len(head):
        length, cid = struct.unpack_from(">I4s", head, pos)
        if cid == b"IDAT":
            return size
        end = pos + 12 + length
        data = head[pos + 8 : end - 4]
        if end > len(head) or zlib.crc32(data, zlib.crc32(cid)) != int.from_bytes(head[end - 4 : end], "big"):
            return None
        if cid == b"IHDR" and size is None and length == 13:
            width, height, depth, colour, _, flt, _ = struct.unpack(">IIBBBBB", data)
            limit = getattr(sys.modules.get("PIL.Image"), "MAX_IMAGE_PIXELS", PIL_MAX_PIXELS)  # as set, if imported
            if not (0 < width and 0 < height and (depth, colour) in PNG_MODES and flt == 0) or (
                    limit is not None and width * height > limit):
                return None
            size = width, height
        elif size is None or cid not in PNG_PLAIN_CHUNKS or PNG_PLAIN_CHUNKS[cid] not in (None, length) or (
                cid == b"tEXt" and data.split(b"\0", 1)[0] == b"exif"):
            return None
        pos = end
    return None


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) of the pixels the readers decode (EXIF orientation applied), from the header alone;
    DatasetError if it is not a readable image or a cut-short PNG or JPEG. A plain PNG is read here; everything
    else (JPEG, EXIF, other formats, an unusual header) by PIL."""
    try:
        with open(path, "rb") as f:
            size = _plain_png_size(f)
            if size is not None:
                (width, height), cut = size, _png_is_cut_short(f)
        if size is None:
            width, height, cut = _pil_size(path)
    except FileNotFoundError:
        raise DatasetError(f"{path}: missing (no such image file)") from None
    except (OSError, SyntaxError, ImportError) as exc:  # PIL's UnidentifiedImageError is an OSError
        # ImportError: once ultralytics is imported, its patched Image.open answers an unknown file by importing
        # an optional HEIF plugin (absent offline) instead of raising UnidentifiedImageError
        raise DatasetError(f"{path}: not a readable image ({exc.__class__.__name__})") from None
    if cut:
        kind = "PNG: no IEND chunk" if path.suffix.lower() == ".png" else "JPEG: no end-of-image marker"
        raise DatasetError(f"{path}: not a readable image (truncated {kind})")
    return height, width


def _pil_size(path: Path) -> tuple[int, int, bool]:
    """(width, height as decoded, cut short) read by PIL."""
    from PIL import Image

    with Image.open(path) as im:
        width, height = im.size
        if _turned(im):
            width, height = height, width
        cut = (im.format == "PNG" and _png_is_cut_short(im.fp)) or (im.format in ("JPEG", "MPO")
                                                                     and _jpeg_is_cut_short(im))
    return width, height, cut


def read_label_mask(path: Path) -> np.ndarray:
    """The values of a ground-truth image (PNG, BMP, TIF, JPEG, WebP; 8 or 16 bit) as HxW, the largest colour
    channel where it has several (an alpha channel does not count); EXIF orientation applied, as for the image."""
    data = np.fromfile(path, np.uint8) if Path(path).is_file() else np.zeros(0, np.uint8)
    # ANYDEPTH | ANYCOLOR: 16 bit and colour kept, alpha dropped, EXIF orientation applied (UNCHANGED ignores it)
    mask = cv2.imdecode(data, cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR) if data.size else None
    if mask is None:
        raise DatasetError(f"{path}: not a readable mask image")
    return mask.max(axis=2) if mask.ndim == 3 else mask


def read_mask(path: Path, threshold: int = 0) -> np.ndarray:
    """Binary mask (value > threshold) of a ground-truth image; see read_label_mask."""
    return read_label_mask(path) > threshold


def read_image(path: Path) -> np.ndarray:
    """RGB uint8 HxWx3 image; grayscale images come back as 3 channels, 16-bit ones scaled to 8 bit; EXIF
    orientation applied (as ultralytics and viewers do)."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: missing (no such image file)")
    data = np.fromfile(path, np.uint8) if path.is_file() else np.zeros(0, np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None  # IMREAD_COLOR: gray -> 3 ch, 16 -> 8 bit
    if img is None:
        raise DatasetError(f"{path}: not a readable image")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
