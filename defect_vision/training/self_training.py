"""Self-training of the detector on unlabelled images: the settings, the class-adaptive pseudo-label thresholds
(Guo & Li, "Class-Imbalanced Semi-Supervised Learning with Adaptive Thresholding", ICML 2022: Adsh), which
detections become pseudo-labels, the YOLO dataset "labels + pseudo-labels" a round trains on, and the box-mask
agreement the SAM stage keeps pseudo-instances by. The loop itself (it predicts, so it needs the inference layer)
is defect_vision/experiments/self_training.py; docs/notes/self_training.md says why each choice."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from pycocotools import mask as mask_utils

from defect_vision.detections import Detections
from defect_vision.errors import ConfigError
from defect_vision.training.detector_data import (
    dataset_root,
    label_files,
    read_data_yaml,
    split_images,
)

RULES = ("adaptive", "fixed")
MIN_AGREEMENT = 0.7  # SAM stage: a pseudo box is kept when IoU(box, its mask's tight box) >= this
PSEUDO_PREFIX = "pseudo_"  # names of the pseudo-labelled images in a round's train folder (never a labelled one's)


@dataclass(frozen=True)
class SelfTrainConfig:
    """`train-detector --unlabelled DIR --rounds R --pseudo-rule RULE --pseudo-conf T --pseudo-floor F`."""

    unlabelled: Path  # folder (or glob) of unlabelled images
    rounds: int = 1  # predict -> pseudo-label -> fine-tune again, this many times after the labels-only fine-tune
    rule: str = "adaptive"  # adaptive (Adsh: per-class thresholds) | fixed (`conf` for every class)
    conf: float = 0.5  # the threshold of the most-labelled class (adaptive) or of every class (fixed)
    floor: float = 0.05  # no pseudo-label below this score, whatever the rule (also the teacher's NMS confidence)

    def __post_init__(self) -> None:
        object.__setattr__(self, "unlabelled", Path(self.unlabelled))
        if self.rounds < 1:
            raise ConfigError(f"{{rounds}} {self.rounds}: must be >= 1", "rounds")
        if self.rule not in RULES:
            raise ConfigError(f"{{pseudo_rule}} {self.rule}: expected one of {', '.join(RULES)}", "pseudo_rule")
        if not 0 < self.conf <= 1:
            raise ConfigError(f"{{pseudo_conf}} {self.conf}: must be within (0, 1]", "pseudo_conf")
        if not 0 < self.floor <= self.conf:
            raise ConfigError(f"{{pseudo_floor}} {self.floor}: must be within (0, --pseudo-conf]", "pseudo_floor")


def class_thresholds(scores: dict[str, np.ndarray], labelled: dict[str, int], conf: float, rule: str = "adaptive",
                     floor: float = 0.0) -> dict[str, float]:
    """Per class, the score a teacher's detection needs to become a pseudo-label.

    fixed: `conf` for every class. adaptive (Adsh): the most-labelled class keeps `conf`; rho = the fraction of
    its detections on the unlabelled images scoring >= conf; every other class gets the score that lets the same
    fraction rho of its own detections through (the ceil(rho * n_c)-th highest), never above `conf` and never
    below `floor`. A rarer class the teacher is less sure of thus gets a lower threshold, and every class
    contributes the same share of its detections. No detection of the most-labelled class reaching `conf`
    (rho = 0), or a class without detections: `conf`."""
    if rule == "fixed":
        return {c: float(conf) for c in labelled}
    if rule != "adaptive":
        raise ConfigError(f"{{pseudo_rule}} {rule}: expected one of {', '.join(RULES)}", "pseudo_rule")
    ranked = {c: np.sort(np.asarray(scores.get(c, []), np.float64))[::-1] for c in labelled}
    head, rho = reference_share(scores, labelled, conf)
    out = {}
    for c, s in ranked.items():
        if c == head or rho == 0.0 or not len(s):
            out[c] = float(conf)
        else:
            out[c] = float(min(conf, max(floor, s[int(np.ceil(rho * len(s))) - 1])))
    return out


def reference_share(scores: dict[str, np.ndarray], labelled: dict[str, int], conf: float) -> tuple[str, float]:
    """(the most-labelled class, first on a tie; rho = the share of its detections scoring >= conf, 0 if none)."""
    head = max(labelled, key=lambda c: (labelled[c], -list(labelled).index(c)))
    s = np.asarray(scores.get(head, []), np.float64)
    return head, float(np.mean(s >= conf)) if len(s) else 0.0


def keep_confident(det: Detections, thresholds: dict[str, float]) -> Detections:
    """The detections scoring at least their class's threshold."""
    need = np.array([thresholds[det.class_names[k]] for k in det.class_id], np.float64)
    return det[det.score >= need] if len(det) else det


