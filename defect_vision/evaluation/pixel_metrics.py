"""MVTec pixel metrics from score maps: pixel AUROC, AUPRO (FPR <= 0.3), pixel max-F1, region max-F1, image AUROC.

Every curve is computed exactly from per-score-level pixel counts accumulated image by image (the maps of
a predictions file take few distinct values: the prediction scores and 0), so no full-dataset pixel array
is ever held. AUPRO follows the MVTec AD reference (`compute_pro` + `trapezoid`, 8-connected GT regions,
curve closed at (1, 1), area up to the FPR limit divided by the limit). Region max-F1 follows SAA+: at each
threshold a predicted region (8-connected) is a hit when its IoU with a GT region is >= 0.6; with no score above
0 (no predictions) it is 0.0 when there are GT regions (recall 0; threshold null), null without GT regions.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np
from pycocotools import mask as mask_utils
from sklearn.metrics import roc_auc_score

from defect_vision.coco import union_rle
from defect_vision.detections import Detections, ImageInfo


def score_map(rles: list[dict], scores: list[float], height: int, width: int) -> np.ndarray:
    """Pixel = max score of the masks that cover it, 0 elsewhere (float64 HxW, the scores exactly)."""
    out = np.zeros((height, width), np.float64)
    for rle, s in sorted(zip(rles, scores), key=lambda t: t[1]):  # ascending: the highest score is written last
        out[mask_utils.decode(rle).astype(bool)] = s
    return out


def gt_map(rles: list[dict], height: int, width: int) -> np.ndarray:
    return mask_utils.decode(union_rle(rles, height, width)).astype(bool)


def add_image(acc: PixelAccumulator, truth: Detections, pred: Detections, image: ImageInfo) -> None:
    """Feed one image to `acc`: the score map of all its predictions and its ground-truth mask."""
    scores = score_map(pred.rles(), pred.score.tolist(), image.height, image.width)
    acc.add(scores, gt_map(truth.rles(), image.height, image.width), anomalous=not image.is_good,
            levels=np.unique(np.concatenate([[0.0], pred.score])))


def _region_counts(pred: np.ndarray, gt_labels: np.ndarray, n_gt: int, overlap: float) -> tuple[int, int]:
    """(predicted regions, predicted regions whose IoU with some GT region is >= overlap)."""
    n_pred, pred_labels = cv2.connectedComponents(pred.astype(np.uint8), connectivity=8)
    n_pred -= 1
    if n_pred == 0 or n_gt == 0:
        return n_pred, 0
    both = (pred_labels > 0) & (gt_labels > 0)
    inter = np.bincount(pred_labels[both] * (n_gt + 1) + gt_labels[both], minlength=(n_pred + 1) * (n_gt + 1))
    inter = inter.reshape(n_pred + 1, n_gt + 1)[1:, 1:]
    area_p = np.bincount(pred_labels.ravel(), minlength=n_pred + 1)[1:]
    area_g = np.bincount(gt_labels.ravel(), minlength=n_gt + 1)[1:]
    iou = inter / (area_p[:, None] + area_g[None, :] - inter)
    return n_pred, int((iou.max(axis=1) >= overlap).sum())


@dataclass
class PixelAccumulator:
    """Feed (score map, GT mask) image by image; `result()` gives the pixel metrics."""

    region_thresholds: np.ndarray  # thresholds (score >= t) swept for region max-F1
    region_overlap: float = 0.6
    fpr_limit: float = 0.3
    _levels: list[np.ndarray] = field(default_factory=list)
    _neg: list[np.ndarray] = field(default_factory=list)
    _pos: list[np.ndarray] = field(default_factory=list)
    _pro: list[np.ndarray] = field(default_factory=list)
    _n_regions: int = 0
    _image_scores: list[float] = field(default_factory=list)
    _image_labels: list[int] = field(default_factory=list)
    _region_gt: int = 0
    _region_pred: np.ndarray | None = None
    _region_hit: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.region_thresholds = np.sort(np.asarray(self.region_thresholds, float))
        self._region_pred = np.zeros(len(self.region_thresholds), np.int64)
        self._region_hit = np.zeros(len(self.region_thresholds), np.int64)

    def add(self, scores: np.ndarray, gt: np.ndarray, anomalous: bool | None = None,
            levels: np.ndarray | None = None) -> None:
        """`levels`: the sorted distinct values `scores` may take, when known (much faster than finding them)."""
        gt = gt.astype(bool)
        if levels is None:
            levels, inverse = np.unique(scores, return_inverse=True)
        else:
            levels = np.asarray(levels, scores.dtype)
            inverse = np.searchsorted(levels, scores.ravel())
            if inverse.max(initial=0) >= len(levels) or not np.array_equal(levels[inverse], scores.ravel()):
                raise ValueError("score map takes values outside `levels`")
        inverse = inverse.ravel()
        flat_gt = gt.ravel()
        n_gt, gt_labels = cv2.connectedComponents(gt.astype(np.uint8), connectivity=8)
        n_gt -= 1
        flat_labels = gt_labels.ravel()
        region_size = np.bincount(flat_labels, minlength=n_gt + 1).astype(float)
        on_gt = np.flatnonzero(flat_gt)  # the few defect pixels: count them apart
        total = np.bincount(inverse, minlength=len(levels))
        pos = np.bincount(inverse[on_gt], minlength=len(levels))
        self._levels.append(levels)
        self._pos.append(pos.astype(float))
        self._neg.append((total - pos).astype(float))
        self._pro.append(np.bincount(inverse[on_gt], weights=1.0 / region_size[flat_labels[on_gt]], minlength=len(levels)))
        self._n_regions += n_gt
        self._image_scores.append(float(scores.max()) if scores.size else 0.0)
        self._image_labels.append(int(gt.any() if anomalous is None else anomalous))
        self._add_regions(scores, levels, gt_labels, n_gt)

    def merge(self, other: PixelAccumulator) -> PixelAccumulator:
        """Add the images `other` was fed (same region thresholds and settings): the result is that of one
        accumulator fed both sets of images (shards evaluated apart, merged exactly)."""
        if not np.array_equal(self.region_thresholds, other.region_thresholds) or \
                (self.region_overlap, self.fpr_limit) != (other.region_overlap, other.fpr_limit):
            raise ValueError("PixelAccumulator.merge: different region thresholds or settings")
        for name in ("_levels", "_neg", "_pos", "_pro", "_image_scores", "_image_labels"):
            getattr(self, name).extend(getattr(other, name))
        self._n_regions += other._n_regions
        self._region_gt += other._region_gt
        self._region_pred += other._region_pred
        self._region_hit += other._region_hit
        return self

    def _add_regions(self, scores: np.ndarray, levels: np.ndarray, gt_labels: np.ndarray, n_gt: int) -> None:
        # thresholds between two of this image's levels give the same binary map: compute it once
        which = np.searchsorted(levels, self.region_thresholds, side="left")  # first level >= t
        cache: dict[int, tuple[int, int]] = {}
        for k, idx in enumerate(which):
            if idx >= len(levels):
                continue  # nothing reaches t
            if idx not in cache:
                cache[idx] = _region_counts(scores >= levels[idx], gt_labels, n_gt, self.region_overlap)
            n_pred, hits = cache[idx]
            self._region_pred[k] += n_pred
            self._region_hit[k] += hits
        self._region_gt += n_gt

    def _curves(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per score level, highest first: (level, positives, negatives, PRO mass)."""
        levels = np.concatenate(self._levels)
        uniq, inv = np.unique(levels, return_inverse=True)
        sums = [np.bincount(inv, weights=np.concatenate(x), minlength=len(uniq)) for x in (self._pos, self._neg, self._pro)]
        return uniq[::-1], sums[0][::-1], sums[1][::-1], sums[2][::-1]

    def result(self) -> dict:
        if not self._levels:
            return {"auroc": None, "aupro": None, "max_f1": None, "max_f1_threshold": None,
                    "region_max_f1": None, "region_max_f1_threshold": None, "image_auroc": None}
        levels, pos, neg, pro = self._curves()
        n_pos, n_neg = pos.sum(), neg.sum()
        tp, fp = np.cumsum(pos), np.cumsum(neg)
        out: dict = {}
        if n_pos and n_neg:
            tpr = np.concatenate([[0.0], tp / n_pos])
            fpr = np.concatenate([[0.0], fp / n_neg])
            out["auroc"] = float(np.trapezoid(tpr, fpr))
        else:
            out["auroc"] = None
        out["aupro"] = aupro_from_curve(fp / n_neg, np.cumsum(pro) / self._n_regions, self.fpr_limit) \
            if self._n_regions and n_neg else None
        if n_pos:
            f1 = 2 * tp / (tp + fp + n_pos)
            k = int(np.argmax(f1))
            out["max_f1"], out["max_f1_threshold"] = float(f1[k]), float(levels[k])
        else:
            out["max_f1"] = out["max_f1_threshold"] = None
        out["region_max_f1"], out["region_max_f1_threshold"] = self._region_f1()
        labels = np.array(self._image_labels)
        out["image_auroc"] = float(roc_auc_score(labels, self._image_scores)) if 0 < labels.sum() < len(labels) else None
        return out

    def _region_f1(self) -> tuple[float | None, float | None]:
        n_gt = self._region_gt
        if not n_gt:
            return None, None  # no GT region: recall undefined
        if not len(self.region_thresholds):
            return 0.0, None  # no prediction scored above 0: no region found, recall 0 (as SAA+ gives); no threshold

        hits, preds = self._region_hit.astype(float), self._region_pred.astype(float)
        recall = hits / n_gt
        precision = np.divide(hits, preds, out=np.zeros_like(hits), where=preds > 0)
        denom = precision + recall
        f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(hits), where=denom > 0)
        k = int(np.argmax(f1))
        return float(f1[k]), float(self.region_thresholds[k])


