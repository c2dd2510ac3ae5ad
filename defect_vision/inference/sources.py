"""What to predict on: a folder, a glob, one image file, or a COCO json (its images and ids)."""
from __future__ import annotations

import glob
import os
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from defect_vision.coco import CocoDataset, load_coco
from defect_vision.data.images import IMAGE_SUFFIXES, read_image
from defect_vision.detections import ImageInfo
from defect_vision.errors import DatasetError


@dataclass
class Source:
    images: list[ImageInfo]  # id: the COCO json's, or 1..N by sorted path; file_name: relative to the source
    kind: str  # "coco" | "folder" | "glob" | "file" | "manifest"
    names: dict[int, str]  # image id -> output stem of masks/<name>.png and overlays/<name>.png (unique in the run)
    coco: CocoDataset | None = None  # the json when kind == "coco"
    origin: str = ""

    def inputs(self) -> list[Path]:
        """What the run reads: the folder (and the files its symlinked images point to outside it), or the json
        and its image files (an output folder must hold none)."""
        if self.kind == "folder":
            folder = Path(self.origin).resolve()
            return [Path(self.origin)] + [im.path for im in self.images if folder not in im.path.parents]
        paths = [im.path for im in self.images]
        return paths + ([Path(self.origin)] if self.kind in ("coco", "manifest") else [])


def output_name(file_name: str) -> str:
    """'test/hole/003.png' -> 'test_hole_003': stems alone collide across MVTec defect folders."""
    return Path(file_name).with_suffix("").as_posix().replace("/", "_")


def _unique_names(images: list[ImageInfo]) -> dict[int, str]:
    names: dict[int, str] = {}
    seen: set[str] = set()
    for img in images:
        name = output_name(img.file_name)
        if name in seen:  # e.g. a.png next to a.jpg
            name = f"{name}_{img.id}"
        seen.add(name)
        names[img.id] = name
    return names


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def from_coco(path: Path) -> Source:
    """Images of a COCO instances json: info.image_root (else the json's folder) + file_name, keeping its ids."""
    coco = load_coco(path, masks=False)
    if not coco.images:
        raise DatasetError(f"{path}: no images")
    images = sorted(coco.images, key=lambda i: i.id)
    return Source(images, "coco", _unique_names(images), coco, str(path))


def from_manifest(path: Path) -> Source:
    """Images listed by a CSV (column `image`), ids 1..N in row order (inference/manifest.py)."""
    from defect_vision.inference.manifest import manifest_images

    images = manifest_images(path)
    return Source(images, "manifest", _unique_names(images), None, str(path))


def _absolute(path: str | Path) -> Path:
    """The path made absolute without following symlinks: names come from the paths as given, not the links' targets."""
    return Path(os.path.abspath(path))


def _numbered(paths: list[Path], base: Path, kind: str, origin: str) -> Source:
    """Ids 1..N and file names by the paths relative to `base` as found (a symlinked image keeps its own name);
    `path` is the file read, links resolved (what a COCO json's images are matched against)."""
    names = {_absolute(p).relative_to(base).as_posix(): p for p in paths}
    images = [ImageInfo(i, name, path=Path(names[name]).resolve()) for i, name in enumerate(sorted(names), 1)]
    return Source(images, kind, _unique_names(images), None, origin)


def _known() -> str:
    return ", ".join(sorted(IMAGE_SUFFIXES))


def _no_images(message: str, files: list[Path]) -> DatasetError:
    """`message`, plus the suffixes of the files that are there instead of images, when there are some."""
    suffixes = sorted({p.suffix.lower() or "no suffix" for p in files})
    found = f"; found {len(files)} file(s) of other kinds ({', '.join(suffixes[:10])}{', ...' if len(suffixes) > 10 else ''})"
    return DatasetError(message + (found if files else ""))


def resolve_source(source: str | Path) -> Source:
    """A folder (images found recursively), a glob, one image file, or a COCO json; DatasetError if no image."""
    text = str(source)
    path = Path(text)
    if path.suffix.lower() == ".json":
        return from_coco(path)
    if path.suffix.lower() == ".csv":
        return from_manifest(path)
    if path.is_dir():
        base = _absolute(path)
        files = [p for p in base.rglob("*") if p.is_file()]
        found = [p for p in files if _is_image(p)]
        if not found:
            raise _no_images(f"{path}: no images ({_known()}) in this folder", files)
        return _numbered(found, base, "folder", text)
    if path.is_file():
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise DatasetError(f"{path}: not an image file (expected {_known()}) or a COCO .json")
        return _numbered([path], _absolute(path).parent, "file", text)
    if glob.has_magic(text):
        files = [_absolute(p) for p in glob.glob(text, recursive=True) if Path(p).is_file()]
        found = [p for p in files if _is_image(p)]
        if not found:
            raise _no_images(f"{text}: no images match this pattern ({_known()})", files)
        base = Path(os.path.commonpath([p.parent for p in found]))
        return _numbered(found, base, "glob", text)
    raise DatasetError(f"{text}: no such file or folder")


@dataclass
class Loaded:
    image: ImageInfo
    pixels: np.ndarray | None  # RGB uint8 HxWx3, None when unreadable
    error: str | None = None
    load_s: float = 0.0


def read_source_image(img: ImageInfo) -> Loaded:
    """Read one image; an unreadable one (or one whose size differs from its json entry) comes back with error."""
    t0 = time.perf_counter()
    try:
        pixels = read_image(img.path)
    except DatasetError as exc:
        return Loaded(img, None, str(exc), time.perf_counter() - t0)
    except Exception as exc:  # noqa: BLE001 - any decoder failure is an unreadable image
        return Loaded(img, None, f"{img.path}: not a readable image ({exc.__class__.__name__})", time.perf_counter() - t0)
    h, w = pixels.shape[:2]
    if img.height is not None and img.width is not None and (img.height, img.width) != (h, w):
        return Loaded(img, None, f"{img.path}: image is {w}x{h} but the json says {img.width}x{img.height}",
                      time.perf_counter() - t0)
    return Loaded(img, pixels, None, time.perf_counter() - t0)


def prefetch(images: list[ImageInfo], depth: int = 4) -> Iterator[Loaded]:
    """Yield loaded images in order while a background thread reads the next ones (overlaps I/O with the models)."""
    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()
    done = object()

    def work() -> None:
        try:
            for img in images:
                if stop.is_set():
                    return
                q.put(read_source_image(img))
        finally:
            q.put(done)

    thread = threading.Thread(target=work, name="image-loader", daemon=True)
    thread.start()
    try:
        while (item := q.get()) is not done:
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # drain so the loader can see `stop` and end
            try:
                q.get(timeout=0.05)
            except queue.Empty:
                pass
        thread.join()
