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
    if config.backend != "torch" and config.masks != "sam":
        raise ConfigError(f"{{masks}} {config.masks}: the torch backend only (an export has no detector masks)",
                          "masks", "backend")
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
    handoff = detector_masks_handoff(config, det, detector)
    if config.masks == "detector":
        from defect_vision.inference.detector_masks import DetectorMasks

        return Models(det, DetectorMasks(handoff))
    if sam is None:
        raise ConfigError("{sam}: required unless {box_only}", "sam", "box_only")
    from defect_vision.inference.segmenter import Segmenter
    from defect_vision.models.sam import load_sam, model_type_for

    model = load_sam(Path(sam), model_type_for(Path(sam), config.model_type))
    if config.masks == "refine":
        from defect_vision.inference.detector_masks import refine_segmenter

        return Models(det, refine_segmenter(model, device, dtype, config.mask_threshold, config.sam_batch, handoff))
    return Models(det, Segmenter(model, device, dtype, config.mask_threshold, batch=config.sam_batch))


def detector_masks_handoff(config: PredictConfig, det, path: Path | None):
    """--masks detector|refine: the detector set to hand its masks over (a MaskHandoff); ConfigError/DatasetError
    naming the field or the file when the detector has none. None for --masks sam."""
    if config.masks == "sam":
        return None
    if det is None:
        raise ConfigError(f"{{masks}} {config.masks}: needs a YOLOE -seg {{detector}} (not ground-truth boxes)",
                          "masks", "detector")
    if not getattr(det, "segment", False):
        from defect_vision.errors import DatasetError

        raise DatasetError(f"{path}: a detector without masks; --masks {config.masks} needs a YOLOE -seg checkpoint")
    from defect_vision.inference.detector_masks import MaskHandoff

    det.handoff, det.keep_masks = MaskHandoff(), True
    return det.handoff
