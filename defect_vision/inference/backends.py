"""The models of a prediction, by backend: the detector and segmenter behind the BoxDetector / BoxSegmenter
interfaces (torch checkpoints, or a `defect-vision export` folder run by onnxruntime or OpenVINO)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from defect_vision.errors import ConfigError
from defect_vision.inference.config import PredictConfig
from defect_vision.inference.interfaces import BoxDetector, BoxMasks, BoxSegmenter


@dataclass
class Models:
    detector: BoxDetector | None  # None: the boxes come from elsewhere (ground truth)
    segmenter: BoxSegmenter
    thresholds: Path | None = None  # an export's own thresholds file (implied, like a run's)


def load_models(config: PredictConfig, detector: Path | None, sam: Path | None, device, dtype) -> Models:
    """The detector (None when `detector` is None on the torch backend) and the segmenter (BoxMasks with box_only)
    of `config.backend`; one-line errors naming the file or the field."""
    check_masks(config, detector is not None or config.backend != "torch")
    if config.backend != "torch":  # the export's networks; the checkpoints given are only checked against its manifest
        from defect_vision.inference.onnx_backend import load_onnx_models

        det, seg, thresholds = load_onnx_models(config, detector, sam, device, dtype)
        return Models(det, seg or BoxMasks(), thresholds)
    det = None
    if detector is not None:
        from defect_vision.inference.detector import Detector

        det = Detector(Path(detector), device, dtype, config.imgsz)
    if config.box_only:
        return Models(det, BoxMasks())
    keep_detector_masks(config, det, detector)
    if config.masks == "detector":
        from defect_vision.inference.detector_masks import DetectorMasks

        return Models(det, DetectorMasks())
    if sam is None:
        raise ConfigError("{sam}: required unless {box_only} or {masks} detector", "sam", "box_only", "masks")
    from defect_vision.models.sam import load_sam, model_type_for

    model = load_sam(Path(sam), model_type_for(Path(sam), config.model_type))
    return Models(det, segmenter_for(model, device, dtype, config.mask_threshold, config.sam_batch))


def segmenter_for(model, device, dtype=None, mask_threshold: float = 0.0, batch: int | None = None) -> BoxSegmenter:
    """The torch BoxSegmenter of a built SAM model, by family: Segmenter (segment_anything's Sam: ViT, MobileSAM) or
    Sam2Segmenter (SAM 2 / 2.1)."""
    from defect_vision.models.sam2 import is_sam2

    if is_sam2(model):
        from defect_vision.inference.sam2_segmenter import Sam2Segmenter

        return Sam2Segmenter(model, device, dtype, mask_threshold, batch=batch)
    from defect_vision.inference.segmenter import Segmenter

    return Segmenter(model, device, dtype, mask_threshold, batch=batch)


def check_masks(config: PredictConfig, detected: bool) -> None:
    """ConfigError when the mask source cannot be had before any model is read: detector masks need the torch backend
    and detected (not ground-truth) boxes. Both engines' drivers call it (run.required_models), and model loading."""
    if config.masks == "sam":
        return
    if config.backend != "torch":
        raise ConfigError(f"{{masks}} {config.masks}: the torch backend only (an export has no detector masks)",
                          "masks", "backend")
    if not detected:
        raise ConfigError(f"{{masks}} {config.masks}: needs a YOLOE -seg {{detector}} (not ground-truth boxes)",
                          "masks", "detector")


def keep_detector_masks(config: PredictConfig, det, path: Path | None) -> None:
    """--masks detector|refine: the detector computes its -seg masks into each detection; DatasetError naming the file
    when it has none."""
    if config.masks == "sam":
        return
    if not getattr(det, "segment", False):
        from defect_vision.errors import DatasetError

        raise DatasetError(f"{path}: a detector without masks; --masks {config.masks} needs a YOLOE -seg checkpoint")
    det.keep_masks = True
