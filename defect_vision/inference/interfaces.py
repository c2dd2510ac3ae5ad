"""The two roles of a prediction, which every backend and model family implements:

- `BoxDetector`: images -> boxes with classes and scores (YOLO-World in torch, its ONNX export in onnxruntime or
  OpenVINO, a COCO json's ground-truth boxes).
- `BoxSegmenter`: images and their boxes -> one mask per box (SAM in torch, its ONNX export, or the boxes
  themselves with box_only).

Both count their work in the same counters (`counters()`), which the run's summary and the Ray shards add up.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from defect_vision.detections import Detections, ImageInfo
from defect_vision.devices import Timings
from defect_vision.masks import MaskCrop


class BoxDetector:
    """Boxes of a batch of images, in original image pixels, clipped to each image."""

    class_names: list[str]  # the vocabulary (class index -> name)
    category_ids: list[int] | None = None  # COCO category id of each class (None: index + 1)
    calls: int = 0  # batches predicted
    meta: dict = {}  # a checkpoint's defect_vision metadata (prompts, text encoder); none for the others
    open_vocabulary: bool = False  # new class names can be embedded (a torch YOLO-World / YOLOE checkpoint)

    def predict(self, images: list[np.ndarray], conf: float, iou: float, max_det: int, classes: list[int] | None,
                timings: Timings, infos: Sequence[ImageInfo] | None = None) -> list[Detections]:
        """Detections per image (same order) at confidence >= `conf`, NMS at `iou`, at most `max_det`, only the
        class indices `classes` (None: all). `infos` name the images (ground-truth boxes look them up)."""
        raise NotImplementedError

    def counters(self) -> dict[str, int]:
        return {"detector_calls": self.calls}


class BoxSegmenter:
    """One mask per box: masks as MaskCrops (the mask cropped to its extent) in original image pixels."""

    encoder_calls: int = 0  # images through an image encoder (one per image with at least one box)
    encoder_batches: int = 0  # image-encoder forwards
    decoder_calls: int = 0  # batched mask-decoder calls (one per image with at least one box)
    uses_sam: bool = True  # False: the masks are the boxes (no model)

    def segment_batch(self, images: list[np.ndarray], boxes: list[np.ndarray], timings: Timings | None = None,
                      mask_prompts: list[list[MaskCrop] | None] | None = None) -> list[tuple[list[MaskCrop], np.ndarray]]:
        """Per image (one MaskCrop per xyxy box, the model's predicted IoU of each mask); no model call for an
        image without boxes. `mask_prompts` (only passed when a detector gave masks): per image a mask per box."""
        raise NotImplementedError

    def segment(self, image: np.ndarray, boxes: np.ndarray, timings: Timings | None = None) -> tuple[list[dict], np.ndarray]:
        """(N compressed RLEs, predicted IoU (N,)) for xyxy boxes of one RGB HxWx3 image; no model call for N = 0."""
        crops, iou = self.segment_batch([image], [np.asarray(boxes, np.float32).reshape(-1, 4)], timings)[0]
        return [c.rle() for c in crops], iou

    def counters(self) -> dict[str, int]:
        return {"sam_encoder_calls": self.encoder_calls, "sam_encoder_batches": self.encoder_batches,
                "sam_decoder_calls": self.decoder_calls}


class BoxMasks(BoxSegmenter):
    """box_only: the mask of a box is the box itself (the pixels whose centres lie inside), IoU 1."""

    uses_sam = False

    def segment_batch(self, images, boxes, timings=None, mask_prompts=None):
        out = []
        for image, xyxy in zip(images, boxes):
            h, w = image.shape[:2]
            out.append(([box_crop(b, h, w) for b in np.asarray(xyxy, np.float64).reshape(-1, 4)],
                        np.ones(len(xyxy), np.float32)))
        return out


def box_crop(box: np.ndarray, height: int, width: int) -> MaskCrop:
    """The MaskCrop filling an xyxy box: the pixels whose centres lie inside."""
    x0, y0, x1, y1 = box
    c0, r0 = max(0, int(np.ceil(x0 - 0.5))), max(0, int(np.ceil(y0 - 0.5)))
    c1, r1 = min(width, int(np.ceil(x1 - 0.5))), min(height, int(np.ceil(y1 - 0.5)))
    return MaskCrop(r0, c0, np.ones((max(0, r1 - r0), max(0, c1 - c0)), bool), height, width)
