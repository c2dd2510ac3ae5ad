"""SAM refinement: the image encoder once per image with boxes, batched over several images (`batch`), all the
boxes of an image decoded in one batched decoder call, the prompt encoder in fp32, and the masks brought to full
image size in chunks and handed over cropped to their extent (`MaskCrop`), so peak memory and host copies stay
bounded whatever the number of boxes."""
from __future__ import annotations

import numpy as np
import torch
from segment_anything.modeling import Sam

from defect_vision.devices import (
    COUNT,
    Timings,
    autocast,
    full_precision,
    timed,
    to_device,
)
from defect_vision.inference.detector_masks import mask_logits
from defect_vision.inference.interfaces import BoxSegmenter
from defect_vision.masks import MaskCrop
from defect_vision.models.sam import ResizeLongestSide

MASK_BUDGET_BYTES = 256 * 2**20  # full-size float logits + bool masks held at once while upsampling


def chunk_size(height: int, width: int, budget: int = MASK_BUDGET_BYTES) -> int:
    """Boxes upsampled together: full-size float32 logits (4 B/px) plus the bool mask (1 B/px) within `budget`."""
    return max(1, budget // (5 * height * width))


def upsampled_crops(low_res, upsample, size: tuple[int, int], threshold: float, budget: int) -> tuple[list[MaskCrop], int]:
    """Low-res mask logits (N, 1, g, g) -> full-size masks (`upsample(chunk) -> (n, 1, H, W)` logits) a chunk within
    `budget` at a time -> N MaskCrops; returns (crops, chunks upsampled). The one loop of every SAM backend."""
    crops: list[MaskCrop] = []
    step = chunk_size(*size, budget)
    chunks = 0
    for start in range(0, len(low_res), step):
        logits = upsample(low_res[start : start + step])
        crops += crop_masks(logits[:, 0] > threshold)
        del logits
        chunks += 1
    return crops, chunks


def default_sam_batch(device: torch.device) -> int:
    """Images per SAM encoder forward: 4 on CUDA (the encoder is the dominant GPU cost), 1 on CPU (no gain there,
    and a vit_b forward at 1024 px already holds ~1 GB of attention maps)."""
    return 4 if device.type == "cuda" else 1


def mask_extents(masks: torch.Tensor) -> torch.Tensor:
    """(k, H, W) bool -> (k, 4) int64 rows [r0, r1) and columns [c0, c1) of each mask's bounding extent (all 0 for
    an empty mask), computed where the masks are."""
    k, h, w = masks.shape
    rows, cols = masks.any(2).to(torch.uint8), masks.any(1).to(torch.uint8)
    ext = torch.stack([rows.argmax(1), h - rows.flip(1).argmax(1), cols.argmax(1), w - cols.flip(1).argmax(1)], 1)
    return ext.masked_fill(~rows.bool().any(1, keepdim=True), 0)


def crop_masks(masks: torch.Tensor) -> list[MaskCrop]:
    """(k, H, W) bool masks on any device -> k MaskCrops on the host: two copies to the host (the extents, then
    the crops packed together) instead of k full-size masks."""
    k, h, w = masks.shape
    ext = mask_extents(masks).cpu().numpy()
    flat = torch.cat([masks[i, r0:r1, c0:c1].reshape(-1) for i, (r0, r1, c0, c1) in enumerate(ext)]).cpu().numpy()
    sizes = (ext[:, 1] - ext[:, 0]) * (ext[:, 3] - ext[:, 2])
    parts = np.split(flat, np.cumsum(sizes)[:-1])
    return [MaskCrop(int(r0), int(c0), part.reshape(r1 - r0, c1 - c0), h, w)
            for (r0, r1, c0, c1), part in zip(ext, parts)]


class Segmenter(BoxSegmenter):
    """Box prompts -> masks (MaskCrops) in original image coordinates; counts encoder images, encoder forwards and
    decoder calls."""

    def __init__(self, sam: Sam, device: torch.device, dtype: torch.dtype | None = None,
                 mask_threshold: float = 0.0, budget: int = MASK_BUDGET_BYTES, batch: int | None = None):
        self.sam = sam.to(device).eval()
        self.transform = ResizeLongestSide(sam.image_encoder.img_size)
        self.device, self.dtype, self.mask_threshold, self.budget = device, dtype, mask_threshold, budget
        self.batch = max(1, batch or default_sam_batch(device))
        self.encoder_calls = 0  # images through the image encoder (one per image with at least one box)
        self.encoder_batches = 0  # image-encoder forwards (each up to `batch` images)
        self.decoder_calls = 0  # batched decoder calls (one per image with at least one box)
        self.upsample_chunks = 0  # full-size upsampling chunks (>= decoder calls)
        self._dense_pe: torch.Tensor | None = None

    def prepare(self, image: np.ndarray) -> torch.Tensor:
        """1x3xSxS normalised, padded encoder input of an RGB uint8 image, exactly as SamPredictor.set_image."""
        resized = self.transform.apply_image(image)
        x = to_device(np.ascontiguousarray(resized.transpose(2, 0, 1)), self.device)[None]
        return self.sam.preprocess(x)

    @torch.inference_mode()
    def embed(self, images: list[np.ndarray], timings: Timings | None = None) -> list[torch.Tensor]:
        """Image embeddings (1xCxgxg each, on the device) of these images, `batch` images per encoder forward."""
        timings = timings if timings is not None else Timings()
        out: list[torch.Tensor] = []
        for start in range(0, len(images), self.batch):
            chunk = images[start : start + self.batch]
            with timed(timings, "sam_encoder", self.device):
                x = torch.cat([self.prepare(im) for im in chunk])
                with autocast(self.device, self.dtype):
                    out += self.encode(x)
            with COUNT:
                self.encoder_calls += len(chunk)
                self.encoder_batches += 1
        return out

    def encode(self, x: torch.Tensor) -> list:
        """The features of each image of an encoder batch (SAM: its 1xCxgxg embedding)."""
        return list(self.sam.image_encoder(x).split(1))

    def prompt_encoder(self) -> torch.nn.Module:
        return self.sam.prompt_encoder

    def dense_pe(self) -> torch.Tensor:
        """The image positional encoding (constant per model), computed once in fp32."""
        if self._dense_pe is None:
            with full_precision(self.device):
                self._dense_pe = self.prompt_encoder().get_dense_pe()
        return self._dense_pe

    @torch.inference_mode()
    def decode(self, embedding: torch.Tensor, boxes: np.ndarray, size: tuple[int, int],
               timings: Timings | None = None, mask_prompt: list[MaskCrop] | None = None) -> tuple[list[MaskCrop], np.ndarray]:
        """(N MaskCrops, SAM's predicted IoU (N,)) of xyxy boxes on an image of `size` (h, w) with this embedding;
        `mask_prompt`: a mask per box given to SAM with it (SamPredictor's mask_input; predict --masks refine)."""
        timings = timings if timings is not None else Timings()
        h, w = size
        with timed(timings, "sam_decoder", self.device):
            with full_precision(self.device):  # box coordinates and their sin/cos encoding in fp32
                prompts = self.transform.apply_boxes_torch(to_device(np.asarray(boxes, np.float32), self.device), size)
                masks = None if mask_prompt is None else mask_logits(
                    mask_prompt, self.transform, self.sam.image_encoder.img_size,
                    self.sam.prompt_encoder.mask_input_size, self.device)
                sparse, dense = self.sam.prompt_encoder(points=None, boxes=prompts, masks=masks)
            with autocast(self.device, self.dtype):
                low_res, iou = self.sam.mask_decoder(image_embeddings=embedding, image_pe=self.dense_pe(),
                                                     sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                                     multimask_output=False)
            input_size = self.transform.get_preprocess_shape(h, w, self.transform.target_length)
            crops, chunks = upsampled_crops(low_res, lambda c: self.sam.postprocess_masks(c.float(), input_size, (h, w)),
                                            (h, w), self.mask_threshold, self.budget)
            with COUNT:
                self.upsample_chunks += chunks
            iou = iou[:, 0].float().cpu().numpy()
        with COUNT:
            self.decoder_calls += 1
        return crops, iou

    def segment_batch(self, images: list[np.ndarray], boxes: list[np.ndarray], timings: Timings | None = None,
                      mask_prompts: list[list[MaskCrop] | None] | None = None) -> list[tuple[list[MaskCrop], np.ndarray]]:
        """Per image (MaskCrops, predicted IoU) of its xyxy boxes (with `mask_prompts`, each box's mask prompt): the
        encoder batched over the images that have boxes, never run on the others."""
        todo = [i for i, b in enumerate(boxes) if len(b)]
        embeddings = dict(zip(todo, self.embed([images[i] for i in todo], timings)))
        prompts = mask_prompts or [None] * len(images)
        out = []
        for i, (image, b) in enumerate(zip(images, boxes)):
            out.append(self.decode(embeddings.pop(i), b, image.shape[:2], timings, prompts[i]) if i in embeddings
                       else ([], np.zeros(0, np.float32)))
        return out
