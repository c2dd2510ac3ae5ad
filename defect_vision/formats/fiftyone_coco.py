"""Predictions as the COCO labels file FiftyOne's `COCODetectionDataset` importer loads (`labels_path`): images,
categories and annotations with `score` (FiftyOne's `confidence`) and compressed RLE masks (instance masks with
`label_types="segmentations"`); `data_path` is the folder the image file names are relative to."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from defect_vision.detections import Detections
from defect_vision.formats.coco_predictions import coco_predictions
from defect_vision.io import atomic_path, json_bytes


def save(detections: Sequence[Detections], out: Path, **_) -> Path:
    """Write the labels file to `out` (atomically)."""
    out = Path(out)
    with atomic_path(out) as tmp:
        tmp.write_bytes(json_bytes(coco_predictions(detections)))
    return out
