"""Evaluation of a prediction run against its COCO ground truth: `evaluate` (mask IoU, COCO AP, MVTec pixel
metrics, image-level defect-type accuracy; metrics.json and a report folder), `calibrate` (per-class thresholds on val) and `write_report` (the
HTML page of a run folder). Inputs are defect_vision.coco datasets and {image id: Detections}, or their files."""
from defect_vision.evaluation.html_report import RunReport, write_report
from defect_vision.evaluation.inputs import load_predictions
from defect_vision.evaluation.metrics import EvalConfig, Metrics, evaluate
from defect_vision.evaluation.thresholds import ClassCalibration, Thresholds, calibrate

__all__ = ["ClassCalibration", "EvalConfig", "Metrics", "RunReport", "Thresholds", "calibrate", "evaluate",
           "load_predictions", "write_report"]