def aupro_from_curve(fprs: np.ndarray, pros: np.ndarray, fpr_limit: float = 0.3) -> float:
    """Normalised area under the PRO(FPR) curve up to fpr_limit, as the MVTec AD reference computes it."""
    x = np.concatenate([[0.0], np.clip(fprs, None, 1.0), [1.0]])
    y = np.concatenate([[0.0], np.clip(pros, None, 1.0), [1.0]])
    keep = x <= fpr_limit
    area = float(np.sum(0.5 * (y[keep][1:] + y[keep][:-1]) * np.diff(x[keep])))
    if fpr_limit not in x:
        i = int(np.argmax(x > fpr_limit))  # first point beyond the limit; the one before is <= the limit
        y_lim = y[i - 1] + (y[i] - y[i - 1]) * (fpr_limit - x[i - 1]) / (x[i] - x[i - 1])
        area += 0.5 * (y_lim + y[i - 1]) * (fpr_limit - x[i - 1])
    return area / fpr_limit


def region_thresholds(levels: np.ndarray, max_steps: int = 200) -> np.ndarray:
    """The distinct score levels but the lowest (it marks every pixel), thinned to max_steps quantiles."""
    levels = np.unique(np.asarray(levels, float))[1:]
    if len(levels) > max_steps:
        levels = np.unique(np.quantile(levels, np.linspace(0, 1, max_steps), method="nearest"))
    return levels


def pixel_metrics(score_maps: list[np.ndarray], gt_masks: list[np.ndarray], anomalous: list[bool] | None = None,
                  max_steps: int = 200, fpr_limit: float = 0.3, region_overlap: float = 0.6) -> dict:
    """All pixel metrics of a list of score maps and GT masks (convenience wrapper around PixelAccumulator)."""
    levels = np.concatenate([np.unique(s) for s in score_maps]) if score_maps else np.zeros(0)
    acc = PixelAccumulator(region_thresholds(levels, max_steps), region_overlap, fpr_limit)
    for i, (s, g) in enumerate(zip(score_maps, gt_masks)):
        acc.add(s, g, None if anomalous is None else anomalous[i])
    return acc.result()
