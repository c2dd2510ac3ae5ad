"""Random-init checkpoints in the real formats (no download, no CLIP): for tests, the benchmark and offline demos."""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")

import torch


def save_random_detector(path: Path, names: list[str], cfg: str = "yolov8n-worldv2.yaml", seed: int = 0,
                         score_bias: float | None = None, imgsz: int | None = None) -> Path:
    """A YOLO-World checkpoint with `names` and random unit 512-d text embeddings baked in, saved as ultralytics does.

    `score_bias` sets the contrastive heads' bias (ultralytics initialises it to -10, so a random model scores
    ~0 everywhere); 0 gives a random model that detects something on every image. `imgsz` is stored as the
    checkpoint's training size.
    """
    from ultralytics import YOLOWorld

    torch.manual_seed(seed)
    model = YOLOWorld(cfg)
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(1, len(names), 512, generator=g)
    model.model.txt_feats = feats / feats.norm(dim=-1, keepdim=True)  # what set_classes would store, minus CLIP
    model.model.model[-1].nc = len(names)
    model.model.names = dict(enumerate(names))
    if score_bias is not None:
        for head in model.model.model[-1].cv4:
            if hasattr(head, "bias"):
                head.bias.data.fill_(score_bias)
    if imgsz is not None:
        model.model.args = {**getattr(model.model, "args", {}), "imgsz": imgsz}
        model.ckpt = {**(model.ckpt or {}), "train_args": {"imgsz": imgsz, "task": "detect"}}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return Path(path)


def save_random_yoloe(path: Path, names: list[str], cfg: str = "yoloe-11n-seg.yaml", seed: int = 0,
                      imgsz: int = 640) -> Path:
    """A random-init YOLOE checkpoint as ultralytics saves it: `names` baked in from random text vectors (no
    MobileCLIP) through the head's own projection, the contrastive heads' bias at 0 (ultralytics' -10 scores ~0
    everywhere), so it detects something on every image; `imgsz` stored as its training size."""
    from ultralytics import YOLOE

    from defect_vision.models.detector import bake_text
    from defect_vision.models.text_embeddings import random_embed

    torch.manual_seed(seed)
    model = YOLOE(cfg)
    for head in model.model.model[-1].cv4:
        head.bias.data.fill_(0.0)
    bake_text(model.model, names, random_embed(names))
    model.model.args = {**getattr(model.model, "args", {}), "imgsz": imgsz}
    model.ckpt = {**(model.ckpt or {}), "train_args": {"imgsz": imgsz, "task": model.task}}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return Path(path)


def save_random_sam(path: Path, model_type: str = "vit_tiny", seed: int = 0) -> Path:
    """A random-init model built by defect_vision.models.sam, saved in its family's official format: SAM's and
    MobileSAM's plain state_dict, SAM 2's {"model": state_dict}."""
    from defect_vision.io import torch_save
    from defect_vision.models.sam import build_random_sam
    from defect_vision.models.sam_family import ops_for

    sam = build_random_sam(model_type, seed)
    torch_save(ops_for(sam).save_format(sam.state_dict()), Path(path))
    return Path(path)
