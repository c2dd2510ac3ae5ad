"""Predictions as Label Studio tasks with pre-annotations (`predictions`), and the labelling config they fit.

Per image one task, `data.image` its reference (`image_root` + file name), one prediction (`model_version`, `score`:
the mean of its detections') whose result holds per detection a `brushlabels` region (Label Studio's own brush RLE,
encoded by label-studio-converter) and a `polygonlabels` region per outline ring (points in percent of the
image), each with the detection's `score`. The config (`labelling_config`): an Image `image`, BrushLabels `brush`
and PolygonLabels `polygon` with the class names."""
from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from defect_vision.coco import box_rle
from defect_vision.detections import Detections
from defect_vision.errors import ConfigError
from defect_vision.io import atomic_path, atomic_write_text, json_bytes
from defect_vision.masks import component_polygons

IMAGE, BRUSH, POLYGON = "image", "brush", "polygon"  # the config's tag names: to_name / from_name of each region
REGIONS = ("brush", "polygon")
COLOURS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45", "#fabed4",
           "#469990", "#dcbeff", "#9a6324", "#800000", "#aaffc3", "#808000", "#000075")


def brush_encoder():
    """Label Studio's brush RLE encoder (label-studio-converter's (`mask2rle`); ConfigError naming the package when it is missing."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # its package prints a missing optional module
            from label_studio_converter.brush import mask2rle
    except ImportError:
        raise ConfigError("{annotations} labelstudio: needs label-studio-converter (pip install 'defect-vision[labelling]')",
                          "annotations") from None
    return mask2rle


def image_reference(file_name: str, image_root: str | Path | None = None) -> str:
    """`data.image` of a task: the file name as is, or behind `image_root`, a folder or URL prefix
    ("/data/local-files/?d=" for Label Studio's local file serving; a URL prefix gets the name percent-encoded)."""
    if image_root is None or str(image_root) == "":
        return file_name
    root = str(image_root)
    url = "?" in root or "://" in root
    name = quote(file_name, safe="/") if url else file_name
    return root + name if root.endswith(("/", "=")) else f"{root}/{name}"


def mask_rings(mask: np.ndarray) -> list[np.ndarray]:
    """The pixel-edge outline rings (k, 2) of a mask's components, in image pixels (pycocotools rasterises their
    union back to the mask)."""
    if not mask.any():
        return []
    x, y, w, h = cv2.boundingRect(mask.view(np.uint8))
    return [np.asarray(r, np.float64).reshape(-1, 2) + [x, y] for r in component_polygons(mask[y : y + h, x : x + w])]


def _region(kind: str, rid: str, label: str, value: dict, score: float, height: int, width: int) -> dict:
    return {"id": rid, "type": f"{kind}labels", "from_name": BRUSH if kind == "brush" else POLYGON, "to_name": IMAGE,
            "original_width": width, "original_height": height, "image_rotation": 0,
            "value": {**value, f"{kind}labels": [label]}, "score": score}


def prediction(det: Detections, model_version: str, regions: Sequence[str] = REGIONS, encoder=None) -> dict:
    """One image's detections as a Label Studio prediction (`result` regions in score order)."""
    h, w = int(det.image.height), int(det.image.width)
    result = []
    rles = det.rles() if det.has_masks else [box_rle(box, h, w) for box in det.xywh.tolist()]  # no masks: boxes
    for k in det.order():
        label, score = det.class_names[int(det.class_id[k])], round(float(det.score[k]), 5)
        mask = mask_utils.decode(rles[k]).astype(bool)
        if "brush" in regions:
            rle = [int(v) for v in (encoder or brush_encoder())(mask.view(np.uint8) * np.uint8(255))]
            result.append(_region("brush", f"d{k}", label, {"format": "rle", "rle": rle}, score, h, w))
        if "polygon" in regions:
            for j, ring in enumerate(mask_rings(mask)):
                points = (ring / [w, h] * 100.0).tolist()
                result.append(_region("polygon", f"d{k}p{j}", label, {"points": points, "closed": True}, score, h, w))
    out = {"model_version": model_version, "result": result}
    if len(det):
        out["score"] = round(float(np.mean(det.score)), 5)
    return out


def tasks(detections: Sequence[Detections], model_version: str, image_root: str | Path | None = None,
          regions: Sequence[str] = REGIONS) -> list[dict]:
    """One Label Studio task per image, its detections as the task's prediction."""
    encoder = brush_encoder() if "brush" in regions else None
    return [{"data": {IMAGE: image_reference(det.image.file_name, image_root)},
             "predictions": [prediction(det, model_version, regions, encoder)]} for det in detections]


def labelling_config(class_names: Sequence[str], regions: Sequence[str] = REGIONS) -> str:
    """The labelling config the tasks fit: Image + BrushLabels + PolygonLabels with the class names."""
    labels = "".join(f"    <Label value={quoteattr(n)} background={quoteattr(COLOURS[i % len(COLOURS)])}/>\n"
                     for i, n in enumerate(class_names))
    tags = {"brush": f'  <BrushLabels name="{BRUSH}" toName="{IMAGE}">\n{labels}  </BrushLabels>\n',
            "polygon": f'  <PolygonLabels name="{POLYGON}" toName="{IMAGE}" strokeWidth="2" pointSize="small" '
                       f'opacity="0.4">\n{labels}  </PolygonLabels>\n'}
    return (f'<View>\n  <Image name="{IMAGE}" value="${IMAGE}" zoom="true" zoomControl="true"/>\n'
            + "".join(tags[r] for r in regions) + "</View>\n")


def save(detections: Sequence[Detections], out: Path, model_version: str = "defect-vision",
         image_root: str | Path | None = None, regions: Sequence[str] = REGIONS) -> Path:
    """Write the tasks to `out` (atomically)."""
    out = Path(out)
    with atomic_path(out) as tmp:
        tmp.write_bytes(json_bytes(tasks(detections, model_version, image_root, regions), indent=False))
    return out


def save_config(class_names: Sequence[str], out: Path, regions: Sequence[str] = REGIONS) -> Path:
    """Write the labelling config to `out` (atomically)."""
    atomic_write_text(Path(out), labelling_config(class_names, regions))
    return Path(out)

