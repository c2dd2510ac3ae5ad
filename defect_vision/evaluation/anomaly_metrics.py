"""Figures of a `predict --anomaly` run (issue 21): pixel AUROC / AUPRO / max-F1 and image AUROC of the heat map
alone, of the named pipeline alone and of their fusion, and per defect type how many ground-truth instances a named
detection finds, how many only an `anomaly` (unknown-defect) detection finds, and how many neither.

Fusion: pixel score = max(named score map, heat map / map_scale) (both within [0, 1]); image score = max(highest
named score, anomaly_score / map_scale). A ground-truth instance is found by a detection whose mask has IoU >= 0.3
with it: `by_name` by a named detection of its own class (the open-vocabulary question), `named` by any named
detection, `unknown` only by an `anomaly` one, `missed` by none. Maps are compared at 1/256 steps (the pixel curves
are exact per level)."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

from defect_vision.coco import CocoDataset, load_results
from defect_vision.detections import Detections
from defect_vision.evaluation import mask_iou, pixel_metrics
from defect_vision.evaluation.inputs import (
    Predictions,
    image_id_map,
    image_ids_listing,
    of_image,
)
from defect_vision.io import read_json

ANOMALY = "anomaly"
HIT_IOU = 0.3
LEVELS = 256


def anomaly_info(pred_path: Path | None) -> dict | None:
    """summary.json's `anomaly` section beside a predictions.json (None: not an anomaly run)."""
    if pred_path is None:
        return None
    summary = Path(pred_path).with_name("summary.json")
    if not summary.is_file():
        return None
    doc = read_json(summary, "prediction summary")
    return doc.get("anomaly") if isinstance(doc, dict) else None


def load_with_anomaly(pred_path: Path, gt: CocoDataset, info: dict) -> tuple[Predictions, Predictions, bool]:
    """(named predictions over gt's classes, anomaly predictions, ids matched by path) of an anomaly run."""
    cid = int(info["category_id"])
    extended = replace(gt, categories=[*gt.categories, {"id": cid, "name": ANOMALY}])
    ids = image_id_map(pred_path, gt)
    found = load_results(Path(pred_path), extended, ids)
    k = len(gt.categories)
    named, unknown = {}, {}
    for image_id, det in found.items():
        named[image_id] = replace(det[det.class_id != k], class_names=gt.class_names, category_ids=gt.category_ids)
        unknown[image_id] = det[det.class_id == k]
    return named, unknown, ids is not None


def _heat_map(folder: Path, entry: dict | None, h: int, w: int, scale: float) -> np.ndarray:
    """The heat map of an image in [0, 1] (0 where the run has none)."""
    if not entry or "anomaly_map" not in entry:
        return np.zeros((h, w), np.float64)
    img = cv2.imread(str(folder / entry["anomaly_map"]), cv2.IMREAD_UNCHANGED)
    if img is None or img.shape[:2] != (h, w):
        from defect_vision.errors import DatasetError

        raise DatasetError(f"{folder / entry['anomaly_map']}: missing, unreadable or not {h}x{w}")
    return img.astype(np.float64) / 65535.0


def _q(a: np.ndarray) -> np.ndarray:
    return np.round(a * (LEVELS - 1)) / (LEVELS - 1)


def _image_auroc(scores: list[float], anomalous: list[bool]) -> float | None:
    from sklearn.metrics import roc_auc_score

    return round(float(roc_auc_score(anomalous, scores)), 4) if 0 < sum(anomalous) < len(anomalous) else None


def _found(truth: Detections, pred: Detections, same_class: bool = False) -> np.ndarray:
    """Per ground-truth instance: some prediction's mask (of its class, with same_class) has IoU >= HIT_IOU with it."""
    if not len(truth) or not len(pred):
        return np.zeros(len(truth), bool)
    hits = mask_iou.iou_matrix(pred.rles(), truth.rles()) >= HIT_IOU
    if same_class:
        hits &= np.asarray(pred.names)[:, None] == np.asarray(truth.names)[None, :]
    return hits.any(axis=0)


def anomaly_figures(gt: CocoDataset, named: Predictions, unknown: Predictions, pred_path: Path, info: dict) -> dict:
    """The three-way figures and the per-type recall (see the module docstring)."""
    folder = Path(pred_path).parent
    listing = read_json(image_ids_listing(pred_path), "image id listing")
    ids = image_id_map(pred_path, gt) or {}
    entries = {ids.get(e["id"], e["id"]): e for e in listing if isinstance(e, dict)}
    scale = float(info.get("map_scale") or 1.0)
    maps = {"map": [], "named": [], "fusion": []}
    image_scores = {"map": [], "named": [], "fusion": []}
    masks, anomalous, recall = [], [], {}
    for im in gt.images:
        truth, pred, unk = gt.detections[im.id], of_image(named, gt, im.id), unknown.get(im.id)
        heat = _q(_heat_map(folder, entries.get(im.id), im.height, im.width, scale))
        named_map = pixel_metrics.score_map(pred.rles(), pred.score.tolist(), im.height, im.width)
        maps["map"].append(heat)
        maps["named"].append(named_map)
        maps["fusion"].append(np.maximum(named_map, heat))
        masks.append(pixel_metrics.gt_map(truth.rles(), im.height, im.width))
        anomalous.append(not im.is_good)
        entry = entries.get(im.id) or {}
        a_score = min(1.0, float(entry.get("anomaly_score", 0.0)) / scale)
        n_score = float(pred.score.max(initial=0.0))
        image_scores["map"].append(a_score)
        image_scores["named"].append(n_score)
        image_scores["fusion"].append(max(a_score, n_score))
        by_name, by_named = _found(truth, pred, same_class=True), _found(truth, pred)
        by_unknown = _found(truth, unk) if unk is not None else np.zeros(len(truth), bool)
        for k, name in enumerate(truth.names):
            r = recall.setdefault(name, {"instances": 0, "by_name": 0, "named": 0, "unknown": 0, "missed": 0})
            r["instances"] += 1
            r["by_name"] += int(by_name[k])
            r["named" if by_named[k] else "unknown" if by_unknown[k] else "missed"] += 1
    out = {"model": info.get("model"), "method": info.get("method"), "map_threshold": info.get("map_threshold"),
           "hit_iou": HIT_IOU}
    for kind in ("map", "named", "fusion"):
        px = pixel_metrics.pixel_metrics(maps[kind], masks, anomalous)
        out[kind] = {"pixel_auroc": px.get("auroc"), "aupro": px.get("aupro"), "max_f1": px.get("max_f1"),
                     "image_auroc": _image_auroc(image_scores[kind], anomalous)}
    for r in recall.values():
        r["recall_by_name"] = round(r["by_name"] / r["instances"], 4)
        r["recall_named"] = round(r["named"] / r["instances"], 4)
        r["recall_fusion"] = round((r["named"] + r["unknown"]) / r["instances"], 4)
    out["recall"] = dict(sorted(recall.items()))
    return out


def load_named(pred_path: Path, gt: CocoDataset) -> tuple[Predictions, bool]:
    """inputs.load_predictions for any run: the named detections only when it is a predict --anomaly run."""
    from defect_vision.evaluation.inputs import load_predictions

    info = anomaly_info(pred_path)
    if info is None:
        return load_predictions(pred_path, gt)
    named, _, matched = load_with_anomaly(pred_path, gt, info)
    return named, matched
