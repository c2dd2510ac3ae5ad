"""Few-shot learning curve (`defect-vision curve`): how many labelled defect images per class are enough?

For k in `shots` labelled defect images per class (k = "all": the whole training split), fine-tune the detector
(YOLO-World or YOLOE: results.json's "detector") and SAM on the same seeded subset (subsets.few_shot: nested in k;
good images always kept; val stays whole, it only picks the best epoch), repeated over `seeds` for k <=
`repeat_up_to`. Each run is measured on the test split:
detector box AP50, SAM mask IoU on ground-truth boxes, and end-to-end mask IoU (detected boxes -> SAM). k = 0 is
the start models (zero-shot). The summary gives, per metric, the mean and spread over seeds and the smallest k
whose mean is within `target` (90 %) of "all". Writes <out>/results.json, curve.png, data/ and models/."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from defect_vision.coco import CocoDataset
from defect_vision.errors import DatasetError
from defect_vision.experiments import common
from defect_vision.experiments.measure import (
    SamMasks,
    Vocabulary,
    detect,
    gt_boxes,
    scores,
)
from defect_vision.experiments.subsets import (
    ALL,
    Export,
    classes_of,
    few_shot,
    image_classes,
    labelled_counts,
    write_subset,
)
from defect_vision.models.prompts import Encoder
from defect_vision.training.sam_config import SamTrainConfig
from defect_vision.training.yolo_world import DetectorTrainConfig

KIND = "curve"
METRICS = ("detector_box_ap50", "sam_gt_box_mask_iou", "end_to_end_mask_iou")


@dataclass
class CurveConfig:
    """One learning curve; `train` and `sam` are the fine-tunes every run shares (data and out set per run; `sam`
    starts from its checkpoint, or from one seeded random-init SAM when from_scratch)."""

    category: str
    export: Export
    out: Path
    train: DetectorTrainConfig
    sam: SamTrainConfig
    shots: list = field(default_factory=lambda: [1, 2, 5, 10, ALL])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    repeat_up_to: int = 5  # k <= this runs with every seed; larger k and "all" with the first seed only
    target: float = 0.9  # "enough" = mean within this fraction of "all"
    conf: float = 0.01
    score_threshold: float = 0.25
    force: bool = False


def runs_of(config: CurveConfig) -> list[tuple[int | str, int]]:
    """(k, seed) of every fine-tune, in order."""
    out = []
    for k in config.shots:
        seeds = config.seeds if k != ALL and int(k) <= config.repeat_up_to else config.seeds[:1]
        out += [(k, s) for s in seeds]
    return out


def check_shots(shots: list) -> list:
    parsed = []
    for k in shots:
        if k == ALL or (isinstance(k, int) and k >= 1):
            parsed.append(k)
        else:
            raise DatasetError(f"--shots {k}: expected whole numbers >= 1 or 'all' (k = 0, zero-shot, always runs)")
    return parsed


def sam_checkpoint(config: CurveConfig) -> Path | None:
    """The SAM checkpoint every run starts from (None: a seeded random-init one, config.sam.from_scratch);
    DatasetError when it is missing."""
    from defect_vision.models.sam import default_checkpoint

    if config.sam.from_scratch:
        return None
    path = Path(config.sam.checkpoint or default_checkpoint(config.sam.model_type))
    if not path.is_file():
        raise DatasetError(f"{path}: SAM start weights not found (scripts/download_weights.sh, or --fast)")
    return path


def base_sam(config: CurveConfig, out: Path) -> Path:
    """The SAM every run starts from (and k = 0 measures): the checkpoint, or a seeded random-init one saved once
    under `out` (so that every run shares its frozen encoder, and the embedding cache)."""
    from defect_vision.models.sam import build_random_sam

    checkpoint = sam_checkpoint(config)
    if checkpoint is not None:
        return checkpoint
    from defect_vision.io import torch_save

    path = out / "zero_shot" / "sam_base.pth"
    torch_save(build_random_sam(config.sam.model_type, config.train.seed).state_dict(), path)
    return path


def summarize(runs: list[dict], shots: list, target: float) -> tuple[dict, dict]:
    """({metric: [{k, mean, min, max, n}]}, {metric: smallest k within target of "all" | None})."""
    order = [0, *shots]
    summary, smallest = {}, {}
    for metric in METRICS:
        points = []
        for k in order:
            vals = [r[metric] for r in runs if r["k"] == k and r[metric] is not None]
            points.append({"k": k, "mean": round(float(np.mean(vals)), 4) if vals else None,
                           "min": min(vals) if vals else None, "max": max(vals) if vals else None, "n": len(vals)})
        summary[metric] = points
        ref = next((p["mean"] for p in points if p["k"] == ALL), None)
        smallest[metric] = None if not ref else next(
            (p["k"] for p in points if p["k"] != ALL and p["mean"] is not None and p["mean"] >= target * ref), ALL)
    return summary, smallest


@dataclass(frozen=True)
class Start:
    """What every curve-style experiment settles before any fine-tune: its classes, text encoder, start detector and
    inputs (a missing export or SAM checkpoint fails here, before any output is written)."""

    classes: list[str]
    encode: object
    encoder_name: str
    detector: dict
    inputs: list[Path]


def start_of(config: CurveConfig) -> Start:
    export, train = config.export, config.train
    if export.sam is None:
        raise DatasetError("curve: the SAM prompts export is needed (defect-vision convert writes datasets/sam/<C>)")
    common.settle(export)
    export.check()
    encode, encoder_name = common.encoder_of(train)
    return Start(classes_of(export.coco), encode, encoder_name, common.detector_info(common.start_model(train)),
                 common.inputs_of(export, sam_checkpoint(config), None if train.from_scratch else train.model, train.clip))


def run_curve(config: CurveConfig) -> dict:
    """The whole curve; returns results.json's content. Everything is written into a temporary folder that
    replaces config.out at the end: an error or Ctrl-C keeps the previous result."""
    t0 = time.time()
    st = start_of(config)
    shots = check_shots(config.shots)
    with common.output_folder(config.out, KIND, st.inputs, config.force) as out:
        results = _run(config, out, shots, st.classes, st.encode, st.encoder_name)
        results = {**results, "detector": st.detector, "seconds": round(time.time() - t0, 1)}
        common.write_results(out, results)
        from defect_vision.evaluation.experiment_plots import learning_curve

        learning_curve(results, out / "curve.png")
    return results


@dataclass
class Bench:
    """What every fine-tune of a curve shares (the test split, the start models, the SAM embedding cache), and the
    two steps every run takes: `train` a subset of the training images, `measure` models on the test split. The
    few-shot curve and the experiments built on it (experiments/selection_curve.py) call these."""

    config: CurveConfig
    out: Path  # the temporary output folder
    classes: list[str]
    encode: Encoder
    gt: CocoDataset
    vocab: Vocabulary
    sam_start: Path
    cache: Path
    images: dict[str, set[str]]  # training image -> its classes
    val: list[str]

    @classmethod
    def of(cls, config: CurveConfig, out: Path, classes: list[str], encode: Encoder) -> Bench:
        gt, vocab = common.eval_split(config.export)
        return cls(config, out, classes, encode, gt, vocab, base_sam(config, out), out / "sam_embeddings",
                   image_classes(config.export.coco / "instances_train.json"),
                   list(image_classes(config.export.coco / "instances_val.json")))

    def measure(self, detector: Path, sam: Path) -> dict:
        """Detector box AP50, SAM mask IoU on ground-truth boxes, end-to-end mask IoU (and per class) on test."""
        from defect_vision.models.sam import load_sam

        config, gt = self.config, self.gt
        masks = SamMasks(load_sam(sam, config.sam.model_type), config.sam.model_type, self.cache, config.sam.device)
        end_to_end = scores(gt, masks(detect(detector, gt, self.vocab, self.encode, config.conf, config.train.imgsz,
                                             config.train.device)), config.score_threshold)
        on_gt = scores(gt, masks(gt_boxes(gt)), config.score_threshold)
        return {"detector_box_ap50": end_to_end["box_ap50"], "sam_gt_box_mask_iou": on_gt["mask_iou"],
                "end_to_end_mask_iou": end_to_end["mask_iou"], "per_class": end_to_end["per_class"]}

    def train(self, name: str, chosen: list[str], seed: int, manifest: dict | None = None) -> tuple[Path, Path, dict]:
        """Fine-tune the detector and SAM on `chosen` (data/<name>, models/<name>); (detector, sam, counts)."""
        from defect_vision.training.sam import finetune_sam

        config, out = self.config, self.out
        paths = write_subset(config.export, out / "data" / name, self.classes, chosen, self.val)
        counts = labelled_counts(self.images, chosen, self.classes)
        (out / "data" / name / "manifest.json").write_text(json.dumps(
            {**(manifest or {}), "seed": seed, "train_images": chosen, "labelled_per_class": counts,
             "val_images": self.val}, indent=1) + "\n")
        detector = common.fine_tune(config.train, paths, out / "models" / name / "yolo_world", seed=seed)
        finetune_sam(replace(config.sam, prompts=paths["sam"], out=out / "models" / name / "sam", cache_dir=self.cache,
                             checkpoint=self.sam_start, from_scratch=False, seed=seed, category=config.category,
                             train_prompt_encoder=config.sam.train_prompt_encoder or config.sam.from_scratch,
                             quiet=True, resume=False, force=True))
        return detector, out / "models" / name / "sam" / "best.pth", counts

    def zero_shot(self, encoder_name: str) -> tuple[dict, str]:
        """(k = 0's run: the start models measured, the weights tag "official" | "random-init")."""
        base, weights = common.zero_shot_model(self.out / "zero_shot" / "base.pt", self.config.train, self.vocab,
                                               self.encode, encoder_name)
        return ({"k": 0, "seed": None, "train_images": [], "labelled_per_class": dict.fromkeys(self.classes, 0),
                 **self.measure(base, self.sam_start), "seconds": 0.0}, weights)


def _run(config: CurveConfig, out: Path, shots: list, classes: list[str], encode, encoder_name: str) -> dict:
    """The runs, written under `out` (the temporary folder); results.json's content but its timing."""
    train, model_type = config.train, config.sam.model_type
    bench = Bench.of(config, out, classes, encode)
    sam_start, sam_from_scratch = bench.sam_start, config.sam.from_scratch
    first, weights = bench.zero_shot(encoder_name)
    runs = [first]
    for k, seed in runs_of(config):
        t1 = time.time()
        chosen = few_shot(bench.images, classes, k, seed)
        detector, sam, counts = bench.train(f"k{k}_s{seed}", chosen, seed, {"k": k})
        runs.append({"k": k, "seed": seed, "train_images": chosen, "labelled_per_class": counts,
                     **bench.measure(detector, sam), "seconds": round(time.time() - t1, 1)})
    summary, smallest = summarize(runs, shots, config.target)
    return {
        "category": config.category, "experiment": KIND, "weights": weights, "detector": None,
        "sam_weights": "random-init" if sam_from_scratch else str(sam_start), "text_encoder": encoder_name,
        "shots": shots, "seeds": config.seeds, "repeat_up_to": config.repeat_up_to, "target": config.target,
        "subsets": "per class a seeded order of its training images; k = its first k (nested in k); good images "
                   "always kept; val whole (picks the best epoch only); the same images for detector and SAM",
        "settings": {"model": str(train.model_cfg if train.from_scratch else train.model), "epochs": train.epochs,
                     "sam_epochs": config.sam.epochs, "imgsz": train.imgsz, "sam_model_type": model_type,
                     "conf": config.conf, "score_threshold": config.score_threshold},
        "runs": runs, "summary": summary, "smallest_k": smallest, "seconds": None,
    }


def summary_line(results: dict, out: Path) -> str:
    best = ", ".join(f"{m} {'n/a' if results['smallest_k'][m] is None else results['smallest_k'][m]}" for m in METRICS)
    return (f"curve: {out / 'results.json'}: {len(results['runs']) - 1} fine-tunes + zero-shot; smallest k within "
            f"{results['target']:.0%} of all: {best}; {results['detector']['label']}, {results['weights']} weights, "
            f"{results['seconds']:.0f} s")
