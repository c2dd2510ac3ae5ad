"""SAM loss terms against hand-computed values on tiny tensors."""
from __future__ import annotations

import math

import pytest
import torch

from defect_vision.training.sam_losses import (
    dice_per_instance,
    focal_per_instance,
    mask_iou,
    sam_loss,
    sam_loss_per_instance,
)


def test_focal_matches_hand_value():
    # logit 0 -> p = 0.5; positive pixel: alpha (1-p)^2 (-log p); negative: (1-alpha) p^2 (-log(1-p))
    logits = torch.zeros(1, 2, 2)
    target = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    pos, neg = 0.25 * 0.25 * math.log(2), 0.75 * 0.25 * math.log(2)
    assert focal_per_instance(logits, target).item() == pytest.approx((2 * pos + 2 * neg) / 4, rel=1e-6)


def test_focal_down_weights_easy_pixels():
    target = torch.ones(1, 1, 1)
    easy, hard = focal_per_instance(torch.full((1, 1, 1), 4.0), target), focal_per_instance(torch.full((1, 1, 1), -4.0), target)
    p = 1 / (1 + math.exp(-4))
    assert easy.item() == pytest.approx(0.25 * (1 - p) ** 2 * -math.log(p), rel=1e-5)
    assert hard.item() == pytest.approx(0.25 * p**2 * -math.log(1 - p), rel=1e-5)


def test_dice_matches_hand_value():
    logits = torch.zeros(1, 2, 2)  # p = 0.5 everywhere
    target = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    # 1 - (2 * 0.5 + 1) / (2 + 1 + 1)
    assert dice_per_instance(logits, target).item() == pytest.approx(0.5)
    perfect = dice_per_instance(torch.tensor([[[50.0, -50.0], [-50.0, -50.0]]]), target)
    assert perfect.item() == pytest.approx(0.0, abs=1e-6)


def test_mask_iou_and_iou_term():
    logits = torch.tensor([[[1.0, 1.0], [-1.0, -1.0]]])
    target = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    assert mask_iou(logits, target).item() == pytest.approx(1 / 3)
    assert mask_iou(-torch.ones(1, 2, 2), torch.zeros(1, 2, 2)).item() == 1.0  # both empty
    loss = sam_loss_per_instance(logits, torch.tensor([0.0]), target)
    focal, dice = focal_per_instance(logits, target), dice_per_instance(logits, target)
    assert loss.item() == pytest.approx((20 * focal + dice).item() + (1 / 3) ** 2, rel=1e-6)


def test_loss_is_a_mean_per_instance_so_small_masks_count():
    """A tiny missed mask weighs as much as a big one: the batch loss is the mean of per-instance losses."""
    big_t = torch.zeros(1, 16, 16)
    big_t[0, :8] = 1
    small_t = torch.zeros(1, 16, 16)
    small_t[0, 0, 0] = 1
    logits = torch.full((2, 16, 16), -6.0)  # predicts background everywhere
    per = sam_loss_per_instance(logits, torch.zeros(2), torch.cat([big_t, small_t]))
    batch = sam_loss(logits[:, None], torch.zeros(2, 1), torch.cat([big_t, small_t]))
    assert batch.item() == pytest.approx(per.mean().item(), rel=1e-6)
    assert per[1].item() > 0.5  # the missed 1-pixel mask keeps a dice loss > 0.5, not diluted by the 255 other pixels


def test_multimask_takes_the_best_candidate():
    target = torch.zeros(1, 4, 4)
    target[0, :2] = 1
    good = torch.where(target[0] > 0, 10.0, -10.0)
    logits = torch.stack([-good, good, -good])[None]  # the second candidate is right
    single = sam_loss(good[None, None], torch.ones(1, 1), target)
    right = torch.tensor([[0.0, 1.0, 0.0]])  # predicted IoUs that match the candidates' true IoUs (0, 1, 0)
    assert sam_loss(logits, right, target).item() == pytest.approx(single.item(), rel=1e-6)
    # the IoU head learns every candidate's IoU (it picks the mask at prediction time), not only the best one's
    wrong = torch.tensor([[0.6, 1.0, 0.3]], requires_grad=True)
    loss = sam_loss(logits, wrong, target)
    assert loss.item() == pytest.approx(single.item() + (0.6**2 + 0.3**2) / 3, rel=1e-6)
    loss.backward()
    assert wrong.grad[0].tolist() == pytest.approx([2 * 0.6 / 3, 0.0, 2 * 0.3 / 3])
