"""SAM's training loss, averaged per instance: 20 x focal + dice + MSE(predicted IoU, true IoU)."""
from __future__ import annotations

import torch
from torchvision.ops import sigmoid_focal_loss

FOCAL_WEIGHT = 20.0


def focal_per_instance(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Sigmoid focal loss (RetinaNet) averaged over each instance's pixels: (N, ...) -> (N,)."""
    return sigmoid_focal_loss(logits, target, alpha=alpha, gamma=gamma, reduction="none").flatten(1).mean(1)


def dice_per_instance(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - (2 sum(p t) + eps) / (sum(p) + sum(t) + eps) per instance, p = sigmoid(logits): (N, ...) -> (N,)."""
    p, t = logits.sigmoid().flatten(1), target.flatten(1)
    return 1 - (2 * (p * t).sum(1) + eps) / (p.sum(1) + t.sum(1) + eps)


def mask_iou(logits: torch.Tensor, target: torch.Tensor, threshold: float = 0.0) -> torch.Tensor:
    """IoU of (logits > threshold) with (target > 0.5) per instance; 1.0 when both are empty: (N, ...) -> (N,)."""
    p, t = (logits > threshold).flatten(1), (target > 0.5).flatten(1)
    inter, union = (p & t).sum(1).float(), (p | t).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def mask_loss_per_instance(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """20 x focal + dice per instance: (N, H, W) -> (N,)."""
    return FOCAL_WEIGHT * focal_per_instance(logits, target) + dice_per_instance(logits, target)


def iou_loss_per_instance(logits: torch.Tensor, iou_pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(predicted IoU - true IoU of the thresholded mask)^2 per instance: (N,)."""
    return (iou_pred - mask_iou(logits.detach(), target)) ** 2


def sam_loss_per_instance(logits: torch.Tensor, iou_pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(N, H, W) logits, (N,) predicted IoU, (N, H, W) target in [0, 1] -> (N,) loss per instance."""
    return mask_loss_per_instance(logits, target) + iou_loss_per_instance(logits, iou_pred, target)


def sam_loss(logits: torch.Tensor, iou_pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over instances (not over all pixels of the batch, so small masks weigh as much as big ones).

    logits (N, M, H, W) and iou_pred (N, M) with M candidate masks per instance: with M > 1 (multimask
    output) the mask loss takes each instance's best candidate, as in the SAM paper, while the IoU term
    trains every candidate's IoU prediction (they choose the mask at prediction time).
    """
    if logits.dim() == 3:
        logits, iou_pred = logits[:, None], iou_pred[:, None]
    n, m = logits.shape[:2]
    flat, targets = logits.flatten(0, 1), target.repeat_interleave(m, 0)
    mask = mask_loss_per_instance(flat, targets).view(n, m)
    iou = iou_loss_per_instance(flat, iou_pred.flatten(), targets).view(n, m)
    return (mask.min(1).values + iou.mean(1)).mean()
