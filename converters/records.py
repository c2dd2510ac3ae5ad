"""The one internal record for "an image and its instances": the reader fills it, every format writes it."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

GOOD = "good"


@dataclass
class Instance:
    """One defect instance: an 8-connected component of a ground-truth mask."""

    category: str  # defect type (folder name)
    bbox: tuple[int, int, int, int]  # x, y, w, h (tight, pixels)
    area: int  # pixel count
    rle: dict  # pycocotools compressed RLE of the full-size mask, counts as str
    polygons: list[list[float]]  # hole-free rings [x0, y0, x1, y1, ...] whose union is the component
    point: tuple[float, float]  # a positive point well inside the mask (distance-transform maximum)

    @property
    def xyxy(self) -> tuple[int, int, int, int]:
        x, y, w, h = self.bbox
        return x, y, x + w, y + h


@dataclass
class ImageRecord:
    file_name: str  # path relative to the category root, e.g. "test/hole/003.png"
    path: Path  # absolute path of the image
    height: int
    width: int
    defect_type: str  # "good" for good images
    mask_path: Path | None = None
    instances: list[Instance] = field(default_factory=list)
    dropped_specks: int = 0  # components below --min-area

    @property
    def is_good(self) -> bool:
        return self.defect_type == GOOD

    @property
    def stem(self) -> str:
        return Path(self.file_name).stem


@dataclass
class Category:
    """A whole MVTec category as read from disk."""

    name: str  # e.g. "wood"
    root: Path  # <root>/<name>
    images: list[ImageRecord]  # sorted by file_name; image id = index + 1
    defect_types: list[str]  # sorted; category id = index + 1

    def image_id(self, rec: ImageRecord) -> int:
        return self.images.index(rec) + 1

    def category_id(self, defect_type: str) -> int:
        return self.defect_types.index(defect_type) + 1
