"""Predictions as a CVAT "COCO 1.0" annotations zip: `annotations/instances_default.json`, shaped as CVAT's own COCO
1.0 export (masks as uncompressed RLE with iscrowd 1, `score` per annotation), which CVAT imports through datumaro's
`coco_instances` importer (Upload annotations > COCO 1.0, into a task holding the same images, matched by file
name without extension)."""
from __future__ import annotations

import zipfile
from collections.abc import Sequence
from pathlib import Path

from defect_vision.detections import Detections
from defect_vision.formats.coco_predictions import coco_predictions
from defect_vision.io import atomic_path, json_bytes

MEMBER = "annotations/instances_default.json"  # CVAT's task subset is "default"


def cvat_coco(detections: Sequence[Detections]) -> dict:
    """The instances json CVAT's COCO 1.0 importer reads (what its exporter writes, plus `score`)."""
    return coco_predictions(detections, uncompressed=True, iscrowd_masks=True, attributes={"occluded": False})


def save(detections: Sequence[Detections], out: Path, **_) -> Path:
    """Write the zip to `out` (atomically; fixed timestamps, so the same predictions give the same bytes)."""
    out = Path(out)
    info = zipfile.ZipInfo(MEMBER, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_DEFLATED
    with atomic_path(out) as tmp, zipfile.ZipFile(tmp, "w") as zf:
        zf.writestr(info, json_bytes(cvat_coco(detections)))
    return out
