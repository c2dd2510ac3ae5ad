"""Which unlabelled images to label next: each image's score from its predictions, and the ranking.

Three terms, each in [0, 1], added with weights (one score; the CSV keeps the three):
- uncertainty: max over the image's detections of a two-sided tent around the class's calibrated threshold t,
  `s / t` below it and `(1 - s) / (1 - t)` above it: 1 at the threshold, 0 at score 0 and at score 1. Each side is
  scaled to its own range: `1 - |s - t| / max(t, 1 - t)` would call a 0.01 box 68 % uncertain when t = 0.25.
- disagreement: max over detections of (1 - IoU of the box with the tight box of its SAM mask), counted in
  proportion to how close the detection is to being shown (`min(1, s / t)`): junk boxes far below the threshold do
  not count. An empty mask disagrees fully.
- rarity: max over detections of `sqrt(n_min / n_c)` (1/sqrt of the labelled images of the predicted class,
  scaled so that the rarest class is 1), times the same `min(1, s / t)`.
The `reason` names the largest weighted term in words. Near-duplicates (a 64-bit difference hash within
`near_duplicate` bits of an image already picked) are skipped when ranking."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from defect_vision.detections import Detections, ImageInfo
from defect_vision.errors import ConfigError
from defect_vision.thresholds import DEFAULT_CONF, ClassThresholds, ThresholdsFile

TERMS = ("uncertainty", "disagreement", "rarity")


@dataclass(frozen=True)
class SelectConfig:
    """How images are scored and picked (checked at construction; never changed)."""

    budget: int
    weights: tuple[float, float, float] = (1.0, 1.0, 1.0)  # uncertainty, disagreement, rarity
    conf_floor: float | None = None  # candidates' detector confidence (default: half the lowest threshold)
    near_duplicate: int = 4  # dHash bits within which an image repeats one already picked (< 0: no check)
    seed: int = 0  # order of images with equal scores (e.g. none detected anything): a seeded shuffle

    def __post_init__(self):
        if self.budget < 1:
            raise ConfigError(f"{{budget}} {self.budget}: must be >= 1", "budget")
        if len(self.weights) != 3 or min(self.weights) < 0 or not any(self.weights):
            raise ConfigError(f"{{weights}} {list(self.weights)}: expected 3 numbers >= 0, not all 0", "weights")
        if self.conf_floor is not None and not 0.0 <= self.conf_floor <= 1.0:
            raise ConfigError(f"{{conf_floor}} {self.conf_floor}: must be within [0, 1]", "conf_floor")


@dataclass
class Candidate:
    """One unlabelled image's score, its terms and why."""

    image: ImageInfo
    name: str  # the run's output name of the image (masks/<name>.png)
    score: float
    terms: dict[str, float]
    reason: str
    detections: int  # at the candidates' confidence
    shown: int  # at the thresholds (the pre-annotations)
    near_duplicate_of: str | None = None  # the picked image it repeats (ranking skipped it)
    selected: bool = False


def uncertainty(score: np.ndarray, threshold: np.ndarray) -> np.ndarray:
    """The two-sided tent: 1 at the threshold, 0 at scores 0 and 1."""
    s, t = np.asarray(score, float), np.asarray(threshold, float)
    below = np.divide(s, t, out=np.zeros_like(s), where=t > 0)
    above = np.divide(1 - s, 1 - t, out=np.zeros_like(s), where=t < 1)
    return np.clip(np.where(s < t, below, above), 0.0, 1.0)


def closeness(score: np.ndarray, threshold: np.ndarray) -> np.ndarray:
    """min(1, s / t): how near a detection is to being shown (1 at or above its threshold)."""
    s, t = np.asarray(score, float), np.asarray(threshold, float)
    return np.clip(np.divide(s, t, out=np.ones_like(s), where=t > 0), 0.0, 1.0)


