"""defect-vision: open-vocabulary defect detection (YOLO-World) and segmentation (SAM), fine-tuned on your defects.

    from defect_vision import DefectPredictor
    result = DefectPredictor.from_run("runs/wood")("new_images/0001.png")

Names are imported on first use, so `import defect_vision` stays light (no torch until a model is needed).
"""
from __future__ import annotations

from defect_vision.lazy import lazy_exports

__version__ = "0.2.0"

_EXPORTS = {
    # the one record and its COCO I/O
    "Detections": "defect_vision.detections", "ImageInfo": "defect_vision.detections",
    "CocoDataset": "defect_vision.coco", "load_coco": "defect_vision.coco", "save_coco": "defect_vision.coco",
    "load_results": "defect_vision.coco", "save_results": "defect_vision.coco",
    # data -> formats
    "DatasetSource": "defect_vision.data.source", "ConvertConfig": "defect_vision.formats.export",
    "convert": "defect_vision.formats.export", "export": "defect_vision.formats.export",
    "SplitConfig": "defect_vision.data.splits", "read_category": "defect_vision.data.mvtec",
    # fine-tuning
    "DetectorTrainConfig": "defect_vision.training.yolo_world", "finetune_detector": "defect_vision.training.yolo_world",
    "SamTrainConfig": "defect_vision.training.sam_config", "finetune_sam": "defect_vision.training.sam",
    "ClassifierTrainConfig": "defect_vision.training.classifier_config",
    "finetune_classifier": "defect_vision.training.classifier",
    "AnomalyTrainConfig": "defect_vision.training.anomaly", "train_anomaly": "defect_vision.training.anomaly",
    "SelectConfig": "defect_vision.inference.selection", "select_images": "defect_vision.inference.selection_run",
    "SelfTrainConfig": "defect_vision.training.self_training", "self_train": "defect_vision.experiments.self_training",
    # inference
    "DefectPredictor": "defect_vision.inference.predictor", "PredictConfig": "defect_vision.inference.config",
    "Result": "defect_vision.inference.result", "predict_run": "defect_vision.inference.run",
    "RunOptions": "defect_vision.inference.run",
    # deployment
    "export_onnx": "defect_vision.models.onnx_export", "OnnxExportConfig": "defect_vision.models.onnx_export",
    # experiments
    "run_openvocab": "defect_vision.experiments.openvocab", "run_curve": "defect_vision.experiments.curve",
    # evaluation
    "evaluate": "defect_vision.evaluation.metrics", "EvalConfig": "defect_vision.evaluation.metrics",
    "Metrics": "defect_vision.evaluation.metrics", "calibrate": "defect_vision.evaluation.thresholds",
    "Thresholds": "defect_vision.evaluation.thresholds", "write_report": "defect_vision.evaluation.html_report",
    # past one machine (Ray: the [distributed] extra, imported when a cluster is used)
    "ray_predict_run": "defect_vision.distributed.predict", "RayOptions": "defect_vision.distributed.predict",
    "merge_shards": "defect_vision.distributed.merge", "sharded_pixel_metrics": "defect_vision.distributed.evaluate",
}


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, {"OnnxExportConfig": "ExportConfig"})


__all__ = sorted(_EXPORTS)
