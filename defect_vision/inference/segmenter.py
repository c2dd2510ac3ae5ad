"""SAM refinement: the image encoder once per image, all its boxes decoded in one batched decoder call, and the
masks brought to full image size in chunks (encoded to RLE chunk by chunk), so peak memory stays bounded whatever
the number of boxes."""
from __future__ import annotations

import numpy as np
import torch
from segment_anything import SamPredictor

from defect_vision.detections import encode_masks
from defect_vision.devices import Timings, autocast, timed

MASK_BUDGET_BYTES = 256 * 2**20  # full-size float logits + bool masks held at once while upsampling


def chunk_size(height: int, width: int, budget: int = MASK_BUDGET_BYTES) -> int:
    """Boxes upsampled together: full-size float32 logits (4 B/px) plus the bool mask (1 B/px) within `budget`."""
    return max(1, budget // (5 * height * width))


class Segmenter:
    """Box prompts -> masks (compressed RLEs) in original image coordinates; counts encoder and decoder calls."""

    def __init__(self, sam: torch.nn.Module, device: torch.device, dtype: torch.dtype | None = None,
                 mask_threshold: float = 0.0, budget: int = MASK_BUDGET_BYTES):
        self.predictor = SamPredictor(sam.to(device).eval())
        self.device, self.dtype, self.mask_threshold, self.budget = device, dtype, mask_threshold, budget
        self.encoder_calls = 0  # image encoder runs (one per image with at least one box)
        self.decoder_calls = 0  # batched decoder calls (one per image with at least one box)
        self.upsample_chunks = 0  # full-size upsampling chunks (>= decoder calls)

    @torch.inference_mode()
    def segment(self, image: np.ndarray, boxes: np.ndarray, timings: Timings | None = None) -> tuple[list[dict], np.ndarray]:
        """(N compressed RLEs, SAM's predicted IoU (N,)) for xyxy boxes of an RGB HxWx3 image; no SAM call for N = 0."""
        h, w = image.shape[:2]
        if len(boxes) == 0:
            return [], np.zeros(0, np.float32)
        timings = timings if timings is not None else Timings()
        p = self.predictor
        with timed(timings, "sam_encoder", self.device), autocast(self.device, self.dtype):
            p.set_image(image, image_format="RGB")
        self.encoder_calls += 1
        with timed(timings, "sam_decoder", self.device), autocast(self.device, self.dtype):
            prompts = p.transform.apply_boxes_torch(torch.as_tensor(np.asarray(boxes, np.float32), device=self.device), (h, w))
            sparse, dense = p.model.prompt_encoder(points=None, boxes=prompts, masks=None)  # as SamPredictor.predict_torch
            low_res, iou = p.model.mask_decoder(image_embeddings=p.features, image_pe=p.model.prompt_encoder.get_dense_pe(),
                                                sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                                multimask_output=False)
            rles: list[dict] = []
            step = chunk_size(h, w, self.budget)
            for start in range(0, len(low_res), step):
                logits = p.model.postprocess_masks(low_res[start : start + step], p.input_size, p.original_size)
                rles += encode_masks((logits[:, 0] > self.mask_threshold).cpu().numpy())
                del logits
                self.upsample_chunks += 1
            iou = iou[:, 0].float().cpu().numpy()
        self.decoder_calls += 1
        p.reset_image()
        return rles, iou
