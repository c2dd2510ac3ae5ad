"""SAM 2 / 2.1 box refinement behind the BoxSegmenter interface, as Meta's `SAM2ImagePredictor` computes it: the
image encoder once per image with boxes (batched over `batch` images), its embedding and two high-resolution maps,
all the boxes of an image decoded in one batched decoder call (corner points labelled 2 and 3, single-mask output),
the low-res logits upsampled straight to the image size in chunks and handed over as MaskCrops."""
from __future__ import annotations

import numpy as np
import torch

from defect_vision.devices import (
    COUNT,
    Timings,
    autocast,
    full_precision,
    timed,
    to_device,
)
from defect_vision.inference.detector_masks import MASK_PROMPT_LOGIT
from defect_vision.inference.segmenter import (
    MASK_BUDGET_BYTES,
    Segmenter,
    upsampled_crops,
)
from defect_vision.masks import MaskCrop
from defect_vision.models.sam_family import Features, Sam2Ops


class Sam2Segmenter(Segmenter):
    """Segmenter's batching over images and its counters, with SAM 2's input transform, features and decoder."""

    def __init__(self, sam2, device: torch.device, dtype: torch.dtype | None = None, mask_threshold: float = 0.0,
                 budget: int = MASK_BUDGET_BYTES, batch: int | None = None):
        super().__init__(sam2, device, dtype, mask_threshold, budget, batch)
        self.ops = Sam2Ops(self.sam)
        self.transform = None  # no ResizeLongestSide: SAM 2 resizes to a square

    def prepare(self, image: np.ndarray) -> torch.Tensor:
        return self.ops.prepare(image, self.device)

    def encode(self, x: torch.Tensor) -> list[Features]:
        """The feature maps (embedding, high_res_0, high_res_1; each 1xCxhxw) of each image of an encoder batch."""
        return self.ops.encode(x)

    def prompt_encoder(self) -> torch.nn.Module:
        return self.sam.sam_prompt_encoder

    @torch.inference_mode()
    def decode(self, embedding: Features, boxes: np.ndarray, size: tuple[int, int], timings: Timings | None = None,
               mask_prompt: list[MaskCrop] | None = None) -> tuple[list[MaskCrop], np.ndarray]:
        """(N MaskCrops, predicted IoU (N,)) of xyxy boxes on an image of `size` (h, w) with these features;
        `mask_prompt`: a mask per box given with it (SAM2ImagePredictor's mask_input; predict --masks refine)."""
        timings = timings if timings is not None else Timings()
        h, w = size
        with timed(timings, "sam_decoder", self.device):
            with full_precision(self.device):
                prompts = to_device(self.ops.boxes(boxes, size), self.device)
                masks = None if mask_prompt is None else self.ops.mask_input(
                    torch.from_numpy(np.stack([c.full() for c in mask_prompt])).to(self.device)[:, None],
                    MASK_PROMPT_LOGIT)
                sparse, dense = self.ops.prompts(prompts, None, masks)
            with autocast(self.device, self.dtype):
                low_res, iou = self.ops.decode(embedding, sparse, dense, self.dense_pe(), multimask=False)
            crops, chunks = upsampled_crops(low_res, lambda c: self.ops.postprocess(c.float(), (h, w)), (h, w),
                                            self.mask_threshold, self.budget)
            with COUNT:
                self.upsample_chunks += chunks
            iou = iou[:, 0].float().cpu().numpy()
        with COUNT:
            self.decoder_calls += 1
        return crops, iou
