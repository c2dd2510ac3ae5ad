"""What the readers of labelling tools' exports (coco, yolo, labelstudio, cvat) share: which export an annotation
file is, finding an image an export names under --root, the notes of what a reader skipped, one sample per image."""
from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath
from urllib.parse import parse_qs, unquote, urlparse

from defect_vision.data.images import IMAGE_SUFFIXES
from defect_vision.data.records import GOOD
from defect_vision.data.samples import Sample, strict_error
from defect_vision.data.shapes import Shape, majority_label
from defect_vision.errors import DatasetError

UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-")  # Label Studio renames an uploaded img.png to 1a2b3c4d-img.png


def annotation_format(path: Path) -> str:
    """The export an annotation file is (--format auto with --annotations): an XML -> cvat, a JSON list (tasks) ->
    labelstudio, a JSON object with 'images' -> coco."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such annotation file (--annotations)")
    if path.suffix.lower() == ".xml":
        return "cvat"
    with path.open("rb") as f:
        head = f.read(4096).lstrip()
    if head.startswith(b"["):
        return "labelstudio"
    if head.startswith(b"{"):
        return "coco"
    raise DatasetError(f"{path}: not an annotation file of a known tool (CVAT XML, Label Studio JSON tasks or COCO json)")


class Notes(list):
    """(kind, where) of what a reader skipped; strict: DatasetError on the first instead."""

    def __init__(self, strict: bool):
        super().__init__()
        self.strict = strict

    def add(self, kind: str, where: str) -> None:
        if self.strict:
            raise strict_error(kind, where)
        self.append((kind, where))


class ImageFinder:
    """An image an export names, under --root: the name as a path relative to root (leading '/' dropped), else a
    file of the same base name anywhere under root (one only; Label Studio's 8-hex upload prefix may be missing on
    disk). Names are Label Studio URLs (/data/upload/3/x.png, /data/local-files/?d=a/x.png), http URLs or paths."""

    def __init__(self, root: Path):
        self.root = Path(os.path.abspath(root))
        self._by_name: dict[str, list[Path]] | None = None

    def _index(self) -> dict[str, list[Path]]:
        if self._by_name is None:
            self._by_name = {}
            for folder, dirs, files in os.walk(self.root):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for f in sorted(files):
                    if os.path.splitext(f)[1].lower() in IMAGE_SUFFIXES:
                        self._by_name.setdefault(f, []).append(Path(folder) / f)
        return self._by_name

    @staticmethod
    def candidates(name: str) -> list[str]:
        """The relative paths a name may mean, most literal first."""
        url = urlparse(name)
        if url.query and "d" in parse_qs(url.query):  # Label Studio local files: /data/local-files/?d=path
            name = parse_qs(url.query)["d"][0]
        elif url.scheme in ("http", "https", "s3", "gs", "azure-blob"):
            name = url.path
        name = unquote(name).replace("\\", "/")
        parts = [p for p in PurePosixPath(name).parts if p not in ("/", ".", "..")]
        return ["/".join(parts[i:]) for i in range(len(parts))]

    def find(self, name: str, base: Path | None = None) -> Path | None:
        """The image file a name means (relative to `base`, then root, then by base name), None when not found."""
        tails = self.candidates(name)
        if not tails:
            return None
        for folder in [p for p in (base, self.root) if p is not None]:
            for tail in tails:
                path = Path(folder) / tail
                if path.is_file():
                    return Path(os.path.abspath(path))
        base_name = tails[-1]
        found = self._index().get(base_name) or self._index().get(UPLOAD_PREFIX.sub("", base_name), [])
        if len(found) > 1:
            raise DatasetError(f"{name}: {len(found)} images of that name under {self.root} ({found[0]}, {found[1]}): "
                               "pass the image folder as --root")
        return found[0] if found else None

    def file_name(self, path: Path) -> str:
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            raise DatasetError(f"{path}: image lies outside --root {self.root}") from None


def labelled_sample(finder: ImageFinder, name: str, shapes: list[Shape], listed_in: Path,
                    size: tuple[int, int] | None = None, split: str | None = None, base: Path | None = None) -> Sample:
    """The sample of one image an export names (its label: the most frequent class of its shapes, GOOD for none). An
    image not found keeps a path under root that does not exist: `present` then skips it with one warning line
    (strict: error)."""
    path = finder.find(name, base)
    if path is None:
        tail = (finder.candidates(name) or [name])[-1]
        path = finder.root / "(not found)" / tail
    extra: dict = {"listed_in": listed_in}
    if size is not None and all(size):
        extra["size"] = (int(size[0]), int(size[1]))
    if split is not None:
        extra["split"] = split
    label = majority_label([s.category for s in shapes]) if shapes else GOOD
    return Sample(path, finder.file_name(path), label, extra=extra, shapes=tuple(shapes))
