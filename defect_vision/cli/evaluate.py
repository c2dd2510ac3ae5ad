"""`defect-vision evaluate`: predictions.json vs a COCO ground truth -> metrics.json, report.md, per_image.json, plots."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from defect_vision.cli.common import add_force, parser, run_command
from defect_vision.errors import DatasetError

DESCRIPTION = (
    "Evaluate predictions.json (COCO results: RLE masks, or box-only entries whose boxes are taken as masks) against "
    "a COCO ground truth: mask IoU (instance, image, class, good images), COCO box/mask AP (pycocotools), MVTec "
    "pixel AUROC / AUPRO@0.3 / max-F1 / region max-F1, image AUROC, and image-level defect-type accuracy (an image's "
    "type = class of its highest-scoring detection at the thresholds calibrated on val, else at --score-threshold "
    "when above 0, else at --default-threshold; good when none). Writes metrics.json, report.md, per_image.json "
    "and plots into --out (and thresholds.json with --val-gt/--val-pred), replacing the folder as a whole.")


def build_parser(prog: str) -> argparse.ArgumentParser:
    p = parser(prog, DESCRIPTION)
    p.add_argument("--gt", type=Path, required=True, help="COCO ground truth (instances_test.json)")
    p.add_argument("--pred", type=Path, required=True,
                   help="predictions.json of the same images (ids matched by path through image_ids.json beside it)")
    p.add_argument("--out", type=Path, required=True, help="output folder (a previous evaluate output is replaced)")
    p.add_argument("--val-gt", type=Path, help="instances_val.json: calibrate per-class thresholds on val ...")
    p.add_argument("--val-pred", type=Path, help="... with these val predictions, and report test at them")
    p.add_argument("--score-threshold", type=float, default=0.0,
                   help="predictions below it are ignored by the mask IoU figures (AP and pixel metrics use all); "
                        "without --val-gt/--val-pred, also the image-type threshold when above 0")
    p.add_argument("--calib-iou", type=float, default=0.5, help="box IoU of a true positive in the calibration")
    p.add_argument("--default-threshold", type=float, default=0.25,
                   help="threshold of classes calibration cannot set; the image-type threshold without val and "
                        "with --score-threshold 0")
    p.add_argument("--region-steps", type=int, default=200, help="most thresholds swept for region max-F1")
    p.add_argument("--worst", type=int, default=12, help="images in the worst-case overlay grid")
    p.add_argument("--no-plots", action="store_true", help="skip the figures")
    add_force(p)
    return p


def main(argv: list[str] | None = None, prog: str = "defect-vision evaluate") -> int:
    p = build_parser(prog)
    a = p.parse_args(argv)
    if (a.val_gt is None) != (a.val_pred is None):
        p.error("--val-gt and --val-pred go together")

    def body() -> None:
        from defect_vision.evaluation import EvalConfig, evaluate

        if a.region_steps < 1:
            raise DatasetError(f"--region-steps {a.region_steps}: must be >= 1")
        if a.worst < 0:
            raise DatasetError(f"--worst {a.worst}: must be >= 0")
        if not 0 < a.calib_iou <= 1:
            raise DatasetError(f"--calib-iou {a.calib_iou}: must be in (0, 1]")
        config = EvalConfig(a.score_threshold, a.calib_iou, a.default_threshold, a.region_steps, a.worst,
                            plots=not a.no_plots, progress=True)
        start = time.perf_counter()
        val = (a.val_gt, a.val_pred) if a.val_gt else None
        metrics = evaluate(a.gt, a.pred, config, a.out, val=val, force=a.force)
        print(f"{metrics.summary_line()} ({time.perf_counter() - start:.1f} s) -> {a.out}")
        if metrics.anomaly is not None:
            from defect_vision.evaluation.report_anomaly import anomaly_line

            print(anomaly_line(metrics.anomaly))

    return run_command(body, a.out)
