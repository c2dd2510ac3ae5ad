"""The one internal record for "an image and its instances": the reader fills it, every format writes it."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:  # imported by to_detections: the converters do not need it
    from defect_vision.detections import Detections

GOOD = "good"


@dataclass(eq=False)
class Instance:
    """One defect instance: an 8-connected component of a ground-truth mask, or one labelled shape (data/shapes.py).

    Holds the component's crop; the RLE, polygons and point are computed from it on first use (and kept),
    so each format pays only for what it writes."""

    category: str  # defect type (folder name)
    bbox: tuple[int, int, int, int]  # x, y, w, h (tight, pixels)
    area: int  # pixel count
    crop: np.ndarray  # bool h x w: the component inside its bbox
    image_size: tuple[int, int]  # height, width of the full mask
    box_only: bool = False  # labelled with a box only: crop is the filled box, no mask target (COCO writes no
    # segmentation, YOLO segment and SAM training skip it)

    @property
    def xyxy(self) -> tuple[int, int, int, int]:
        x, y, w, h = self.bbox
        return x, y, x + w, y + h

    def full_mask(self) -> np.ndarray:
        """Bool HxW mask of the component in its image."""
        x, y, w, h = self.bbox
        full = np.zeros(self.image_size, bool, order="F")  # column-major, as pycocotools encodes
        full[y : y + h, x : x + w] = self.crop
        return full

    @cached_property
    def rle(self) -> dict:
        """pycocotools compressed RLE of the full-size mask, counts as str."""
        from defect_vision.masks import encode_rle

        return encode_rle(self.full_mask())

    @cached_property
    def polygons(self) -> list[list[float]]:
        """Hole-free rings [x0, y0, x1, y1, ...] (image coordinates) whose union is the component."""
        from defect_vision.masks import component_polygons

        x, y = self.bbox[:2]
        return [(np.asarray(r).reshape(-1, 2) + [x, y]).ravel().tolist() for r in component_polygons(self.crop)]

    @cached_property
    def point(self) -> tuple[float, float]:
        """A positive point well inside the mask (distance-transform maximum), as pixel x, y."""
        from defect_vision.masks import inner_point

        px, py = inner_point(self.crop)
        return px + self.bbox[0], py + self.bbox[1]


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
    split_hint: str | None = None  # the dataset's own split of this image ("train" | "val" | "test"), where it has one
    notes: list[tuple[str, str]] = field(default_factory=list)  # (kind, where) of labelled shapes clipped or dropped

    @property
    def is_good(self) -> bool:
        return self.defect_type == GOOD

    def to_detections(self, defect_types: list[str], image_id: int = 0) -> Detections:
        """This image's ground truth as the one record: a box, class and exact RLE mask per instance."""
        from defect_vision.detections import Detections, ImageInfo

        return Detections([inst.xyxy for inst in self.instances], [defect_types.index(i.category) for i in self.instances],
                          np.ones(len(self.instances)), rle=[_bytes_rle(i.rle) for i in self.instances],
                          image=ImageInfo(image_id, self.file_name, self.height, self.width, self.path, self.is_good,
                                          {"defect_type": self.defect_type}),
                          class_names=list(defect_types))


def _bytes_rle(rle: dict) -> dict:
    return {"size": list(rle["size"]), "counts": rle["counts"].encode("ascii")}


@dataclass
class Category:
    """A whole MVTec category as read from disk."""

    name: str  # e.g. "wood"
    root: Path  # <root>/<name>
    images: list[ImageRecord]  # sorted by file_name; image id = index + 1
    defect_types: list[str]  # sorted; category id = index + 1
    unlabelled: list[ImageRecord] = field(default_factory=list)  # images without ground truth (prediction only)
    prompts: dict[str, str] = field(default_factory=dict)  # class name -> prompt text (default: '_' -> ' ')
    phrasings: dict[str, list[str]] = field(default_factory=dict)  # class name -> its phrasings (prompt first)
    warnings: list[str] = field(default_factory=list)  # what the read skipped or could not tell (one line each)

    def category_id(self, defect_type: str) -> int:
        return self.defect_types.index(defect_type) + 1


def mask_to_instances(mask: np.ndarray, category: str, min_area: int = 10) -> tuple[list[Instance], int]:
    """One instance per 8-connected component with area >= min_area; returns (instances, dropped specks).

    Only the component's crop is kept; its RLE, polygons and point are computed when first used."""
    mask = mask.view(np.uint8) if mask.dtype == bool else (mask > 0).view(np.uint8)
    ox, oy, ow, oh = cv2.boundingRect(mask)  # components are labelled in the defect's bounding box only: fast
    if ow == 0 or oh == 0:
        return [], 0
    from defect_vision.masks import label_components

    n, labels, stats = label_components(mask[oy : oy + oh, ox : ox + ow])
    instances, dropped = [], 0
    for k in range(1, n):
        x, y, w, h, area = (int(v) for v in stats[k])
        if area < min_area:
            dropped += 1
            continue
        crop = labels[y : y + h, x : x + w] == k
        instances.append(Instance(category, (x + ox, y + oy, w, h), area, crop, mask.shape))
    return instances, dropped
