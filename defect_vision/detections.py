"""The one record for "an image and its detections": ground truth, SAM prompts, predictions and evaluation inputs.

Shaped like supervision's `Detections` (columns of equal length N): `xyxy` boxes in original image pixels,
`class_id` (index into `class_names`), `score` (1.0 for ground truth), `mask` as dense (N, H, W) bool arrays or
`rle` as compressed COCO RLEs (either is derived from the other on demand), per-detection extras in `data`
(annotation ids, points, ...), and the image it belongs to. COCO category ids come from `category_ids` (the one
place where a class index becomes a category id and back).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils


@dataclass
class ImageInfo:
    """An image as a dataset lists it."""

    id: int
    file_name: str  # relative to the dataset's image root
    height: int | None = None
    width: int | None = None
    path: Path | None = None  # absolute path when known
    is_good: bool | None = None  # None: not said (an image without annotations then counts as good)
    extra: dict = field(default_factory=dict)  # any other fields of the image entry (defect_type, ...)


def _rle_bytes(rle: dict) -> dict:
    counts = rle["counts"]
    return {"size": list(rle["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def encode_masks(masks: np.ndarray) -> list[dict]:
    """Compressed COCO RLEs (bytes counts) of (N, H, W) bool masks."""
    if len(masks) == 0:
        return []
    return mask_utils.encode(np.asfortranarray(np.asarray(masks, np.uint8).transpose(1, 2, 0)))


@dataclass
class Detections:
    xyxy: np.ndarray  # (N, 4) float64, x0 y0 x1 y1 in original image pixels
    class_id: np.ndarray  # (N,) int64, index into class_names
    score: np.ndarray  # (N,) float64
    mask: np.ndarray | None = None  # (N, H, W) bool
    rle: list[dict] | None = None  # N compressed COCO RLEs (bytes counts)
    data: dict[str, np.ndarray | list] = field(default_factory=dict)  # per-detection extras, N each
    image: ImageInfo | None = None
    class_names: list[str] = field(default_factory=list)
    category_ids: list[int] | None = None  # COCO category id of each class index (default 1..K)

    def __post_init__(self) -> None:
        self.xyxy = np.asarray(self.xyxy, np.float64).reshape(-1, 4)
        self.class_id = np.asarray(self.class_id, np.int64).reshape(-1)
        self.score = np.asarray(self.score, np.float64).reshape(-1)
        n = len(self.xyxy)
        if len(self.class_id) != n or len(self.score) != n:
            raise ValueError(f"Detections: xyxy has {n} rows, class_id {len(self.class_id)}, score {len(self.score)}")
        if self.mask is not None and len(self.mask) != n:
            raise ValueError(f"Detections: {len(self.mask)} masks for {n} boxes")
        if self.rle is not None and len(self.rle) != n:
            raise ValueError(f"Detections: {len(self.rle)} RLEs for {n} boxes")

    @classmethod
    def empty(cls, height: int | None = None, width: int | None = None, **kw) -> Detections:
        mask = np.zeros((0, height, width), bool) if height is not None and width is not None else None
        return cls(np.zeros((0, 4)), np.zeros(0, np.int64), np.zeros(0), mask=mask, **kw)

    def __len__(self) -> int:
        return len(self.xyxy)

    def __getitem__(self, index) -> Detections:
        """The detections selected by a bool mask, an index array or a slice (extras and masks follow)."""
        idx = np.arange(len(self))[index]
        idx = np.atleast_1d(idx)
        data = {k: (np.asarray(v)[idx] if isinstance(v, np.ndarray) else [v[i] for i in idx]) for k, v in self.data.items()}
        return replace(self, xyxy=self.xyxy[idx], class_id=self.class_id[idx], score=self.score[idx],
                       mask=self.mask[idx] if self.mask is not None else None,
                       rle=[self.rle[i] for i in idx] if self.rle is not None else None, data=data)

    # ---- plural names, as in the API example: result.masks, result.scores
    @property
    def scores(self) -> np.ndarray:
        return self.score

    @property
    def masks(self) -> np.ndarray:
        """(N, H, W) bool masks in image pixels (decoded from the RLEs when only those are held)."""
        if self.mask is None:
            if self.rle is None:
                raise ValueError("these detections have no masks")
            h, w = self._size()
            self.mask = (np.stack([mask_utils.decode(r).astype(bool) for r in self.rle]) if self.rle
                         else np.zeros((0, h, w), bool))
        return self.mask

    def rles(self) -> list[dict]:
        """Compressed COCO RLEs (bytes counts) of the masks (encoded from the dense masks when needed)."""
        if self.rle is None:
            self.rle = encode_masks(self.masks)
        return self.rle

    def _size(self) -> tuple[int, int]:
        if self.image is not None and self.image.height is not None:
            return self.image.height, self.image.width
        if self.mask is not None:
            return self.mask.shape[1:]
        if self.rle:
            return tuple(self.rle[0]["size"])
        raise ValueError("image size unknown")

    @property
    def has_masks(self) -> bool:
        return self.mask is not None or self.rle is not None

    @property
    def names(self) -> list[str]:
        """The class name of each detection."""
        return [self.class_names[int(c)] for c in self.class_id]

    @property
    def xywh(self) -> np.ndarray:
        """COCO boxes [x, y, w, h]."""
        out = self.xyxy.copy()
        out[:, 2:] -= out[:, :2]
        return out

    @property
    def area(self) -> np.ndarray:
        """Mask pixel counts (box areas when there are no masks)."""
        if self.has_masks:
            return np.asarray(mask_utils.area(self.rles()), np.float64) if len(self) else np.zeros(0)
        return np.prod(self.xywh[:, 2:], axis=1)

    # ---- the one place where class indices and COCO category ids meet
    def _cat_ids(self) -> np.ndarray:
        if self.category_ids is not None:
            return np.asarray(self.category_ids, np.int64)
        return np.arange(1, max(len(self.class_names), int(self.class_id.max(initial=-1)) + 1) + 1)

    @property
    def category_id(self) -> np.ndarray:
        """COCO category id of each detection."""
        return self._cat_ids()[self.class_id] if len(self) else np.zeros(0, np.int64)

    def class_of(self, category_ids) -> np.ndarray:
        """Class indices of COCO category ids (the inverse of `category_id`)."""
        lookup = {int(c): i for i, c in enumerate(self._cat_ids())}
        return np.array([lookup[int(c)] for c in np.asarray(category_ids).reshape(-1)], np.int64)

    def order(self) -> np.ndarray:
        """The one ordering rule of a prediction run: score descending, ties broken by the score rounded as written
        (5 decimals) and then by detection index, so predictions.json and the label PNGs agree."""
        rounded = np.round(self.score, 5)
        return np.lexsort((np.arange(len(self)), -rounded))

    def to_coco(self, image_id: int | None = None, decimals: int = 2) -> list[dict]:
        """COCO results entries (bbox xywh, score, RLE segmentation when masks exist), in `order()`."""
        if image_id is None:
            if self.image is None:
                raise ValueError("to_coco: give image_id (these detections carry no image)")
            image_id = self.image.id
        rles = self.rles() if self.has_masks else None
        cids = self.category_id
        out = []
        for i in self.order():
            x0, y0, x1, y1 = (float(v) for v in self.xyxy[i])
            entry = {"image_id": int(image_id), "category_id": int(cids[i]),
                     "bbox": [round(x0, decimals), round(y0, decimals), round(x1 - x0, decimals), round(y1 - y0, decimals)],
                     "score": round(float(self.score[i]), 5)}
            if rles is not None:
                entry["segmentation"] = {"size": list(rles[i]["size"]), "counts": _rle_bytes(rles[i])["counts"].decode("ascii")}
            out.append(entry)
        return out

    def to_supervision(self):
        """The same detections as a `supervision.Detections` (for its annotators, trackers and dataset tools);
        class names travel in data["class_name"], as supervision's own loaders put them."""
        import supervision as sv

        return sv.Detections(xyxy=self.xyxy.astype(np.float32), mask=self.masks if self.has_masks else None,
                             confidence=self.score.astype(np.float32), class_id=self.class_id.copy(),
                             data={"class_name": np.array(self.names)} if self.class_names else {})