def labelled_instances(data_yaml: Path) -> dict[str, int]:
    """Per class (data.yaml's order), its boxes in the train split's label files."""
    data = read_data_yaml(data_yaml)
    counts = dict.fromkeys((data["names"][k] for k in sorted(data["names"])), 0)
    names = data["names"]
    for label in label_files(split_images(data_yaml, data, "train")[1]):
        if label.is_file():
            for line in label.read_text().splitlines():
                if line.strip():
                    counts[names[int(line.split()[0])]] += 1
    return counts


def yolo_lines(det: Detections, height: int, width: int) -> str:
    """ultralytics detect labels (`cls cx cy w h`, normalised) of the detections' boxes."""
    rows = []
    for (x0, y0, x1, y1), k in zip(det.xyxy, det.class_id):
        rows.append(f"{int(k)} {(x0 + x1) / 2 / width:.6f} {(y0 + y1) / 2 / height:.6f} "
                    f"{(x1 - x0) / width:.6f} {(y1 - y0) / height:.6f}\n")
    return "".join(rows)


def write_pseudo_dataset(data_yaml: Path, out: Path, pseudo: list[Detections]) -> Path:
    """out/data.yaml, images/train and labels/train: the labelled train images (links) and their labels, plus each
    pseudo-labelled image (a link named pseudo_<n>_<name>) with its pseudo-labels; val is the export's own val
    folder (absolute), untouched. Returns the new data.yaml. Nothing is written into the export."""
    data = read_data_yaml(data_yaml)
    _, images = split_images(data_yaml, data, "train")
    img_dir, lab_dir = out / "images" / "train", out / "labels" / "train"
    img_dir.mkdir(parents=True)
    lab_dir.mkdir(parents=True)
    for image, label in zip(images, label_files(images)):
        name = image.name
        if name.startswith(PSEUDO_PREFIX):
            name = "labelled_" + name  # a labelled image is never taken for a pseudo-labelled one
        os.symlink(image.resolve(), img_dir / name)
        (lab_dir / f"{Path(name).stem}.txt").write_text(label.read_text() if label.is_file() else "")
    for n, det in enumerate(pseudo):
        name = f"{PSEUDO_PREFIX}{n:05d}_{det.image.path.name}"
        os.symlink(det.image.path.resolve(), img_dir / name)
        (lab_dir / f"{Path(name).stem}.txt").write_text(yolo_lines(det, det.image.height, det.image.width))
    val = (dataset_root(data_yaml, data) / str(data["val"])).resolve()
    names = {k: data["names"][k] for k in sorted(data["names"])}
    target = out / "data.yaml"
    target.write_text(yaml.safe_dump({"path": str(out.resolve()), "train": "images/train", "val": str(val),
                                      "nc": len(names), "names": names}, sort_keys=False))
    return target


def box_mask_agreement(xyxy: np.ndarray, rles: list[dict]) -> np.ndarray:
    """Per instance, the IoU of its box with the tight box of its mask (0 for an empty mask)."""
    if not len(rles):
        return np.zeros(0)
    tight = mask_utils.toBbox(list(rles))  # x, y, w, h
    boxes = np.asarray(xyxy, np.float64).reshape(-1, 4)
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    ious = np.array([mask_utils.iou([t.tolist()], [b.tolist()], [0])[0, 0] if t[2] > 0 and t[3] > 0 else 0.0
                     for t, b in zip(tight, xywh)])
    return ious
