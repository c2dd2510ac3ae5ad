"""Masks from a YOLOE -seg detector (`predict --masks detector|refine`), behind the BoxSegmenter interface:

- `DetectorMasks`: a box's mask is the detector's own mask (no SAM).
- `RefineSegmenter`: SAM with the box and the detector's mask as its mask prompt (low-resolution logits, as
  SamPredictor's `mask_input`).

The predictor hands a segmenter only the boxes, so the detector leaves each image's masks in a `MaskHandoff`
(keyed by the image array it was given, which the segmenter then receives) and the segmenter takes them by box."""
from __future__ import annotations

import threading
import weakref

import numpy as np
import torch

from defect_vision.errors import ConfigError
from defect_vision.inference.interfaces import BoxSegmenter
from defect_vision.masks import MaskCrop

MASK_PROMPT_LOGIT = 8.0  # the detector's mask as SAM mask-prompt logits: +8 inside, -8 outside


class MaskHandoff:
    """The detector's masks of the images in flight: put by the detector, taken (once) by the segmenter. An entry
    goes when taken or when its image array is freed."""

    def __init__(self):
        self._lock = threading.Lock()
        self._by_image: dict[int, tuple[np.ndarray, list[MaskCrop]]] = {}

    def put(self, image: np.ndarray, boxes: np.ndarray, crops: list[MaskCrop]) -> None:
        key = id(image)
        with self._lock:
            self._by_image[key] = (np.asarray(boxes, np.float64).reshape(-1, 4), crops)
        weakref.finalize(image, self._drop, key)

    def _drop(self, key: int) -> None:
        with self._lock:
            self._by_image.pop(key, None)

    def take(self, image: np.ndarray, boxes: np.ndarray) -> list[MaskCrop]:
        """The mask of each of `boxes` (a subset of the boxes the detector gave this image, e.g. after thresholds)."""
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        with self._lock:
            entry = self._by_image.pop(id(image), None)
        if entry is None:
            if len(boxes):
                raise ConfigError("{masks}: no detector masks for these boxes (masks detector|refine need boxes "
                                  "from a YOLOE -seg detector, not ground truth or another detector)", "masks")
            return []
        known, crops = entry
        nearest = np.abs(boxes[:, None, :] - known[None, :, :]).max(-1).argmin(1) if len(known) else []
        return [crops[i] for i in nearest]


class DetectorMasks(BoxSegmenter):
    """--masks detector: each box's mask is the YOLOE -seg detector's; its "IoU" is 1 (no model scores it)."""

    uses_sam = False

    def __init__(self, handoff: MaskHandoff):
        self.handoff = handoff

    def segment_batch(self, images, boxes, timings=None):
        return [(self.handoff.take(im, b), np.ones(len(b), np.float32)) for im, b in zip(images, boxes)]


class _MaskPrompt(torch.nn.Module):
    """SAM's prompt encoder, given the current thread's mask prompts whenever the caller passes none."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner
        self.local = threading.local()

    def forward(self, points=None, boxes=None, masks=None):
        return self.inner(points=points, boxes=boxes, masks=masks if masks is not None else getattr(self.local, "masks", None))

    def get_dense_pe(self) -> torch.Tensor:
        return self.inner.get_dense_pe()


def mask_prompts(crops: list[MaskCrop], transform, size: int, low_size: tuple[int, int], device) -> torch.Tensor:
    """(N, 1, *low_size) mask-prompt logits of full-image masks: resized like the image (longest side to the
    encoder `size`), padded, downsampled to SAM's low-resolution mask frame (its prompt encoder's mask_input_size)."""
    import torch.nn.functional as F

    h, w = crops[0].height, crops[0].width
    nh, nw = transform.get_preprocess_shape(h, w, size)
    full = torch.from_numpy(np.stack([c.full() for c in crops])).to(device).float()[:, None]
    resized = F.interpolate(full, (nh, nw), mode="bilinear", align_corners=False)
    padded = F.pad(resized, (0, size - nw, 0, size - nh))
    low = F.interpolate(padded, tuple(low_size), mode="bilinear", align_corners=False)
    return (low > 0.5).float().mul_(2).sub_(1).mul_(MASK_PROMPT_LOGIT)


def refine_segmenter(sam, device, dtype, mask_threshold: float, batch: int | None, handoff: MaskHandoff):
    """--masks refine: a Segmenter whose SAM decodes each box with the detector's mask as its mask prompt."""
    from defect_vision.inference.segmenter import Segmenter

    class RefineSegmenter(Segmenter):
        """Segmenter's batching and decoding; each image's boxes also carry the detector's masks."""

        def __init__(self):
            super().__init__(sam, device, dtype, mask_threshold, batch=batch)
            self.prompt = _MaskPrompt(self.sam.prompt_encoder)
            self.sam.prompt_encoder = self.prompt
            self.local = threading.local()

        def segment_batch(self, images, boxes, timings=None):
            # Segmenter.decode runs once per image with boxes, in order: their masks, queued in that order
            self.local.queue = [self.handoff.take(im, b) for im, b in zip(images, boxes) if len(b)]
            return super().segment_batch(images, boxes, timings)

        def decode(self, embedding, boxes, size, timings=None):
            crops = self.local.queue.pop(0)
            self.prompt.local.masks = mask_prompts(crops, self.transform, self.sam.image_encoder.img_size,
                                                   self.prompt.inner.mask_input_size, self.device)
            try:
                return super().decode(embedding, boxes, size, timings)
            finally:
                self.prompt.local.masks = None

    segmenter = RefineSegmenter()
    segmenter.handoff = handoff
    return segmenter
