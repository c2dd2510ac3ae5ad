"""What an experiment run is measured by, on the test split: detect with a given vocabulary, segment the boxes with
SAM from cached image embeddings (or take the boxes as masks), and score box AP50 and mask IoU, overall and by
class name, with the evaluation's own functions."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from defect_vision.coco import CocoDataset
from defect_vision.data.images import read_image
from defect_vision.detections import Detections, encode_masks
from defect_vision.evaluation.coco_metrics import coco_metrics
from defect_vision.evaluation.mask_iou import summarize
from defect_vision.evaluation.metrics import iou_figures
from defect_vision.io import torch_save
from defect_vision.models.prompts import Encoder, bake_vocabulary

Predictions = dict[int, Detections]


@dataclass
class Vocabulary:
    """The names a detector is asked for (the test split's classes), their COCO ids and phrasings."""

    names: list[str]
    category_ids: list[int]
    phrasings: dict[str, list[str]]

    @classmethod
    def of(cls, gt: CocoDataset, phrasings: dict[str, list[str]] | None = None) -> Vocabulary:
        table = phrasings or {}
        return cls(list(gt.class_names), list(gt.category_ids),
                   {n: table.get(n) or [p] for n, p in zip(gt.class_names, gt.prompts)})


def base_checkpoint(path: Path, start, from_scratch: bool, vocab: Vocabulary, embeddings: torch.Tensor,
                    imgsz: int, seed: int, meta: dict) -> Path:
    """The start model (training.detector_model.StartModel; zero-shot: no fine-tuning) with the vocabulary baked in,
    saved as an ultralytics checkpoint."""
    from ultralytics import __version__
    from ultralytics.nn.tasks import (
        WorldModel,
        YOLOEModel,
        YOLOESegModel,
        load_checkpoint,
    )
    from ultralytics.utils.torch_utils import init_seeds

    from defect_vision.offline import go_offline

    go_offline()
    init_seeds(seed)
    if from_scratch:
        build = (YOLOESegModel if start.segment else YOLOEModel) if start.family == "yoloe" else WorldModel
        model = build(start.spec, nc=len(vocab.names), verbose=False)
    else:
        model = load_checkpoint(start.spec, device="cpu")[0]
    model = model.float().eval()
    bake_vocabulary(model, vocab.names, embeddings)
    task = "segment" if start.segment else "detect"
    model.args = {"imgsz": imgsz, "task": task}
    torch_save({"model": model, "train_args": {"imgsz": imgsz, "task": task}, "date": time.strftime("%F"),
                "version": __version__, "defect_vision": {**meta, "classes": vocab.names,
                                                          "category_ids": vocab.category_ids}}, path)
    return path


def detect(checkpoint: Path, gt: CocoDataset, vocab: Vocabulary, encode: Encoder, conf: float, imgsz: int,
           device: str = "cpu", batch: int = 8) -> Predictions:
    """Boxes on every image of `gt`, detecting exactly `vocab` (names the checkpoint was not trained on are
    embedded by `encode`; the others keep the checkpoint's embeddings), with the GT's category ids. NMS as
    ultralytics' validator runs it for AP (multi-label: a box keeps every class scoring above `conf`; IoU 0.7,
    300 per image), so a held-out name is scored on every box, not only where it beats the trained names."""
    from defect_vision.devices import resolve_device
    from defect_vision.inference.detector import Detector
    from defect_vision.inference.vocabulary import open_vocabulary

    detector = Detector(Path(checkpoint), resolve_device(device), None, imgsz)
    open_vocabulary(detector, vocab.names, detector.meta, encode, phrasings=vocab.phrasings,
                    category_ids=vocab.category_ids)
    out: Predictions = {}
    for start in range(0, len(gt.images), batch):
        infos = gt.images[start : start + batch]
        for info, det in zip(infos, predict_multilabel(detector, [read_image(im.path) for im in infos], conf)):
            det.image = info
            out[info.id] = det
    return out


@torch.inference_mode()
def predict_multilabel(detector, images: list[np.ndarray], conf: float, iou: float = 0.7,
                       max_det: int = 300) -> list[Detections]:
    """inference.Detector's forward with the validator's multi-label NMS; boxes in original pixels (a YOLOE -seg
    detector's mask coefficients and prototypes are left out: the masks come from SAM or the boxes)."""
    from ultralytics.utils import nms, ops

    x = detector.preprocess(images)
    preds = detector.model(x)
    preds = preds[0] if isinstance(preds, (list, tuple)) else preds
    nc = 0  # every channel after the box is a class
    if isinstance(preds, (list, tuple)):  # -seg: (boxes + scores + mask coefficients, prototypes)
        preds, nc = preds[0], len(detector.class_names)
    found = nms.non_max_suppression(preds.float(), conf, iou, multi_label=True, max_det=max_det, nc=nc,
                                    end2end=detector.end2end)
    out = []
    for det, im in zip(found, images):
        det = det[:, :6].cpu()
        boxes = ops.scale_boxes(x.shape[2:], det[:, :4].clone(), im.shape)
        out.append(Detections(boxes.numpy().astype(np.float32), det[:, 5].numpy().astype(np.int64),
                              det[:, 4].numpy().astype(np.float32), class_names=detector.class_names,
                              category_ids=detector.category_ids))
    return out


def gt_boxes(gt: CocoDataset) -> Predictions:
    """The ground-truth boxes as predictions (score 1, no masks): SAM's upper bound."""
    return {im.id: Detections(gt.detections[im.id].xyxy.copy(), gt.detections[im.id].class_id.copy(),
                              np.ones(len(gt.detections[im.id]), np.float32), image=im, class_names=gt.class_names,
                              category_ids=gt.category_ids)
            for im in gt.images}


def box_masks(predictions: Predictions) -> Predictions:
    """Each box as its own mask (no SAM), flagged as box-only."""
    from defect_vision.inference.writers import box_rles

    for det in predictions.values():
        det.rle = box_rles(det.xyxy, det.image.height, det.image.width)
        det.data["has_mask"] = [False] * len(det)
    return predictions


class SamMasks:
    """SAM masks for boxes from cached image embeddings (training's fp16 cache: the encoder runs once per image for
    all runs that share the same frozen encoder)."""

    def __init__(self, sam, model_type: str, cache_dir: Path, device: str = "cpu", mask_threshold: float = 0.0):
        from defect_vision.devices import resolve_device
        from defect_vision.models.sam_family import ops_for
        from defect_vision.training.sam_embeddings import EmbeddingCache
        from defect_vision.training.sam_steps import PromptedDecoder

        self.device = resolve_device(device)
        self.sam = sam.to(self.device).eval()
        self.cache = EmbeddingCache(cache_dir, self.sam, model_type)
        self.decoder = PromptedDecoder(self.sam).eval()
        self.ops = ops_for(self.sam)  # the family's box transform and upsampling (SAM, MobileSAM, SAM 2)
        self.threshold = mask_threshold

    @torch.no_grad()
    def __call__(self, predictions: Predictions) -> Predictions:
        for det in predictions.values():
            h, w = det.image.height, det.image.width
            if not len(det):
                det.rle = []
                continue
            emb = self.cache.get(det.image.path, self.device)
            boxes = torch.as_tensor(self.ops.boxes(det.xyxy, (h, w)), dtype=torch.float32, device=self.device)
            logits, _ = self.decoder([emb], [boxes], [None])[0]
            masks = self.ops.postprocess(logits.float(), (h, w))[:, 0] > self.threshold
            det.rle, det.mask = encode_masks(masks.cpu().numpy()), None
        return predictions


def scores(gt: CocoDataset, predictions: Predictions, score_threshold: float) -> dict:
    """{box_ap50, mask_iou (per GT instance, class-agnostic), per_class {name: {ap50, mask_iou}}}: per class, the
    mask IoU is class-aware (that class's predictions vs its GT, per image), predictions below the threshold ignored."""
    coco = coco_metrics(gt, predictions)["bbox"].summary
    images, instances, class_images = iou_figures(gt, predictions, score_threshold)
    iou = summarize(images, instances, class_images, gt.class_names)
    return {"box_ap50": _r(coco["AP50"]), "mask_iou": _r(iou["mean_instance"]),
            "per_class": {n: {"ap50": _r(coco["per_class"][n]["AP50"]), "mask_iou": _r(iou["per_class"][n]["mean_image"])}
                          for n in gt.class_names}}


def _r(x) -> float | None:
    return None if x is None else round(float(x), 4)
