"""One SAM training epoch and one validation pass over cached image embeddings."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from segment_anything.modeling import Sam
from tqdm import tqdm

from defect_vision.detections import Detections
from defect_vision.devices import HALF, autocast, full_precision, to_device
from defect_vision.models.sam_family import ops_for
from defect_vision.training.sam_config import SamTrainConfig
from defect_vision.training.sam_data import (
    PromptSet,
    jitter_boxes,
    padded_points,
)
from defect_vision.training.sam_losses import mask_iou, sam_loss

EmbedFn = Callable[[Path], torch.Tensor]


def step_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype of the training and validation steps: HALF on CUDA (with a GradScaler), fp32 elsewhere."""
    return HALF if device.type == "cuda" else None


class PromptedDecoder(torch.nn.Module):
    """The prompt encoder + mask decoder of a SAM family on precomputed image features (the part that trains)."""

    def __init__(self, sam: Sam):
        super().__init__()
        self.ops = ops_for(sam)
        self.prompt_encoder = self.ops.prompt_encoder()
        self.mask_decoder = self.ops.mask_decoder()

    def forward(self, embeddings: list, boxes: list[torch.Tensor],
                points: list[tuple[torch.Tensor, torch.Tensor] | None], multimask: bool = False) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per image (one forward call for a whole step, as DDP wants): embedding 1xCxgxg (SAM 2: its three maps),
        boxes Nx4 in the input frame, optional points -> (low-res logits NxMx4gx4g, IoU predictions NxM)."""
        out = []
        for emb, box, pts in zip(embeddings, boxes, points):
            feats = emb if isinstance(emb, tuple) else (emb,)
            with full_precision(box.device):  # coordinates and their sin/cos encodings in fp32, as at inference
                sparse, dense = self.ops.prompts(box, pts)
                image_pe = self.prompt_encoder.get_dense_pe()
            out.append(self.ops.decode(feats, sparse, dense, image_pe, multimask))
        return out


class Samples:
    """The images of a prompt set that have instances, with their prompts and targets (prepared once, kept)."""

    def __init__(self, prompts: PromptSet, sam: Sam):
        self.images: list[Detections] = prompts.with_instances
        self.ops = ops_for(sam)
        self.img_size, self.low_res = self.ops.img_size, self.ops.low_res
        self._targets: dict[tuple[int, str], torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.images)

    @property
    def paths(self) -> list[Path]:
        return [det.image.path for det in self.images]

    def target(self, det: Detections, device: torch.device | str = "cpu") -> torch.Tensor:
        """N x low x low float32 soft targets in the low-res logit frame, made once and kept on `device`."""
        key = (det.image.id, str(device))
        if key not in self._targets:
            self._targets[key] = torch.from_numpy(
                np.stack([self.ops.lowres_target(m) for m in det.masks])).to(device)
        return self._targets[key]

    @staticmethod
    def full_masks(det: Detections) -> torch.Tensor:
        """N x H x W bool ground truth at original size."""
        return torch.from_numpy(det.masks)

    def prompts(self, det: Detections, device: torch.device, rng: np.random.Generator | None,
                config: SamTrainConfig) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """(boxes Nx4, points or None) in the input frame; boxes jittered when rng is given."""
        size = (det.image.height, det.image.width)
        boxes = det.xyxy
        if rng is not None:
            boxes = jitter_boxes(boxes, *size, rng, config.jitter, config.jitter_max)
        boxes_t = to_device(self.ops.boxes(boxes, size), device)
        points = None
        if config.points:
            coords, labels = padded_points(det)
            points = (to_device(self.ops.coords(coords, size), device), to_device(labels, device))
        return boxes_t, points


def train_epoch(model: torch.nn.Module, samples: Samples, order: list[int], embed: EmbedFn, optimizer, scheduler,
                scaler, rng: np.random.Generator, config: SamTrainConfig, device: torch.device, bar: bool = False,
                on_step: Callable[[int], None] | None = None) -> float:
    """One pass over `order` (image indices), `config.batch_images` images per step; mean loss per instance. The
    loss stays on the device until the epoch ends (no host synchronisation per step)."""
    model.train()
    total, count = torch.zeros((), dtype=torch.float64, device=device), 0
    steps = range(0, len(order), config.batch_images)
    for step, start in enumerate(tqdm(steps, desc="train", unit="step", disable=not bar, leave=False)):
        batch = [samples.images[i] for i in order[start : start + config.batch_images]]
        prompts = [samples.prompts(det, device, rng, config) for det in batch]
        n_inst = sum(len(det) for det in batch)
        with autocast(device, step_dtype(device)):
            outputs = model([embed(det.image.path) for det in batch], [b for b, _ in prompts], [p for _, p in prompts],
                            config.multimask)
            losses = [sam_loss(logits.float(), iou.float(), samples.target(det, device)) * len(det)
                      for det, (logits, iou) in zip(batch, outputs)]
            loss = torch.stack(losses).sum() / n_inst  # per-instance mean over all instances of the step
        count += n_inst
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if config.clip_grad > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], config.clip_grad)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        total += loss.detach() * n_inst
        if on_step is not None:
            on_step(step)
    return float(total) / max(count, 1)


@torch.no_grad()
def evaluate(sam: Sam, decoder: PromptedDecoder, samples: Samples, indices: list[int], embed: EmbedFn,
             config: SamTrainConfig, device: torch.device) -> tuple[float, int]:
    """(sum of per-instance mask IoU at original resolution, number of instances) with exact GT boxes."""
    decoder.eval()
    total, n = torch.zeros((), dtype=torch.float64, device=device), 0
    for idx in indices:
        det = samples.images[idx]
        boxes, points = samples.prompts(det, device, None, config)
        with autocast(device, step_dtype(device)):
            logits, iou = decoder([embed(det.image.path)], [boxes], [points], config.multimask)[0]
        if config.multimask:  # what SamPredictor users take: the mask with the highest predicted IoU
            logits = logits[torch.arange(len(logits)), iou.argmax(1)][:, None]
        masks = samples.ops.postprocess(logits.float(), (det.image.height, det.image.width))[:, 0]
        total += mask_iou(masks, samples.full_masks(det).to(device).float(), config.mask_threshold).sum()
        n += len(det)
    return float(total), n
