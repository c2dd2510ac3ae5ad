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

from converters.errors import DatasetError
from converters.io import read_json
from converters.mvtec import IMAGE_SUFFIXES, read_image


@dataclass
class SourceImage:
    id: int  # image id in predictions.json: the COCO json's, or 1..N by sorted path
    path: Path  # absolute path of the image file
    file_name: str  # path relative to the source folder / the json's image_root
    name: str  # output stem of masks/<name>.png and overlays/<name>.png (unique within the run)
    height: int | None = None  # as the COCO json says (checked against the file), None otherwise
    width: int | None = None


@dataclass
class Source:
    images: list[SourceImage]
    kind: str  # "coco" | "folder" | "glob" | "file"
    coco: dict | None = None  # the json when kind == "coco"
    origin: str = ""



def output_name(file_name: str) -> str:
    """'test/hole/003.png' -> 'test_hole_003': stems alone collide across MVTec defect folders."""
    return Path(file_name).with_suffix("").as_posix().replace("/", "_")


def _unique_names(images: list[SourceImage]) -> list[SourceImage]:
    seen: set[str] = set()
    for img in images:
        if img.name in seen:  # e.g. a.png next to a.jpg
            img.name = f"{img.name}_{img.id}"
        seen.add(img.name)
    return images


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def from_coco(path: Path) -> Source:
    """Images of a COCO instances json (converters' format): info.image_root + file_name, keeping its ids."""
    coco = read_json(path, "COCO json")
    if not isinstance(coco, dict) or not isinstance(coco.get("images"), list):
        raise DatasetError(f"{path}: not a COCO instances json (no 'images' list)")
    root = (coco.get("info") or {}).get("image_root")
    if not root:
        raise DatasetError(f"{path}: info.image_root is missing (the folder that file_name is relative to)")
    images = []
    for entry in coco["images"]:
        try:
            images.append(SourceImage(int(entry["id"]), (Path(root) / entry["file_name"]).resolve(), entry["file_name"],
                                      output_name(entry["file_name"]), entry.get("height"), entry.get("width")))
        except (KeyError, TypeError, ValueError):
            raise DatasetError(f"{path}: image entry without an integer 'id' and a 'file_name': {entry!r:.120}") from None
    if len({i.id for i in images}) != len(images):
        raise DatasetError(f"{path}: duplicate image ids")
    if not images:
        raise DatasetError(f"{path}: no images")
    return Source(_unique_names(sorted(images, key=lambda i: i.id)), "coco", coco, str(path))


def _numbered(paths: list[Path], base: Path, kind: str, origin: str) -> Source:
    paths = sorted({p.resolve() for p in paths}, key=lambda p: p.relative_to(base).as_posix())
    images = [SourceImage(i, p, p.relative_to(base).as_posix(), output_name(p.relative_to(base).as_posix()))
              for i, p in enumerate(paths, 1)]
    return Source(_unique_names(images), kind, None, origin)


def resolve_source(source: str | Path) -> Source:
    """A folder (images found recursively), a glob, one image file, or a COCO json; DatasetError if no image."""
    text = str(source)
    path = Path(text)
    if path.suffix.lower() == ".json":
        return from_coco(path)
    if path.is_dir():
        base = path.resolve()
        found = [p for p in base.rglob("*") if _is_image(p)]
        if not found:
            raise DatasetError(f"{path}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in this folder")
        return _numbered(found, base, "folder", text)
    if path.is_file():
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise DatasetError(f"{path}: not an image file (expected {', '.join(sorted(IMAGE_SUFFIXES))}) or a COCO .json")
        return _numbered([path], path.resolve().parent, "file", text)
    if glob.has_magic(text):
        found = [Path(p).resolve() for p in glob.glob(text, recursive=True) if _is_image(Path(p))]
        if not found:
            raise DatasetError(f"{text}: no images match this pattern")
        base = Path(os.path.commonpath([p.parent for p in found]))
        return _numbered(found, base, "glob", text)
    raise DatasetError(f"{text}: no such file or folder")


@dataclass
class Loaded:
    image: SourceImage
    pixels: np.ndarray | None  # RGB uint8 HxWx3, None when unreadable
    error: str | None = None
    load_s: float = 0.0


def read_source_image(img: SourceImage) -> Loaded:
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


def prefetch(images: list[SourceImage], depth: int = 4) -> Iterator[Loaded]:
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
