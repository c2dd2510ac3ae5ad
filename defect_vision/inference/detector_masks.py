"""Masks from a YOLOE -seg detector (`predict --masks detector|refine`). The detector leaves each detection's mask in
`Detections.data["detector_masks"]` (MaskCrops, subset with the detections by every filter), and the predictor hands
them to the segmenter as `mask_prompts`:

- `DetectorMasks`: a box's mask is the detector's own mask (no SAM).
- `refine`: the torch `Segmenter` (SAM, MobileSAM) or `Sam2Segmenter` decodes each box with the detector's mask as SAM's mask prompt (`mask_logits`, as
  SamPredictor's `mask_input`).
"""
from __future__ import annotations

import numpy as np

from defect_vision.errors import ConfigError
from defect_vision.inference.interfaces import BoxSegmenter
from defect_vision.masks import MaskCrop

MASK_PROMPT_LOGIT = 8.0  # the detector's mask as SAM mask-prompt logits: +8 inside, -8 outside
KEY = "detector_masks"  # Detections.data entry the detector fills


class DetectorMasks(BoxSegmenter):
    """--masks detector: each box's mask is the YOLOE -seg detector's; its "IoU" is 1 (no model scores it)."""

    uses_sam = False

    def segment_batch(self, images, boxes, timings=None, mask_prompts=None):
        prompts = mask_prompts or [None] * len(images)
        out = []
        for b, crops in zip(boxes, prompts):
            if crops is None and len(b):
                raise ConfigError("{masks} detector: these boxes have no detector masks (they need a YOLOE -seg "
                                  "detector, not ground truth)", "masks")
            out.append((list(crops or []), np.ones(len(b), np.float32)))
        return out


def mask_logits(crops: list[MaskCrop], transform, size: int, low_size: tuple[int, int], device):
    """(N, 1, *low_size) mask-prompt logits of full-image masks: resized like the image (longest side to the
    encoder `size`), padded, downsampled to SAM's low-resolution mask frame (its prompt encoder's mask_input_size)."""
    import torch
    import torch.nn.functional as F

    h, w = crops[0].height, crops[0].width
    nh, nw = transform.get_preprocess_shape(h, w, size)
    full = torch.from_numpy(np.stack([c.full() for c in crops])).to(device).float()[:, None]
    resized = F.interpolate(full, (nh, nw), mode="bilinear", align_corners=False)
    padded = F.pad(resized, (0, size - nw, 0, size - nh))
    low = F.interpolate(padded, tuple(low_size), mode="bilinear", align_corners=False)
    return (low > 0.5).float().mul_(2).sub_(1).mul_(MASK_PROMPT_LOGIT)
