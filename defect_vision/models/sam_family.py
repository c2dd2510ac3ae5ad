"""What differs between the SAM families on the box-prompt path, in one object per family (`ops_for(model)`):

- `SamOps`: segment_anything's `Sam` (ViT encoders and MobileSAM's TinyViT): longest side resized and padded
  (ResizeLongestSide), one image embedding, boxes as SAM's box prompt, low-res logits in the padded frame.
- `Sam2Ops`: SAM 2 / 2.1 (`SAM2Model`): the image resized to a square, three feature maps (the embedding and two
  high-resolution maps), boxes as two corner points labelled 2 and 3, low-res logits in the square frame; as Meta's
  `SAM2ImagePredictor`.

Training (cache, steps, checkpoints) and inference (the segmenters) call these, never the model's own names.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from defect_vision.models.sam import ResizeLongestSide

Features = tuple[torch.Tensor, ...]  # one image's encoder output maps (each 1xCxhxw)


class SamOps:
    """segment_anything's Sam (vit_*, mobile_sam*)."""

    family = "sam"
    trained = ("mask_decoder", "prompt_encoder")  # the modules a fine-tune trains (and resume.pt carries)
    names = ("embedding",)  # the cached maps

    def __init__(self, model):
        self.model = model
        self.img_size = int(model.image_encoder.img_size)
        self.low_res = int(model.prompt_encoder.mask_input_size[0])
        self.transform = ResizeLongestSide(self.img_size)

    def prompt_encoder(self):
        return self.model.prompt_encoder

    def mask_decoder(self):
        return self.model.mask_decoder

    def encoder_state(self) -> dict:
        """Every weight the cached features depend on (the frozen part)."""
        return self.model.image_encoder.state_dict()

    def trainable(self, prompt_encoder: bool) -> list[torch.nn.Parameter]:
        """The parameters a fine-tune trains: the mask decoder (and the prompt encoder when asked)."""
        return list(self.mask_decoder().parameters()) + (list(self.prompt_encoder().parameters()) if prompt_encoder else [])

    def save_format(self, state: dict):
        """What a checkpoint file of this family holds: SAM's plain state_dict."""
        return state

    def prepare(self, rgb: np.ndarray, device) -> torch.Tensor:
        """1x3xSxS encoder input, exactly as SamPredictor.set_image."""
        resized = self.transform.apply_image(rgb)
        x = torch.as_tensor(np.ascontiguousarray(resized), device=device).permute(2, 0, 1).contiguous()[None]
        return self.model.preprocess(x)

    def encode(self, x: torch.Tensor) -> list[Features]:
        """Per image of the batch x, its feature maps."""
        return [(e,) for e in self.model.image_encoder(x).split(1)]

    def boxes(self, xyxy: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        return np.asarray(self.transform.apply_boxes(np.asarray(xyxy, np.float64).reshape(-1, 4), size), np.float32)

    def coords(self, coords: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        return np.asarray(self.transform.apply_coords(np.asarray(coords, np.float64), size), np.float32)

    def prompts(self, boxes: torch.Tensor, points):
        """Sparse and dense prompt embeddings of input-frame boxes (N, 4) and optional (coords, labels)."""
        return self.model.prompt_encoder(points=points, boxes=boxes, masks=None)

    def decode(self, feats: Features, sparse, dense, image_pe, multimask: bool):
        """(low-res logits N x M x 4g x 4g, IoU N x M) of one image's prompts."""
        return self.model.mask_decoder(image_embeddings=feats[0], image_pe=image_pe, sparse_prompt_embeddings=sparse,
                                       dense_prompt_embeddings=dense, multimask_output=multimask)

    def input_size(self, size: tuple[int, int]) -> tuple[int, int]:
        return self.transform.get_preprocess_shape(*size, self.img_size)

    def postprocess(self, low_res: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Low-res logits -> logits at the original image size."""
        return self.model.postprocess_masks(low_res, self.input_size(size), size)

    def lowres_target(self, mask: np.ndarray) -> np.ndarray:
        """A full-size mask in the low-res logit frame (soft values in [0, 1])."""
        return padded_target(mask, self.img_size, self.low_res)


def padded_target(mask: np.ndarray, img_size: int, low: int) -> np.ndarray:
    """A full-size mask in the frame of SAM's low-res logits (low x low, 4x the embedding grid): resized as
    ResizeLongestSide does, padded bottom/right to img_size like Sam.preprocess, then area-averaged to
    low x low (soft values in [0, 1])."""
    h, w = mask.shape
    newh, neww = ResizeLongestSide.get_preprocess_shape(h, w, img_size)
    frame = np.zeros((img_size, img_size), np.float32)
    frame[:newh, :neww] = cv2.resize(mask.astype(np.float32), (neww, newh), interpolation=cv2.INTER_LINEAR)
    return cv2.resize(frame, (low, low), interpolation=cv2.INTER_AREA)


def _square_target(mask: np.ndarray, low: int) -> np.ndarray:
    """A full-size mask in SAM 2's low-res frame: the square resize of the image, area-averaged (soft [0, 1])."""
    return cv2.resize(mask.astype(np.float32), (low, low), interpolation=cv2.INTER_AREA)


class Sam2Ops(SamOps):
    """SAM 2 / 2.1 (ultralytics' SAM2Model, Meta's key names)."""

    family = "sam2"
    trained = ("sam_mask_decoder", "sam_prompt_encoder")
    names = ("embedding", "high_res_0", "high_res_1")
    MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

    def __init__(self, model):
        self.model = model
        self.img_size = int(model.image_size)
        self.low_res = int(model.sam_prompt_encoder.mask_input_size[0])

    def prompt_encoder(self):
        return self.model.sam_prompt_encoder

    def mask_decoder(self):
        return self.model.sam_mask_decoder

    def projections(self) -> list[str]:
        """The mask decoder's high-resolution projections: forward_image applies them before the features are
        cached, so they stay frozen with the encoder."""
        return ["conv_s0", "conv_s1"]

    def encoder_state(self) -> dict:
        dec = self.model.sam_mask_decoder
        return {**{f"image_encoder.{k}": v for k, v in self.model.image_encoder.state_dict().items()},
                **{f"sam_mask_decoder.{n}.{k}": v for n in self.projections() for k, v in getattr(dec, n).state_dict().items()},
                "no_mem_embed": self.model.no_mem_embed.detach()}

    def trainable(self, prompt_encoder: bool) -> list[torch.nn.Parameter]:
        frozen = {id(p) for n in self.projections() for p in getattr(self.mask_decoder(), n).parameters()}
        return [p for p in super().trainable(prompt_encoder) if id(p) not in frozen]

    def save_format(self, state: dict):
        """Meta's {"model": state_dict}."""
        return {"model": state}

    def prepare(self, rgb: np.ndarray, device) -> torch.Tensor:
        """1x3xSxS: [0, 1] pixels resized to SxS (bilinear, antialiased: torchvision's Resize on a tensor), then
        ImageNet-normalised, as SAM2Transforms."""
        x = torch.as_tensor(np.ascontiguousarray(rgb), device=device).permute(2, 0, 1)[None].float() / 255.0
        x = F.interpolate(x, (self.img_size, self.img_size), mode="bilinear", align_corners=False, antialias=True)
        mean = torch.tensor(self.MEAN, device=device).view(1, 3, 1, 1)
        std = torch.tensor(self.STD, device=device).view(1, 3, 1, 1)
        return (x - mean) / std

    def encode(self, x: torch.Tensor) -> list[Features]:
        """forward_image, no_mem_embed added to the lowest-resolution map, maps reshaped (SAM2ImagePredictor.set_image)."""
        m = self.model
        out = m.forward_image(x)
        _, feats, _, sizes = m._prepare_backbone_features(out)
        if m.directly_add_no_mem_embed:
            feats[-1] = feats[-1] + m.no_mem_embed
        maps = [f.permute(1, 2, 0).reshape(x.shape[0], -1, *s) for f, s in zip(feats, sizes)]
        high0, high1, emb = maps
        return [(emb[i : i + 1], high0[i : i + 1], high1[i : i + 1]) for i in range(x.shape[0])]

    def boxes(self, xyxy: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        h, w = size
        scale = np.array([w, h, w, h], np.float64)
        return (np.asarray(xyxy, np.float64).reshape(-1, 4) / scale * self.img_size).astype(np.float32)

    def coords(self, coords: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        h, w = size
        return (np.asarray(coords, np.float64) / np.array([w, h]) * self.img_size).astype(np.float32)

    def prompts(self, boxes: torch.Tensor, points, masks: torch.Tensor | None = None):
        """A box is two corner points labelled 2 and 3, before any other points (SAM2ImagePredictor._predict);
        `masks`: N x 1 x low-res mask-prompt logits (its mask_input)."""
        coords = boxes.reshape(-1, 2, 2)
        labels = torch.tensor([[2, 3]], dtype=torch.int, device=boxes.device).repeat(len(coords), 1)
        if points is not None:
            coords = torch.cat([coords, points[0].to(coords.dtype)], 1)
            labels = torch.cat([labels, points[1].to(labels.dtype)], 1)
        return self.model.sam_prompt_encoder(points=(coords, labels), boxes=None, masks=masks)

    def mask_input(self, full: torch.Tensor, logit: float) -> torch.Tensor:
        """N x 1 x low-res mask-prompt logits (+logit inside, -logit outside) of N x 1 x H x W image-size masks: resized
        to the model's square input like the image, then to the prompt encoder's mask frame."""
        square = F.interpolate(full.float(), (self.img_size, self.img_size), mode="bilinear", align_corners=False)
        low = F.interpolate(square, (self.low_res, self.low_res), mode="bilinear", align_corners=False)
        return (low > 0.5).float().mul_(2).sub_(1).mul_(logit)

    def decode(self, feats: Features, sparse, dense, image_pe, multimask: bool):
        low, iou, _, _ = self.model.sam_mask_decoder(
            image_embeddings=feats[0], image_pe=image_pe, sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense, multimask_output=multimask, repeat_image=len(sparse) > 1,
            high_res_features=list(feats[1:]))
        return low, iou

    def input_size(self, size: tuple[int, int]) -> tuple[int, int]:
        return self.img_size, self.img_size

    def postprocess(self, low_res: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Low-res logits straight to the original size (SAM2Transforms.postprocess_masks, no hole filling)."""
        return F.interpolate(low_res, size, mode="bilinear", align_corners=False)

    def lowres_target(self, mask: np.ndarray) -> np.ndarray:
        return _square_target(mask, self.low_res)


def ops_for(model) -> SamOps:
    """The family ops of a built model."""
    from defect_vision.models.sam2 import is_sam2

    return Sam2Ops(model) if is_sam2(model) else SamOps(model)
