"""Image-level defect type: what the seed reports measured (whole images classified into good + defect types),
read off our detections so the two can be compared.

An image's predicted type is the class of its highest-scoring detection among those that reach their class's
threshold (`Detections.order()`: score, ties by detection index), `good` when none does. Its true type is its
COCO image entry's `defect_type` when present (the converters write it; MVTec's `combined` is a type of its
own), else the most frequent class of its annotations (ties: the lowest category id), `good` when it has none.
The `image_classification` block of metrics.json: accuracy, per-type recall (incl. good), the confusion matrix
(rows: true type, columns: predicted) and which thresholds were used.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from defect_vision.coco import CocoDataset
from defect_vision.detections import Detections, ImageInfo
from defect_vision.evaluation.inputs import Predictions
from defect_vision.evaluation.thresholds import Thresholds, apply_thresholds

GOOD = "good"
RULE = ("predicted type = class of the highest-scoring detection at the thresholds, good when none; true type = "
        "the image entry's defect_type, else the most frequent class of its annotations (ties: lowest category id), "
        "good when none")


@dataclass(frozen=True)
class TypeThresholds:
    """The score thresholds an image's detections must reach to count, and where they come from."""

    by_name: dict[str, float]  # class name -> threshold
    default: float  # classes not listed
    source: str  # "calibrated" (on val) | "score_threshold" | "default_threshold"

    def to_dict(self) -> dict:
        uniform = not self.by_name or len({*self.by_name.values(), self.default}) == 1
        return {"source": self.source, "value": self.default if uniform else None,
                "per_class": dict(self.by_name), "default": self.default}

    def describe(self) -> str:
        if self.source == "calibrated":
            return "at the per-class thresholds calibrated on val"
        option = "--score-threshold" if self.source == "score_threshold" else "--default-threshold; no val calibration"
        return f"at score >= {self.default:g} ({option})"


def choose_thresholds(class_names: list[str], calibrated: Thresholds | None, score_threshold: float,
                      default: float) -> TypeThresholds:
    """The calibrated thresholds when the evaluation calibrated on val; else `score_threshold` when it is above 0,
    else `default` (the threshold calibration gives the classes it cannot set), for every class."""
    if calibrated is not None:
        return TypeThresholds(calibrated.by_name, calibrated.default, "calibrated")
    if score_threshold > 0:
        return TypeThresholds({n: score_threshold for n in class_names}, score_threshold, "score_threshold")
    return TypeThresholds({n: default for n in class_names}, default, "default_threshold")


def true_type(image: ImageInfo, truth: Detections) -> tuple[str, str]:
    """(true type, where it came from: "defect_type" | "annotations" | "none")."""
    declared = image.extra.get("defect_type")
    if isinstance(declared, str) and declared:
        return declared, "defect_type"
    if not len(truth):
        return GOOD, "none"
    counts = Counter(zip(truth.category_id.tolist(), truth.names))
    most = max(counts.values())
    return min(key for key, n in counts.items() if n == most)[1], "annotations"  # lowest category id among the ties


def predicted_type(kept: Detections | None) -> str:
    """Class of the highest-scoring detection of `kept` (already thresholded), `good` when there is none."""
    if kept is None or not len(kept):
        return GOOD
    return kept.names[int(kept.order()[0])]


def classify(gt: CocoDataset, predictions: Predictions, thresholds: TypeThresholds) -> dict:
    """The `image_classification` block of metrics.json."""
    kept = apply_thresholds(predictions, thresholds.by_name, thresholds.default)
    truth, predicted, sources = [], [], Counter()
    for im in gt.images:
        t, source = true_type(im, gt.detections[im.id])
        truth.append(t)
        sources[source] += 1
        predicted.append(predicted_type(kept.get(im.id)))
    known = [GOOD] + [n for n in gt.class_names if n != GOOD]
    labels = known + sorted(set(truth + predicted) - set(known))  # e.g. a defect_type that is no class
    index = {name: i for i, name in enumerate(labels)}
    matrix = np.zeros((len(labels), len(labels)), np.int64)
    for t, p in zip(truth, predicted):
        matrix[index[t], index[p]] += 1
    correct = int(np.trace(matrix))
    per_class = {}
    for i, name in enumerate(labels):
        n = int(matrix[i].sum())
        per_class[name] = {"images": n, "correct": int(matrix[i, i]), "recall": float(matrix[i, i] / n) if n else None}
    return {
        "accuracy": correct / len(truth) if truth else None,
        "correct": correct,
        "images": len(truth),
        "per_class": per_class,
        "confusion_matrix": {"labels": labels, "rows": "true type", "columns": "predicted type",
                             "counts": matrix.tolist()},
        "thresholds": thresholds.to_dict(),
        "thresholds_used": thresholds.describe(),
        "true_type_from": {k: sources[k] for k in ("defect_type", "annotations", "none")},
        "rule": RULE,
    }