def box_mask_iou(det: Detections) -> np.ndarray:
    """Per detection, the IoU of its box with the tight box of its mask (0 for an empty mask)."""
    if not len(det):
        return np.zeros(0)
    rles = det.rles()
    tight = np.asarray(mask_utils.toBbox(rles), float).reshape(-1, 4)  # xywh
    boxes = det.xywh
    x0, y0 = np.maximum(boxes[:, 0], tight[:, 0]), np.maximum(boxes[:, 1], tight[:, 1])
    x1 = np.minimum(boxes[:, 0] + boxes[:, 2], tight[:, 0] + tight[:, 2])
    y1 = np.minimum(boxes[:, 1] + boxes[:, 3], tight[:, 1] + tight[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    union = boxes[:, 2] * boxes[:, 3] + tight[:, 2] * tight[:, 3] - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    return np.where(np.asarray(mask_utils.area(rles)) > 0, iou, 0.0)


def rarity(counts: dict[str, int] | None, class_names: list[str]) -> np.ndarray:
    """Per class index, sqrt(n_min / n_c) over the labelled images of each class (a class with none counts 1); all
    0 when the counts are unknown."""
    if not counts:
        return np.zeros(len(class_names))
    n = np.array([max(int(counts.get(c, 0)), 1) for c in class_names], float)
    return np.sqrt(n.min() / n)


def score_image(det: Detections, name: str, thresholds: ClassThresholds, rare: np.ndarray,
                counts: dict[str, int] | None, weights: tuple[float, float, float]) -> Candidate:
    """An image's terms, score and reason from its detections (with masks) at the candidates' confidence."""
    info = det.image
    if not len(det):
        return Candidate(info, name, 0.0, dict.fromkeys(TERMS, 0.0), "no detection", 0, 0)
    t = np.array([thresholds.by_class.get(int(c), thresholds.default) for c in det.class_id], float)
    near = closeness(det.score, t)
    iou = box_mask_iou(det)
    per = {"uncertainty": uncertainty(det.score, t), "disagreement": (1 - iou) * near,
           "rarity": rare[det.class_id] * near}
    best = {k: int(np.argmax(v)) for k, v in per.items()}
    terms = {k: round(float(per[k][best[k]]), 4) for k in TERMS}
    weighted = {k: w * terms[k] for k, w in zip(TERMS, weights)}
    top = max(TERMS, key=lambda k: weighted[k])
    i = best[top]
    cls = det.names[i]
    if weighted[top] <= 0:
        reason = "nothing near a threshold"
    elif top == "uncertainty":
        reason = f"uncertain: {cls} {det.score[i]:.2f} near threshold {t[i]:.2f}"
    elif top == "disagreement":
        reason = f"mask/box disagree (IoU {iou[i]:.2f}): {cls} {det.score[i]:.2f}"
    else:
        n = int((counts or {}).get(cls, 0))
        reason = f"rare class: {cls} ({n} label{'' if n == 1 else 's'})"
    shown = int((det.score.astype(np.float32) >= t.astype(np.float32)).sum())
    return Candidate(info, name, round(sum(weighted.values()), 4), terms, reason, len(det), shown)


def dhash(gray: np.ndarray) -> int:
    """64-bit difference hash of a grayscale image (9x8 area resize, left < right per row)."""
    import cv2

    small = cv2.resize(gray, (9, 8), interpolation=cv2.INTER_AREA).astype(np.int16)
    bits = (small[:, 1:] > small[:, :-1]).flatten()
    return int(sum(1 << k for k, b in enumerate(bits) if b))


def ranked(candidates: list[Candidate], seed: int = 0) -> list[Candidate]:
    """By score, highest first; equal scores in a seeded random order (not the source's: a model that finds
    nothing would otherwise pick the first folder's images)."""
    shuffled = [candidates[i] for i in np.random.default_rng(seed).permutation(len(candidates))]
    return sorted(shuffled, key=lambda c: -c.score)


def rank(candidates: list[Candidate], budget: int, near_duplicate: int = 4, hash_of=None, seed: int = 0
         ) -> list[Candidate]:
    """The top `budget` candidates (`ranked`), skipping near-duplicates of those already picked (`hash_of(candidate)
    -> int`, computed only for the images considered); sets selected and near_duplicate_of."""
    order = ranked(candidates, seed)
    picked: list[Candidate] = []
    hashes: list[int] = []
    for cand in order:
        if len(picked) == budget:
            break
        if near_duplicate >= 0 and hash_of is not None:
            h = hash_of(cand)
            twin = next((p for p, q in zip(picked, hashes) if (h ^ q).bit_count() <= near_duplicate), None)
            if twin is not None:
                cand.near_duplicate_of = twin.name
                continue
            hashes.append(h)
        cand.selected = True
        picked.append(cand)
    return picked


def threshold_values(named: Path | None, implied: Path | None) -> list[float]:
    """Every threshold `choose` can apply (defect_vision.thresholds' rule without --conf): the named file's, else
    the run's when it calibrated a class, else DEFAULT_CONF."""
    if named is not None or implied is not None:
        file = ThresholdsFile.load(named or implied)
        if named is not None or file.calibrated:
            return [*file.by_name.values(), file.default if file.default is not None else DEFAULT_CONF]
    return [DEFAULT_CONF]


def default_floor(values: list[float]) -> float:
    """The candidates' confidence: half the lowest threshold in use (a box below it is < 50 % uncertain)."""
    return max(0.001, round(0.5 * min(values), 6))
