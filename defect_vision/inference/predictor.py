"""`DefectPredictor`: boxes (a BoxDetector) -> masks (a BoxSegmenter) for images in memory or on disk, in three
lines of Python; `run_batch` is the one per-batch step every engine calls.

    predictor = DefectPredictor.from_run("runs/wood")      # best.pt + best.pth + thresholds.json
    result = predictor("new_images/0001.png")              # or an HxWx3 RGB array, or a list of them
    result.xyxy, result.masks, result.scores, result.names
"""
from __future__ import annotations

import copy
import random
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from defect_vision.detections import Detections, ImageInfo
from defect_vision.devices import Timings, autocast_dtype, resolve_device
from defect_vision.errors import ConfigError, DatasetError
from defect_vision.inference.backends import load_models
from defect_vision.inference.config import (  # noqa: F401
    BACKENDS,
    PredictConfig,
    default_workers,
    predict_workers,
)
from defect_vision.inference.interfaces import BoxDetector
from defect_vision.inference.result import Result
from defect_vision.run_folder import run_models
from defect_vision.thresholds import choose


def class_filter(classes: list[str] | None, names: list[str]) -> list[int] | None:
    """Class indices of the class names to keep (None: all); ConfigError for a name the model does not know."""
    if not classes:
        return None
    unknown = [c for c in classes if c not in names]
    if unknown:
        raise ConfigError(f"{{classes}}: unknown class name(s) {', '.join(unknown)} (known: {', '.join(names)})", "classes")
    return [k for k, n in enumerate(names) if n in classes]


def image_info(info: ImageInfo, pixels: np.ndarray) -> ImageInfo:
    """`info` with the size of the pixels as read (the one place a prediction's image is stamped)."""
    return ImageInfo(info.id, info.file_name, pixels.shape[0], pixels.shape[1], info.path, info.is_good, info.extra)


