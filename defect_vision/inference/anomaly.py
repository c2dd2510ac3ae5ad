"""The anomaly stage of the per-batch step (`predict --anomaly DIR`): a train-anomaly model's heat map per image,
its image score, and `anomaly` ("unknown defect") detections for the map's regions above the calibrated threshold
that no named detection covers. The new boxes go to the segmenter with the named ones (their COCO mask is SAM's
on the region's box, or the box with --box-only); the heat map itself is the map's own mask (PNG, evaluated as a
score map). Local and Ray engines share it through `DefectPredictor.run_batch`."""
from __future__ import annotations

import threading
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from defect_vision.detections import Detections
from defect_vision.errors import DatasetError
from defect_vision.masks import label_components
from defect_vision.models.anomaly import (
    AnomalyMeta,
    load_model,
    map_png_values,
    raw_maps,
)

ANOMALY = "anomaly"  # the class name of an unknown defect
COVERED = 0.5  # a region is a named detection's when at least this share of its pixels lies in named boxes
MIN_REGION = 10  # smaller map regions (pixels) are not reported as detections


@dataclass
class AnomalyStage:
    folder: Path
    meta: AnomalyMeta
    model: object
    device: object
    seconds: float = 0.0  # in the stage, over all images (summary.json: anomaly.seconds)
    images: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def load(cls, folder: Path, device) -> AnomalyStage:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            meta, model = load_model(Path(folder), device)
        return cls(Path(folder), meta, model, device)

    def check_category(self, category: str | None, origin: str) -> None:
        """DatasetError when the source names another category than the one the model learned."""
        if category and category != self.meta.category:
            raise DatasetError(f"{self.folder}: an anomaly model of category '{self.meta.category}', but {origin} is "
                               f"category '{category}' (train one with defect-vision train-anomaly --category {category})")

    def check_size(self, det: Detections) -> None:
        h, w = det.image.height, det.image.width
        if self.meta.image_hw and (h, w) != tuple(self.meta.image_hw):
            where = det.image.path or det.image.file_name
            raise DatasetError(f"{where}: a {h}x{w} image, but the anomaly model {self.folder} learned "
                               f"{self.meta.image_hw[0]}x{self.meta.image_hw[1]} images of {self.meta.category}")

    def describe(self, category_id: int | None) -> dict:
        """summary.json's `anomaly` section: what evaluation and the report need to read the maps."""
        m = self.meta
        return {"model": str(self.folder), "method": m.method, "category": m.category, "class_name": ANOMALY,
                "category_id": category_id, "map_threshold": m.map_threshold, "image_threshold": m.image_threshold,
                "map_scale": m.map_scale, "map_png": "uint16, value = 65535 * min(1, map / map_scale)",
                "masks": "sam on the region's box (the box with --box-only)", "images": self.images,
                "seconds": round(self.seconds, 3)}

    def add(self, images: list[np.ndarray], dets: list[Detections]) -> list[Detections]:
        """Each image's heat map and score in det.image.extra (anomaly_map: uint16 PNG values, anomaly_score: raw
        map max), and the uncovered regions as `anomaly` detections appended to the named ones."""
        t0 = time.perf_counter()
        for det in dets:
            self.check_size(det)
        maps = raw_maps(self.model, list(images), self.meta, self.device)
        out = [self._one(det, m) for det, m in zip(dets, maps)]
        with self.lock:
            self.seconds += time.perf_counter() - t0
            self.images += len(out)
        return out

    def _one(self, det: Detections, raw: np.ndarray) -> Detections:
        extra = {**det.image.extra, "anomaly_map": map_png_values(raw, self.meta.map_scale),
                 "anomaly_score": round(float(raw.max()), 6)}
        det.image = replace(det.image, extra=extra)
        boxes, scores = unknown_regions(raw, self.meta.map_threshold, self.meta.map_scale, det.xyxy)
        return with_anomalies(det, boxes, scores)


def unknown_regions(raw: np.ndarray, threshold: float, scale: float, named_xyxy: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (xyxy) and scores (region max / scale, within [0, 1]) of the 8-connected regions of raw > threshold
    that the named boxes do not cover."""
    above = raw > threshold
    if not above.any():
        return np.zeros((0, 4)), np.zeros(0)
    covered = np.zeros_like(above)
    for x0, y0, x1, y1 in np.asarray(named_xyxy, float):
        covered[int(y0) : int(np.ceil(y1)), int(x0) : int(np.ceil(x1))] = True
    n, labels, stats = label_components(above.view(np.uint8))
    boxes, scores = [], []
    for k in range(1, n):
        x, y, w, h, area = (int(v) for v in stats[k])
        if area < MIN_REGION:
            continue
        region = labels[y : y + h, x : x + w] == k
        if covered[y : y + h, x : x + w][region].mean() >= COVERED:
            continue
        boxes.append([x, y, x + w, y + h])
        scores.append(min(1.0, float(raw[y : y + h, x : x + w][region].max()) / max(scale, 1e-12)))
    return np.asarray(boxes, float).reshape(-1, 4), np.asarray(scores, float)


def anomaly_vocabulary(det: Detections) -> tuple[list[str], list[int] | None]:
    """The detector's classes plus `anomaly` (its category id after the largest one)."""
    names = list(det.class_names)
    if ANOMALY in names:
        return names, det.category_ids
    ids = None if det.category_ids is None else [*det.category_ids, max(det.category_ids, default=0) + 1]
    return [*names, ANOMALY], ids


def anomaly_category_id(class_names: list[str], category_ids: list[int] | None) -> int:
    return (max(category_ids, default=0) + 1) if category_ids is not None else len(class_names) + 1


def with_anomalies(det: Detections, boxes: np.ndarray, scores: np.ndarray) -> Detections:
    """`det` with the vocabulary + anomaly and one `anomaly` row per box (extras of the new rows: None)."""
    names, ids = anomaly_vocabulary(det)
    k = len(boxes)
    data = {key: (np.concatenate([v, np.zeros(k, v.dtype)]) if isinstance(v, np.ndarray) else [*v, *([None] * k)])
            for key, v in det.data.items()}
    return Detections(np.concatenate([det.xyxy, boxes]), np.concatenate([det.class_id, np.full(k, names.index(ANOMALY))]),
                      np.concatenate([det.score, scores]), data=data, image=det.image, class_names=names,
                      category_ids=ids)
