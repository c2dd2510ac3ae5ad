"""`evaluate()`: every figure of a prediction run against its COCO ground truth -- mask IoU, COCO box/mask AP, MVTec
pixel AUROC / AUPRO / max-F1 / region max-F1, image AUROC, image-level defect-type accuracy (image_types.py),
optionally test at thresholds calibrated on val -- as a `Metrics` record, and, with `out`, the output folder
(metrics.json, report.md, per_image.json, thresholds.json, plots) written as a whole (io.atomic_dir, kind "evaluate")."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from defect_vision.coco import CocoDataset
from defect_vision.evaluation import image_types, mask_iou, pixel_metrics, report_md
from defect_vision.evaluation.anomaly_metrics import (
    anomaly_figures,
    anomaly_info,
    load_with_anomaly,
)
from defect_vision.evaluation.coco_metrics import CocoResult, coco_metrics
from defect_vision.evaluation.inputs import (
    Predictions,
    has_mask,
    load_gt,
    mask_source,
    of_image,
    resolve,
)
from defect_vision.evaluation.thresholds import (
    Thresholds,
    apply_thresholds,
    calibrate,
    detection_at_thresholds,
)
from defect_vision.io import atomic_dir

KIND = "evaluate"  # the marker kind of an output folder


@dataclass(frozen=True)
class EvalConfig:
    score_threshold: float = 0.0  # mask IoU ignores predictions below it (AP and pixel metrics use every one); without
    # val, also the image-type threshold when above 0
    calib_iou: float = 0.5  # box IoU of a true positive in the val calibration
    default_threshold: float = 0.25  # threshold of classes the calibration cannot set; without val and with
    # score_threshold 0, the image-type threshold
    region_steps: int = 200  # most thresholds swept for region max-F1
    worst: int = 12  # images in the worst-case overlay grid
    plots: bool = True  # draw the figures (only when writing an output folder)
    progress: bool = False  # a progress bar on stderr (when it is a terminal)


def _f(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


@dataclass
class Metrics:
    """The figures of one evaluation; `to_dict()` is metrics.json."""

    inputs: dict  # gt, pred, score_threshold, image_ids_matched_by_path, mask_source
    counts: dict
    mask_iou: dict
    coco: dict  # {"bbox"|"segm": {AP, AP50, AP75, AR100, per_class}}
    pixel: dict
    image_auroc: float | None
    image_classification: dict | None = None  # image-level defect type (image_types.classify)
    calibrated: dict | None = None
    plots: list[str] = field(default_factory=list)
    per_image: list[mask_iou.ImageIoU] = field(default_factory=list, repr=False)
    thresholds: Thresholds | None = field(default=None, repr=False)  # calibrated on val, when val was given
    anomaly: dict | None = None  # a predict --anomaly run: map / named / fusion figures (anomaly_metrics.py)

    def to_dict(self) -> dict:
        doc = {"inputs": self.inputs, "counts": self.counts, "mask_iou": self.mask_iou, "coco": self.coco,
               "pixel": self.pixel, "image_auroc": self.image_auroc, "image_classification": self.image_classification,
               "calibrated": self.calibrated, "plots": self.plots}
        return {**doc, "anomaly": self.anomaly} if self.anomaly is not None else doc

    @property
    def mask_ap(self) -> float | None:
        return self.coco["segm"]["AP"]

    @property
    def box_ap(self) -> float | None:
        return self.coco["bbox"]["AP"]

    @property
    def box_ap50(self) -> float | None:
        return self.coco["bbox"]["AP50"]

    @property
    def mean_instance_iou(self) -> float | None:
        return self.mask_iou["mean_instance"]

    def masks_note(self) -> str | None:
        """Says where the mask figures come from when some predictions had no mask (box-only results)."""
        return report_md.masks_note(self.counts)

    def summary_line(self) -> str:
        c, m = self.counts, self.mask_iou
        line = (f"evaluated {c['images']} images ({c['defect_images']} defect, {c['good_images']} good), "
                f"{c['predictions']} predictions: mask IoU {_f(m['mean_instance'])} (instance) / "
                f"{_f(m['mean_image'])} (image), mask AP {_f(self.mask_ap)}, box AP50 {_f(self.box_ap50)}, "
                f"pixel AUROC {_f(self.pixel['auroc'])}, AUPRO {_f(self.pixel['aupro'])}, "
                f"image AUROC {_f(self.image_auroc)}, good FP images {m['good_fp_images']}/{c['good_images']}")
        ic = self.image_classification
        if ic is not None:
            line += f", image type accuracy {_f(ic['accuracy'])} {ic['thresholds_used']}"
        note = self.masks_note()
        return f"{line}; {note}" if note else line


def iou_figures(gt: CocoDataset, predictions: Predictions, score_threshold: float = 0.0,
                pixel: pixel_metrics.PixelAccumulator | None = None, progress: bool = False):
    """Mask IoU per image / instance / class (predictions >= score_threshold); feeds `pixel` with every prediction."""
    images, instances, class_images = [], [], {}
    for im in tqdm(gt.images, desc="evaluate", unit="img", disable=None if progress else True):
        truth, pred = gt.detections[im.id], of_image(predictions, gt, im.id)
        kept = pred[pred.score >= score_threshold]
        summary, inst = mask_iou.image_ious(truth, kept)
        images.append(summary)
        instances += inst
        for k in np.unique(truth.class_id):
            class_images.setdefault(int(k), []).append(mask_iou.class_image_iou(truth, kept, int(k)))
        if pixel is not None:
            pixel_metrics.add_image(pixel, truth, pred, im)
    return images, instances, class_images


def _calibrated(gt: CocoDataset, predictions: Predictions, thresholds: Thresholds, config: EvalConfig) -> dict:
    """Test at the thresholds calibrated on val: per-class detection figures and mask IoU."""
    kept = apply_thresholds(predictions, thresholds.by_name, thresholds.default)
    images, instances, class_images = iou_figures(gt, kept)
    doc = thresholds.to_dict()
    return {"thresholds": doc["thresholds"], "default": doc["default"], "val": doc["stats"],
            "per_class": detection_at_thresholds(gt, predictions, thresholds, config.calib_iou),
            "mask_iou": mask_iou.summarize(images, instances, class_images, gt.class_names)}


def measure(gt: CocoDataset, predictions: Predictions, config: EvalConfig = EvalConfig(),
            thresholds: Thresholds | None = None, pred_path: Path | None = None, matched_by_path: bool = False,
            ) -> tuple[Metrics, dict[str, CocoResult], list[mask_iou.InstanceIoU]]:
    """The figures (no files): Metrics, COCOeval results (PR curves) and the instance IoUs."""
    n_pred = sum(len(d) for d in predictions.values())
    levels = np.concatenate([d.score for d in predictions.values()] + [[0.0]])
    pixel = pixel_metrics.PixelAccumulator(pixel_metrics.region_thresholds(levels, config.region_steps))
    images, instances, class_images = iou_figures(gt, predictions, config.score_threshold, pixel, config.progress)
    px = pixel.result()
    coco = coco_metrics(gt, predictions)
    n_good = sum(bool(im.is_good) for im in gt.images)
    metrics = Metrics(
        inputs={"gt": str(gt.path) if gt.path else None, "pred": str(pred_path) if pred_path else None,
                "score_threshold": config.score_threshold, "image_ids_matched_by_path": matched_by_path,
                "mask_source": mask_source(predictions)},
        counts={"images": len(gt.images), "good_images": n_good, "defect_images": len(gt.images) - n_good,
                "gt_instances": len(instances), "predictions": n_pred,
                "predictions_without_mask": sum(not f for d in predictions.values() for f in has_mask(d))},
        mask_iou=mask_iou.summarize(images, instances, class_images, gt.class_names),
        coco={t: r.summary for t, r in coco.items()},
        pixel={k: v for k, v in px.items() if k != "image_auroc"},
        image_auroc=px["image_auroc"],
        image_classification=image_types.classify(gt, predictions, image_types.choose_thresholds(
            gt.class_names, thresholds, config.score_threshold, config.default_threshold)),
        per_image=images,
        thresholds=thresholds,
    )
    if thresholds is not None:
        metrics.calibrated = _calibrated(gt, predictions, thresholds, config)
    return metrics, coco, instances


def _draw(folder: Path, gt: CocoDataset, predictions: Predictions, metrics: Metrics, coco: dict[str, CocoResult],
          instances: list[mask_iou.InstanceIoU], worst: int) -> list[str]:
    from defect_vision.evaluation import plots  # matplotlib: only when drawing

    plots.pr_curves({t: r.pr_curves for t, r in coco.items()}, folder / "pr_curves.png")
    plots.iou_histogram(mask_iou.instance_iou_values(instances), folder / "iou_histogram.png")
    drawn = ["pr_curves.png", "iou_histogram.png"]
    if metrics.image_classification is not None:
        plots.confusion_matrix(metrics.image_classification, folder / "confusion_matrix.png")
        drawn.append("confusion_matrix.png")
    if plots.overlay_grid(plots.worst_cases(metrics.per_image, worst), gt, predictions, folder / "worst_cases.png"):
        drawn.append("worst_cases.png")
    return drawn


def evaluate(gt: CocoDataset | Path, predictions: Predictions | Path, config: EvalConfig = EvalConfig(),
             out: Path | None = None, *, val: tuple[CocoDataset | Path, Predictions | Path] | None = None,
             force: bool = False) -> Metrics:
    """Evaluate `predictions` (a COCO results file, matched through image_ids.json beside it, or detections by GT
    image id) against `gt` (a COCO json or dataset). `val` = (val GT, val predictions): calibrate per-class
    thresholds on it and report test at them too. With `out`, write the output folder as a whole: refused (as
    io.check_output_dir says) unless it is absent, empty or a previous evaluate output, or with `force`; never a
    folder that holds an input. Figures are drawn only into an output folder."""
    gt = load_gt(gt)
    predictions, pred_path, matched, unknown, info = _resolve(predictions, gt)
    thresholds, inputs = None, [gt.path, pred_path]
    if val is not None:
        val_gt = load_gt(val[0])
        val_predictions, val_path, *_ = _resolve(val[1], val_gt)
        thresholds = calibrate(val_gt, val_predictions, config.calib_iou, config.default_threshold)
        inputs += [val_gt.path, val_path]
    if out is None:
        metrics = measure(gt, predictions, config, thresholds, pred_path, matched)[0]
        metrics.anomaly = anomaly_figures(gt, predictions, unknown, pred_path, info) if info else None
        return metrics
    with atomic_dir(Path(out), KIND, [p for p in inputs if p is not None], force) as folder:
        metrics, coco, instances = measure(gt, predictions, config, thresholds, pred_path, matched)
        metrics.anomaly = anomaly_figures(gt, predictions, unknown, pred_path, info) if info else None
        if config.plots:
            metrics.plots = _draw(folder, gt, predictions, metrics, coco, instances, config.worst)
        _write(folder, metrics)
    return metrics


def _resolve(predictions: Predictions | Path, gt: CocoDataset):
    """inputs.resolve, plus a predict --anomaly run's split: (named predictions, file, matched by path, anomaly
    predictions, summary.json's anomaly section); the named figures never see the `anomaly` detections."""
    info = anomaly_info(predictions) if not isinstance(predictions, dict) else None
    if info is None:
        return (*resolve(predictions, gt), {}, None)
    named, unknown, matched = load_with_anomaly(Path(predictions), gt, info)
    return named, Path(predictions), matched, unknown, info


def _write(folder: Path, metrics: Metrics) -> None:
    if metrics.thresholds is not None:
        (folder / "thresholds.json").write_text(json.dumps(metrics.thresholds.to_dict(), indent=2) + "\n")
    (folder / "per_image.json").write_text(json.dumps([asdict(im) for im in metrics.per_image], indent=1) + "\n")
    doc = metrics.to_dict()
    (folder / "metrics.json").write_text(json.dumps(doc, indent=2) + "\n")
    (folder / "report.md").write_text(report_md.render(doc, metrics.plots))