class DefectPredictor:
    """A detector and a segmenter, loaded once; call it on images."""

    def __init__(self, detector: str | Path | None, sam: str | Path | None, config: PredictConfig | None = None):
        import torch

        self.config = config = config or PredictConfig()
        random.seed(config.seed)
        np.random.seed(config.seed)
        torch.manual_seed(config.seed)
        exported = config.backend != "torch"
        self.device = resolve_device("cpu" if exported and config.device == "auto" else config.device)
        self.dtype = autocast_dtype(self.device, config.precision)
        self.timings = Timings()
        models = load_models(config, None if detector is None else Path(detector), None if sam is None else Path(sam),
                             self.device, self.dtype)
        self.segmenter = models.segmenter
        self.anomaly = None
        if config.anomaly is not None:
            from defect_vision.inference.anomaly import AnomalyStage

            self.anomaly = AnomalyStage.load(config.anomaly, self.device)
        self._implied_thresholds = config.run_thresholds or models.thresholds
        self._use(models.detector)

    def _use(self, detector: BoxDetector | None) -> None:
        """Take `detector`: its vocabulary (--classes) and the thresholds of its classes."""
        self.detector = detector
        self.class_filter = self._vocabulary(self.config) if detector is not None else None
        c = self.config
        self.thresholds = choose(self.class_names, c.conf, c.thresholds, self._implied_thresholds)

    def with_detector(self, detector: BoxDetector) -> DefectPredictor:
        """This predictor (same segmenter, counters and timings) with another detector, e.g. ground-truth boxes."""
        other = copy.copy(self)
        other._use(detector)
        return other

    def _vocabulary(self, config: PredictConfig) -> list[int] | None:
        """--classes: only known names -> a class filter (as always); any new name -> the detector's vocabulary
        becomes exactly these names, new ones embedded by the local text encoder (inference/vocabulary.py)."""
        names = self.class_names
        if not config.classes or all(c in names for c in config.classes) or not self.detector.open_vocabulary:
            return class_filter(config.classes, names)
        from defect_vision.data.source import load_phrasings
        from defect_vision.inference.vocabulary import open_vocabulary

        open_vocabulary(self.detector, config.classes, self.detector.meta, config.encoder,
                        text_encoder=config.text_encoder, clip=config.clip,
                        phrasings=load_phrasings(config.prompts, "prompts") if config.prompts else None)
        return None

    @classmethod
    def from_run(cls, run: str | Path, config: PredictConfig | None = None, **overrides) -> DefectPredictor:
        """The models of a pipeline run folder: <run>/yolo_world/best.pt, <run>/sam/best.pth and its calibrated
        thresholds.json (defect_vision.thresholds' rule: an explicit conf or thresholds wins). Keyword overrides set
        PredictConfig fields of a copy of `config`."""
        config = config or PredictConfig()
        unknown = [k for k in overrides if k not in PredictConfig.__dataclass_fields__]
        if unknown:
            raise TypeError(f"from_run: unknown option {unknown[0]!r}")
        models = run_models(run)
        onnx = config.onnx or (models.onnx if overrides.get("backend", config.backend) != "torch" else None)
        config = replace(config, **{"run_thresholds": models.thresholds, "onnx": onnx, **overrides})
        return cls(models.detector, None if config.box_only else models.sam, config)

    @property
    def class_names(self) -> list[str]:
        return self.detector.class_names if self.detector is not None else []

    @property
    def category_ids(self) -> list[int] | None:
        return self.detector.category_ids if self.detector is not None else None

    def counters(self) -> dict[str, int]:
        """The models' work so far: detector batches, SAM encoder images and forwards, decoder calls."""
        return {**(self.detector.counters() if self.detector is not None else {"detector_calls": 0}),
                **self.segmenter.counters()}

    def require_detector(self) -> None:
        """ConfigError when no detector was loaded (and no ground-truth boxes were given in its place)."""
        if self.detector is None:
            raise ConfigError("{detector}: required unless {gt_boxes} gives the boxes", "detector", "gt_boxes")

    def detect(self, images: Sequence[np.ndarray], infos: Sequence[ImageInfo] | None = None) -> list[Detections]:
        """Boxes of each image, filtered by class and by the (per-class) thresholds."""
        self.require_detector()
        c = self.config
        dets = self.detector.predict(list(images), self.thresholds.nms_conf, c.iou, c.max_det, self.class_filter,
                                     self.timings, infos)
        return [self.thresholds.apply(d) for d in dets]

    def segment_batch(self, images: Sequence[np.ndarray], dets: Sequence[Detections], finish: bool = True) -> list[Detections]:
        """The detections with masks: one segmenter call over the images (SAM's encoder batched over the images with
        boxes, never run on the others). Masks come as det.data["mask_crops"]; `finish` also sets det.rle (else
        writers.finish_masks does, later, in a writer thread)."""
        from defect_vision.inference.writers import finish_masks

        prompts = [d.data.pop("detector_masks", None) for d in dets]  # a -seg detector's masks (--masks detector|refine)
        extra = {"mask_prompts": prompts} if any(p is not None for p in prompts) else {}
        found = self.segmenter.segment_batch(list(images), [d.xyxy for d in dets], self.timings, **extra)
        for det, (crops, iou) in zip(dets, found):
            det.rle, det.mask = None, None
            det.data["mask_crops"] = crops
            if self.segmenter.uses_sam:
                det.data["sam_iou"] = iou
            if finish:
                finish_masks(det)
        return list(dets)

    def segment(self, pixels: np.ndarray, det: Detections) -> Detections:
        """One image's detections with masks (RLEs)."""
        return self.segment_batch([pixels], [det])[0]

    def run_batch(self, images: Sequence[np.ndarray], infos: Sequence[ImageInfo], finish: bool = True) -> list[Detections]:
        """The per-batch step of every engine and of the API: boxes, each stamped with its image, then (with an
        anomaly model) the heat maps and the `anomaly` boxes of the regions no named box covers, then masks."""
        dets = self.detect(images, infos)
        for pixels, det, info in zip(images, dets, infos):
            det.image = image_info(info, pixels)
        if self.anomaly is not None:
            dets = self.anomaly.add(images, dets)
        return self.segment_batch(images, dets, finish)

    def predict(self, images: Sequence[np.ndarray], infos: Sequence[ImageInfo] | None = None) -> list[Result]:
        """Results of RGB uint8 HxWx3 images (one detector batch, then the segmenter)."""
        images = [check_array(im, i) for i, im in enumerate(images, 1)]
        infos = infos or [ImageInfo(i, f"image_{i}") for i in range(1, len(images) + 1)]
        return [Result(det, pixels) for pixels, det in zip(images, self.run_batch(images, infos))]

    def __call__(self, images):
        """An image path, an RGB HxWx3 uint8 array, or a list of them -> a Result (a list for a list)."""
        from defect_vision.data.images import read_image

        single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        pixels, infos = [], []
        for i, item in enumerate(items, 1):
            if isinstance(item, (str, Path)):
                pixels.append(read_image(Path(item)))
                infos.append(ImageInfo(i, Path(item).name, path=Path(item).resolve()))
            else:
                pixels.append(check_array(item, i))
                infos.append(ImageInfo(i, f"image_{i}"))
        results = self.predict(pixels, infos)
        return results[0] if single else results


def check_array(item, i: int) -> np.ndarray:
    """An RGB HxWx3 uint8 array with at least one pixel; DatasetError naming image `i` otherwise."""
    arr = np.asarray(item)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise DatasetError(f"image {i}: expected an RGB HxWx3 uint8 array, got {arr.dtype} {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise DatasetError(f"image {i}: an empty {arr.shape[0]}x{arr.shape[1]} array (no pixels to predict)")
    return arr
