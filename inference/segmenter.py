"""SAM refinement: the image encoder once per image, all its boxes decoded in one batched predict_torch call."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from segment_anything import SamPredictor

from converters.errors import DatasetError
from finetune.sam_model import MODEL_TYPES, CheckpointError, build_sam
from inference.checkpoints import ULTRALYTICS, sniff_checkpoint
from inference.devices import Timings, autocast, timed

DEFAULT_MODEL_TYPE = "vit_b"


def model_type_for(checkpoint: Path, model_type: str | None) -> str:
    """--model-type if given, else the one in best.json beside the checkpoint (finetune.sam writes it), else vit_b."""
    if model_type:
        return model_type
    meta = Path(checkpoint).with_name("best.json")
    try:
        found = json.loads(meta.read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        found = None
    return found if found in MODEL_TYPES else DEFAULT_MODEL_TYPE


def load_sam(checkpoint: Path, model_type: str):
    """build_sam(model_type, checkpoint) with one-line errors naming the file (a detector given as --sam included)."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise DatasetError(f"{checkpoint}: SAM checkpoint not found (expected a SAM best.pth state_dict)")
    if sniff_checkpoint(checkpoint) == ULTRALYTICS:
        raise DatasetError(f"{checkpoint}: this is an ultralytics (YOLO-World) checkpoint, not a SAM state_dict "
                           f"(give it as --detector)")
    try:
        return build_sam(model_type, checkpoint)
    except (CheckpointError, ValueError) as exc:
        msg = str(exc) if str(exc).startswith(str(checkpoint)) else f"{checkpoint}: {exc}"
        msg = msg if len(msg) <= 300 else msg[:297] + "..."
        guess = guess_model_type(checkpoint)
        if guess and guess != model_type:
            msg += f"; it looks like a {guess} checkpoint: try --model-type {guess}"
        raise DatasetError(msg) from None


def guess_model_type(checkpoint: Path) -> str | None:
    """The SAM model type whose encoder depth and width fit a state_dict (None if unreadable or unknown)."""
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
        width = state["image_encoder.patch_embed.proj.weight"].shape[0]
        depth = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("image_encoder.blocks."))
    except Exception:  # noqa: BLE001 - only a hint
        return None
    return {(768, 12): "vit_b", (1024, 24): "vit_l", (1280, 32): "vit_h", (64, 2): "vit_tiny"}.get((width, depth))


class Segmenter:
    """Box prompts -> masks in original image coordinates; counts encoder and decoder calls."""

    def __init__(self, sam: torch.nn.Module, device: torch.device, dtype: torch.dtype | None = None,
                 mask_threshold: float = 0.0):
        self.predictor = SamPredictor(sam.to(device).eval())
        self.device, self.dtype, self.mask_threshold = device, dtype, mask_threshold
        self.encoder_calls = 0  # image encoder runs (one per image with at least one box)
        self.decoder_calls = 0  # batched decoder calls (one per image with at least one box)

    @torch.inference_mode()
    def segment(self, image: np.ndarray, boxes: np.ndarray, timings: Timings | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(masks (N, H, W) bool, SAM's predicted IoU (N,)) for xyxy boxes of an RGB HxWx3 image; no SAM call for N = 0."""
        h, w = image.shape[:2]
        if len(boxes) == 0:
            return np.zeros((0, h, w), bool), np.zeros(0, np.float32)
        timings = timings if timings is not None else Timings()
        with timed(timings, "sam_encoder", self.device), autocast(self.device, self.dtype):
            self.predictor.set_image(image, image_format="RGB")
        self.encoder_calls += 1
        with timed(timings, "sam_decoder", self.device), autocast(self.device, self.dtype):
            prompts = torch.as_tensor(np.asarray(boxes, np.float32), device=self.device)
            prompts = self.predictor.transform.apply_boxes_torch(prompts, (h, w))
            logits, iou, _ = self.predictor.predict_torch(None, None, boxes=prompts, multimask_output=False,
                                                          return_logits=True)
            masks = (logits[:, 0] > self.mask_threshold).cpu().numpy()
            iou = iou[:, 0].float().cpu().numpy()
        self.decoder_calls += 1
        self.predictor.reset_image()
        return masks, iou
