"""Prompt tuning (YOLO-World's recipe, configs/prompt_tuning_coco in AILab-CVC/YOLO-World): the class embeddings
become a learnable (K, 512) parameter initialised from their CLIP embeddings, used as unit vectors, trained
without weight decay and pulled towards the initialisation by `reg * mean_k ||e_k - e0_k||^2`.

The same applies to YOLOE (the table holds the text-model vectors; YOLOE's head projects them).
The table is a plain `torch.nn.Module` attached to the WorldModel / YOLOEModel as `prompt_table` (weight: parameter, init:
buffer), so ultralytics' optimizer, EMA, gradient clipping and checkpoints carry it, and any ultralytics install
can unpickle the checkpoint. What the model predicts with is `txt_feats`, baked from the table."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

ATTR = "prompt_table"


def attach_prompt_table(model: torch.nn.Module, init: torch.Tensor, names: Sequence[str]) -> torch.nn.Module:
    """Add (or re-use, on resume) the learnable table of `model`; rows follow `names`."""
    table = getattr(model, ATTR, None)
    if table is None or tuple(table.weight.shape) != tuple(init.shape):
        table = torch.nn.Module()
        table.weight = torch.nn.Parameter(init.detach().float().clone())
        table.register_buffer("init", init.detach().float().clone())
        setattr(model, ATTR, table)
    table.names = list(names)
    return table


def tuned(model: torch.nn.Module) -> torch.Tensor | None:
    """(K, 512) unit-norm tuned embeddings of a model with a table (None without one)."""
    table = getattr(model, ATTR, None)
    return None if table is None else F.normalize(table.weight.float(), dim=-1)


def bake(model: torch.nn.Module) -> bool:
    """Copy the table's current embeddings into the class embeddings validation and saved checkpoints predict with
    (YOLO-World's `txt_feats`; YOLOE's `pe`, through its head's projection)."""
    from defect_vision.models.detector import bake_text

    emb = tuned(model)
    if emb is None:
        return False
    bake_text(model, list(getattr(model, ATTR).names), emb.detach().clone())
    return True


def batch_text_features(model: torch.nn.Module, texts: list[list[str]]) -> torch.Tensor:
    """(B, T, 512) text features of a multi-modal batch (per image its sampled class names), with gradients."""
    table = getattr(model, ATTR)
    index = {n: i for i, n in enumerate(table.names)}
    flat = [t for per_image in texts for t in per_image]
    missing = sorted({t for t in flat if t not in index})
    if missing:
        raise KeyError(f"no tuned prompt for {missing}")
    rows = torch.as_tensor([index[t] for t in flat], device=table.weight.device)
    return F.normalize(table.weight, dim=-1)[rows].reshape(len(texts), -1, table.weight.shape[-1])


def pull(model: torch.nn.Module) -> torch.Tensor:
    """mean_k ||e_k - e0_k||^2 of the (unit) tuned embeddings from their initialisation."""
    table = getattr(model, ATTR)
    return ((F.normalize(table.weight.float(), dim=-1) - table.init) ** 2).sum(-1).mean()


class PulledLoss:
    """The detection criterion plus `reg * pull` (per image, as ultralytics scales its losses by the batch size).
    The logged loss items stay box/cls/dfl."""

    def __init__(self, base, model: torch.nn.Module, reg: float):
        self.base, self.model, self.reg = base, model, float(reg)

    def __call__(self, preds, batch):
        loss, items = self.base(preds, batch)
        if self.reg > 0:
            loss = loss + self.reg * pull(self.model) * batch["img"].shape[0] / loss.numel()
        return loss, items


def drift(tuned_emb: torch.Tensor, init: torch.Tensor, names: Sequence[str]) -> dict[str, float]:
    """Per class 1 - cos(tuned, CLIP initialisation): 0 = unchanged."""
    cos = F.cosine_similarity(tuned_emb.float(), init.float(), dim=-1)
    return {n: round(float(1 - c), 6) for n, c in zip(names, cos)}
