"""The files of a prediction run, the same bytes from either engine: per image its label-mask PNG, overlay PNG and
COCO entries (`encode_image`, written by `ImageFiles.write`), its image_ids.json entry (`image_entry`), and at the
end predictions.json (coco.save_results), image_ids.json and summary.json (`write_run_files`), and the labelling
tools' pre-annotations read back from them (`write_run_annotations`)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from defect_vision.coco import CocoDataset, load_results, save_results
from defect_vision.detections import Detections, ImageInfo
from defect_vision.inference.writers import finish_masks, label_mask, overlay, png_bytes
from defect_vision.io import read_json

ANOMALY_MAPS = "anomaly_maps"  # predict --anomaly: anomaly_maps/<name>.png, the heat map of each image


@dataclass
class ImageFiles:
    """One predicted image's outputs, encoded."""

    predictions: list[dict]  # COCO result entries
    names: list[str]  # class name of each detection
    mask_png: bytes
    overlay_png: bytes | None  # None without overlays
    anomaly_png: bytes | None = None  # the heat map (uint16) of predict --anomaly

    def write(self, folder: Path, name: str) -> None:
        """masks/<name>.png and, with an overlay, overlays/<name>.png under `folder` (with a heat map,
        anomaly_maps/<name>.png)."""
        _write_bytes(folder / "masks" / f"{name}.png", self.mask_png)
        if self.overlay_png is not None:
            _write_bytes(folder / "overlays" / f"{name}.png", self.overlay_png)
        if self.anomaly_png is not None:
            _write_bytes(folder / ANOMALY_MAPS / f"{name}.png", self.anomaly_png)


def _write_bytes(path: Path, data: bytes) -> None:
    """Python's own file I/O, so a full disk or a permission problem raises OSError with its errno."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def encode_image(det: Detections, pixels: np.ndarray | None, height: int, width: int) -> ImageFiles:
    """RLEs from the mask crops, the label mask and (given the pixels) the overlay of one image; drops the crops."""
    finish_masks(det)
    mask = png_bytes(label_mask(det, height, width))
    over = png_bytes(overlay(pixels, det)) if pixels is not None else None
    det.data.pop("mask_crops", None)  # predictions.json needs the RLEs only
    heat = det.image.extra.pop("anomaly_map", None) if det.image is not None else None
    return ImageFiles(det.to_coco(), det.names, mask, over, None if heat is None else png_bytes(heat))


def image_entry(image: ImageInfo, name: str, size: tuple[int, int] | None = None, error: str | None = None) -> dict:
    """The image_ids.json entry of an image: its size and mask file, or why it was skipped."""
    entry = {"id": image.id, "file_name": image.file_name, "path": str(image.path)}
    if error is not None:
        return {**entry, "skipped": error}
    return {**entry, "height": size[0], "width": size[1], "mask": f"masks/{name}.png"}


def anomaly_entry(entry: dict, score: float | None) -> dict:
    """An image_ids.json entry with its heat map (anomaly_maps/<name>.png beside masks/<name>.png) and image score."""
    if score is None or "mask" not in entry:
        return entry
    return {**entry, "anomaly_map": ANOMALY_MAPS + entry["mask"][len("masks"):], "anomaly_score": score}


def write_run_files(folder: Path, results: list[Detections], entries: list[dict], summary: dict) -> None:
    """predictions.json (every image's entries by image id), image_ids.json and summary.json of a local run."""
    scores = {d.image.id: d.image.extra.get("anomaly_score") for d in results}
    entries = [anomaly_entry(e, scores.get(e["id"])) for e in entries]
    save_results(sorted(results, key=lambda d: d.image.id), folder / "predictions.json")
    (folder / "image_ids.json").write_text(json.dumps(entries, indent=1))
    (folder / "summary.json").write_text(json.dumps(summary, indent=2))


def run_detections(folder: Path, class_names: list[str], category_ids: list[int] | None) -> list[Detections]:
    """A prediction run folder's detections (RLE masks) of every predicted image, in image_ids.json's order (images
    without detections too, empty)."""
    entries = [e for e in read_json(folder / "image_ids.json", "image ids") if "skipped" not in e]
    images = [ImageInfo(e["id"], e["file_name"], e["height"], e["width"], Path(e["path"])) for e in entries]
    ids = category_ids or list(range(1, len(class_names) + 1))
    dataset = CocoDataset(images, {im.id: Detections.empty() for im in images},
                          [{"id": i, "name": n} for i, n in zip(ids, class_names)], path=folder / "image_ids.json")
    found = load_results(folder / "predictions.json", dataset)
    return [found.get(im.id) or Detections.empty(image=im, class_names=class_names, category_ids=ids, rle=[])
            for im in images]


def write_run_annotations(folder: Path, class_names: list[str], category_ids: list[int] | None, tools: tuple[str, ...],
                          model_version: str, image_root: str | None = None) -> list[Path]:
    """The pre-annotations of a run (predict --annotations) beside its predictions.json, read back from the run's
    files so that both engines write the same bytes."""
    if not tools:
        return []
    from defect_vision.formats.annotations import write_annotations

    return write_annotations(run_detections(folder, class_names, category_ids), folder, tools, model_version,
                             image_root)
