"""The files of a prediction run, the same bytes from either engine: per image its label-mask PNG, overlay PNG and
COCO entries (`encode_image`, written by `ImageFiles.write`), its image_ids.json entry (`image_entry`), and at the
end predictions.json (coco.save_results), image_ids.json and summary.json (`write_run_files`)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from defect_vision.coco import save_results
from defect_vision.detections import Detections, ImageInfo
from defect_vision.inference.writers import finish_masks, label_mask, overlay, png_bytes


@dataclass
class ImageFiles:
    """One predicted image's outputs, encoded."""

    predictions: list[dict]  # COCO result entries
    names: list[str]  # class name of each detection
    mask_png: bytes
    overlay_png: bytes | None  # None without overlays

    def write(self, folder: Path, name: str) -> None:
        """masks/<name>.png and, with an overlay, overlays/<name>.png under `folder`."""
        _write_bytes(folder / "masks" / f"{name}.png", self.mask_png)
        if self.overlay_png is not None:
            _write_bytes(folder / "overlays" / f"{name}.png", self.overlay_png)


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
    return ImageFiles(det.to_coco(), det.names, mask, over)


def image_entry(image: ImageInfo, name: str, size: tuple[int, int] | None = None, error: str | None = None) -> dict:
    """The image_ids.json entry of an image: its size and mask file, or why it was skipped."""
    entry = {"id": image.id, "file_name": image.file_name, "path": str(image.path)}
    if error is not None:
        return {**entry, "skipped": error}
    return {**entry, "height": size[0], "width": size[1], "mask": f"masks/{name}.png"}


def write_run_files(folder: Path, results: list[Detections], entries: list[dict], summary: dict) -> None:
    """predictions.json (every image's entries by image id), image_ids.json and summary.json of a local run."""
    save_results(sorted(results, key=lambda d: d.image.id), folder / "predictions.json")
    (folder / "image_ids.json").write_text(json.dumps(entries, indent=1))
    (folder / "summary.json").write_text(json.dumps(summary, indent=2))
