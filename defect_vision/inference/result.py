"""`Result`: one image's prediction as the Python API hands it out."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from defect_vision.detections import Detections


class Result:
    """One image's prediction: its Detections (`.detections`, the one record) and the image itself, with the
    per-detection views of the API (`xyxy`, `masks`, `scores`, `class_ids`, `names`: one name per detection), the
    vocabulary (`class_names`, as in Detections) and `save_overlay`, `save_mask`, `to_coco`."""

    def __init__(self, detections: Detections, pixels: np.ndarray):
        self.detections = detections
        self.pixels = pixels  # RGB uint8 HxWx3

    def __len__(self) -> int:
        return len(self.detections)

    def __repr__(self) -> str:
        h, w = self.pixels.shape[:2]
        return f"Result({len(self)} detections on a {w}x{h} image: {', '.join(self.names) or 'none'})"

    @property
    def xyxy(self) -> np.ndarray:
        """(N, 4) boxes x0 y0 x1 y1 in image pixels."""
        return self.detections.xyxy

    @property
    def masks(self) -> np.ndarray:
        """(N, H, W) bool masks in image pixels."""
        return self.detections.masks

    @property
    def scores(self) -> np.ndarray:
        return self.detections.score

    @property
    def class_ids(self) -> np.ndarray:
        """(N,) class index of each detection (into `class_names`)."""
        return self.detections.class_id

    @property
    def names(self) -> list[str]:
        """The class name of each detection (N names)."""
        return self.detections.names

    @property
    def class_names(self) -> list[str]:
        """The model's vocabulary (class index -> name), as Detections.class_names."""
        return self.detections.class_names

    def to_coco(self, image_id: int | None = None) -> list[dict]:
        """COCO results entries (bbox, score, RLE segmentation), best first."""
        return self.detections.to_coco(image_id)

    def label_mask(self) -> np.ndarray:
        """HxW: 0 background, k = COCO category id (the higher-ranked detection wins overlaps)."""
        from defect_vision.inference.writers import label_mask

        h, w = self.pixels.shape[:2]
        return label_mask(self.detections, h, w)

    def overlay(self) -> np.ndarray:
        from defect_vision.inference.writers import overlay

        return overlay(self.pixels, self.detections)

    def save_overlay(self, path: str | Path) -> Path:
        """The image with coloured masks, boxes and 'name score' labels, as PNG."""
        from defect_vision.inference.writers import write_png

        write_png(Path(path), self.overlay())
        return Path(path)

    def save_mask(self, path: str | Path) -> Path:
        """The label mask (0 background, k = category id) as PNG."""
        from defect_vision.inference.writers import write_png

        write_png(Path(path), self.label_mask())
        return Path(path)
