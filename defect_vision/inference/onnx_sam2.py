"""SAM 2 / 2.1 box refinement on an exported model (`defect-vision export` of a sam2* run) in onnxruntime or OpenVINO,
behind the BoxSegmenter interface: the torch Sam2Segmenter's job with its family's own transforms (Sam2Ops: the
square resize and ImageNet normalisation, box corners in the square frame, low-res logits upsampled straight to the
image size), the encoder once per image with boxes (never without), all boxes in one decoder call, the full-size
masks in chunks (MaskCrops)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from defect_vision.devices import COUNT, Timings, timed
from defect_vision.errors import ConfigError
from defect_vision.inference.interfaces import BoxSegmenter
from defect_vision.inference.onnx_backend import CPU, session
from defect_vision.inference.segmenter import (
    MASK_BUDGET_BYTES,
    upsampled_crops,
)
from defect_vision.models.sam_family import Sam2Ops

MAPS = ["image_embeddings", "high_res_feats_0", "high_res_feats_1"]  # the encoder's outputs, the decoder's first inputs
INPUTS = {"encoder": ["image"], "decoder": [*MAPS, "point_coords", "point_labels"]}


class ExportedSam2Ops(Sam2Ops):
    """Sam2Ops' input transform, box coordinates and postprocessing for an export's input size (no torch model)."""

    def __init__(self, image_size: int, low_res: int):  # no super().__init__: no torch model
        self.model, self.img_size, self.low_res = None, int(image_size), int(low_res)


class OnnxSam2Segmenter(BoxSegmenter):
    """SAM 2's encoder (image -> embedding + two high-resolution maps) and box decoder in onnxruntime or OpenVINO."""

    def __init__(self, folder: Path, manifest: dict, mask_threshold: float = 0.0, budget: int = MASK_BUDGET_BYTES,
                 runtime: str = "onnxruntime", bf16: bool = False, split: tuple[int, int] = (1, 1)):
        m = manifest["sam"]
        self.encoder = session(Path(folder) / m["encoder"], INPUTS["encoder"], runtime, bf16, split)
        self.decoder = session(Path(folder) / m["decoder"], INPUTS["decoder"], runtime, False, split)  # fp32 boxes
        self.ops = ExportedSam2Ops(m["image_size"], m["low_res_size"][0])
        self.box_labels = np.asarray(m.get("box_labels", [2, 3]), np.float32)
        self.device, self.mask_threshold, self.budget = CPU, mask_threshold, budget
        self.encoder_calls = self.encoder_batches = self.decoder_calls = 0
        self.upsample_chunks = 0

    @torch.inference_mode()
    def decode(self, image: np.ndarray, boxes: np.ndarray, timings: Timings) -> tuple[list, np.ndarray]:
        """(N MaskCrops, SAM 2's predicted IoU (N,)) for xyxy boxes of an RGB HxWx3 image (N >= 1)."""
        h, w = image.shape[:2]
        with timed(timings, "sam_encoder", CPU):
            maps = self.encoder.run(None, {"image": self.ops.prepare(image, CPU).numpy()})
        with COUNT:
            self.encoder_calls += 1
            self.encoder_batches += 1
        with timed(timings, "sam_decoder", CPU):
            corners = self.ops.boxes(boxes, (h, w)).reshape(-1, 2, 2)
            labels = np.tile(self.box_labels, (len(corners), 1))
            low_res, iou = self.decoder.run(None, {**dict(zip(MAPS, maps)), "point_coords": corners,
                                                   "point_labels": labels})
            crops, chunks = upsampled_crops(low_res, lambda c: self.ops.postprocess(torch.from_numpy(c), (h, w)),
                                            (h, w), self.mask_threshold, self.budget)
            with COUNT:
                self.upsample_chunks += chunks
        with COUNT:
            self.decoder_calls += 1
        return crops, iou[:, 0].astype(np.float32)

    def segment_batch(self, images, boxes, timings=None, mask_prompts=None):
        """Per image (MaskCrops, predicted IoU) of its boxes: the encoder once per image with boxes, never without."""
        if mask_prompts is not None and any(p is not None for p in mask_prompts):
            raise ConfigError("{masks} refine: a SAM or MobileSAM model only, not SAM 2", "masks")
        timings = timings if timings is not None else Timings()
        return [self.decode(image, b, timings) if len(b) else ([], np.zeros(0, np.float32))
                for image, b in zip(images, boxes)]
