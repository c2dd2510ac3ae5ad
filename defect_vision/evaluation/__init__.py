"""Evaluation of a prediction run against its COCO ground truth: `evaluate` (mask IoU, COCO AP, MVTec pixel
metrics, image-level defect-type accuracy; metrics.json and a report folder), `calibrate` (per-class thresholds on val) and `write_report` (the
HTML page of a run folder). Inputs are defect_vision.coco datasets and {image id: Detections}, or their files.

Names are imported on first use: `calibrate` alone does not pay for scikit-learn, OpenCV or matplotlib."""
from __future__ import annotations

from defect_vision.lazy import lazy_exports

_EXPORTS = {
    "RunReport": ".html_report", "write_report": ".html_report", "load_predictions": ".inputs",
    "EvalConfig": ".metrics", "Metrics": ".metrics", "evaluate": ".metrics",
    "ClassCalibration": ".thresholds", "Thresholds": ".thresholds", "calibrate": ".thresholds",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
