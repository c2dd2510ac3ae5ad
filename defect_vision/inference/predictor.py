"""`DefectPredictor`: YOLO-World boxes -> SAM masks for images in memory or on disk, in three lines of Python.

    predictor = DefectPredictor.from_run("runs/wood")      # best.pt + best.pth + thresholds.json
    result = predictor("new_images/0001.png")              # or an HxWx3 RGB array, or a list of them
    result.xyxy, result.masks, result.scores, result.class_names
"""
from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from defect_vision.detections import Detections, ImageInfo
from defect_vision.devices import Timings, autocast_dtype, cpu_threads, resolve_device
from defect_vision.errors import DatasetError
from defect_vision.models.run_folder import run_models
from defect_vision.inference.thresholds import ClassThresholds, load_thresholds

BACKENDS = ("torch", "onnxruntime", "openvino")  # the checkpoints, or the ONNX files of a `defect-vision export`


@dataclass
class PredictConfig:
    """Everything that changes what a prediction is (the models aside)."""

    conf: float = 0.25  # detector confidence (per-class thresholds: `thresholds`)
    iou: float = 0.5  # NMS IoU
    max_det: int = 100
    classes: list[str] | None = None  # keep only these class names; names the detector does not know are embedded
    text_encoder: str | None = None  # for new --classes names: clip | random (default: the checkpoint's encoder)
    clip: Path | None = None  # CLIP ViT-B-32 file for new names (default weights/clip/ViT-B-32.pt)
    prompts: Path | None = None  # prompts.yaml: phrasings of new names (default: the name itself)
    encoder: Callable | None = field(default=None, repr=False)  # stand-in text encoder (API/tests)
    imgsz: int | None = None  # detector input size (default: the checkpoint's)
    thresholds: Path | None = None  # per-class thresholds (evaluation.calibrate's file)
    mask_threshold: float = 0.0  # SAM mask logit threshold
    model_type: str | None = None  # SAM model type (default: best.json beside the checkpoint, else vit_b)
    box_only: bool = False  # no SAM: a detection's mask is its box
    device: str = "auto"
    precision: str = "auto"  # autocast dtype on CUDA: auto (fp16) | fp32 | fp16 | bf16
    sam_batch: int | None = None  # images per SAM encoder forward (default: 4 on CUDA, 1 on CPU)
    threads: int | None = None  # CPU threads for the models (default: the cores this process may run on)
    workers: int | None = None  # batches through the models at once (default: default_workers on the CPU with torch, else 1)
    seed: int = 0
    backend: str = "torch"  # torch | onnxruntime | openvino (the last two: the `onnx` export folder, on the CPU)
    onnx: Path | None = None  # a `defect-vision export` folder (backends onnxruntime and openvino; ignored by torch)

    def cpu_split(self, device) -> tuple[int, int]:
        """(model workers, threads each). On the CPU several batches go through the models at once, each on its share
        of the threads (2 cores: 2 workers x 1 thread): no barrier between the cores, so another busy process slows
        one worker down instead of stalling every operator (scripts/bench_vs_loop.py, docs/notes/inference.md).
        CUDA: 1 worker (the GPU batches). The exported backends' sessions are built for this many callers at once:
        1 unless `workers` is given (the CLI gives `default_workers`), so a predictor called from one thread in the
        Python API keeps every core."""
        budget = self.threads or cpu_threads()
        workers = self.workers or (default_workers(budget) if device.type == "cpu" and self.backend == "torch" else 1)
        return workers, (max(1, budget // workers) if workers > 1 else budget)

    def check(self) -> None:
        for name in ("conf", "iou"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise DatasetError(f"--{name} {getattr(self, name)}: must be within [0, 1]")
        if self.max_det < 1:
            raise DatasetError(f"--max-det {self.max_det}: must be >= 1")
        for name in ("sam_batch", "threads", "workers"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise DatasetError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be >= 1")
        if self.backend not in BACKENDS:
            raise DatasetError(f"--backend {self.backend}: expected one of {', '.join(BACKENDS)}")


def default_workers(threads: int) -> int:
    """Model workers for `threads` CPU threads: 2 to 4, the count that leaves the fewest threads idle (the most
    workers on a tie: 6 -> 3 x 2, 8 -> 4 x 2, 10 -> 2 x 5); 1 for one thread."""
    return max(range(min(4, threads), 1, -1), key=lambda w: w * (threads // w)) if threads > 1 else 1


def predict_workers(backend: str, workers: int | None, threads: int | None) -> int | None:
    """The workers `defect-vision predict` asks for: as given; for an exported backend `default_workers` (its
    sessions are built for the workers that will call them), where the Python API's default is one caller."""
    if workers is None and backend != "torch":
        return default_workers(threads or cpu_threads())
    return workers


class Result:
    """One image's prediction: its Detections (`.detections`, the one record) and the image itself, with the
    per-detection views of the API (`xyxy`, `masks`, `scores`, `class_ids`, `class_names`: one name per detection)
    and `save_overlay`, `save_mask`, `to_coco`."""

    def __init__(self, detections: Detections, pixels: np.ndarray):
        self.detections = detections
        self.pixels = pixels  # RGB uint8 HxWx3

    def __len__(self) -> int:
        return len(self.detections)

    def __repr__(self) -> str:
        h, w = self.pixels.shape[:2]
        return f"Result({len(self)} detections on a {w}x{h} image: {', '.join(self.class_names) or 'none'})"

    @property
    def xyxy(self) -> np.ndarray:
        """(N, 4) boxes x0 y0 x1 y1 in image pixels."""
        return self.detections.xyxy

    @property
    def masks(self) -> np.ndarray:
        """(N, H, W) bool masks in image pixels."""
        return self.detections.masks

    @property
    def scores(self) -> np.ndarray:
        return self.detections.score

    @property
    def class_ids(self) -> np.ndarray:
        """(N,) class index of each detection (into `classes`)."""
        return self.detections.class_id

    @property
    def class_names(self) -> list[str]:
        """The class name of each detection (N names)."""
        return self.detections.names

    @property
    def classes(self) -> list[str]:
        """The model's vocabulary."""
        return self.detections.class_names

    def to_coco(self, image_id: int | None = None) -> list[dict]:
        """COCO results entries (bbox, score, RLE segmentation), best first."""
        return self.detections.to_coco(image_id)

    def label_mask(self) -> np.ndarray:
        """HxW: 0 background, k = COCO category id (the higher-ranked detection wins overlaps)."""
        from defect_vision.inference.writers import label_mask

        h, w = self.pixels.shape[:2]
        return label_mask(self.detections, h, w)

    def overlay(self) -> np.ndarray:
        from defect_vision.inference.writers import overlay

        return overlay(self.pixels, self.detections)

    def save_overlay(self, path: str | Path) -> Path:
        """The image with coloured masks, boxes and 'name score' labels, as PNG."""
        from defect_vision.inference.writers import write_png

        write_png(Path(path), self.overlay())
        return Path(path)

    def save_mask(self, path: str | Path) -> Path:
        """The label mask (0 background, k = category id) as PNG."""
        from defect_vision.inference.writers import write_png

        write_png(Path(path), self.label_mask())
        return Path(path)


def class_filter(classes: list[str] | None, names: list[str]) -> list[int] | None:
    """Class indices of the class names to keep (None: all); DatasetError for a name the model does not know."""
    if not classes:
        return None
    unknown = [c for c in classes if c not in names]
    if unknown:
        raise DatasetError(f"--classes: unknown class name(s) {', '.join(unknown)} (known: {', '.join(names)})")
    return [k for k, n in enumerate(names) if n in classes]


class DefectPredictor:
    """A fine-tuned YOLO-World detector and a fine-tuned SAM, loaded once; call it on images."""

    def __init__(self, detector: str | Path | None, sam: str | Path | None, config: PredictConfig | None = None):
        import torch

        self.config = config = config or PredictConfig()
        config.check()
        random.seed(config.seed)
        np.random.seed(config.seed)
        torch.manual_seed(config.seed)
        onnx = config.backend != "torch"
        self.device = resolve_device("cpu" if onnx and config.device == "auto" else config.device)
        self.dtype = autocast_dtype(self.device, config.precision)
        self.timings = Timings()
        self.detector = self.segmenter = None
        if onnx:  # the export's networks; the checkpoints given are only checked against its manifest
            from defect_vision.inference.onnx_backend import load_onnx_models

            self.detector, self.segmenter = load_onnx_models(config, detector, sam, self.device, self.dtype)
            detector = None
        if detector is not None:
            from defect_vision.inference.detector import Detector

            self.detector = Detector(Path(detector), self.device, self.dtype, config.imgsz)
        if not config.box_only and not onnx:
            if sam is None:
                raise DatasetError("--sam: required unless --box-only")
            from defect_vision.inference.segmenter import Segmenter
            from defect_vision.models.sam import load_sam, model_type_for

            sam_model = load_sam(Path(sam), model_type_for(Path(sam), config.model_type))
            self.segmenter = Segmenter(sam_model, self.device, self.dtype, config.mask_threshold, batch=config.sam_batch)
        self.class_filter = self._vocabulary(config) if self.detector is not None else None
        names = self.class_names
        self.thresholds = (load_thresholds(Path(config.thresholds), names, config.conf) if config.thresholds
                           else ClassThresholds({}, config.conf))

    def _vocabulary(self, config: PredictConfig) -> list[int] | None:
        """--classes: only known names -> a class filter (as always); any new name -> the detector's vocabulary
        becomes exactly these names, new ones embedded by the local text encoder (inference/vocabulary.py)."""
        names = self.class_names
        if not config.classes or all(c in names for c in config.classes):
            return class_filter(config.classes, names)
        from defect_vision.data.source import load_phrasings
        from defect_vision.inference.vocabulary import open_vocabulary

        open_vocabulary(self.detector, config.classes, getattr(self.detector, "meta", {}), config.encoder,
                        text_encoder=config.text_encoder, clip=config.clip,
                        phrasings=load_phrasings(config.prompts, "prompts") if config.prompts else None)
        return None

    @classmethod
    def from_run(cls, run: str | Path, config: PredictConfig | None = None, **overrides) -> DefectPredictor:
        """The models of a pipeline run folder: <run>/yolo_world/best.pt, <run>/sam/best.pth and, when present and
        not overridden, <run>/thresholds.json. Keyword overrides set PredictConfig fields."""
        run = Path(run)
        config = config or PredictConfig()
        for k, v in overrides.items():
            if not hasattr(config, k):
                raise TypeError(f"from_run: unknown option {k!r}")
            setattr(config, k, v)
        models = run_models(run)
        if config.thresholds is None:
            config.thresholds = models.thresholds
        if config.backend != "torch" and config.onnx is None:
            config.onnx = models.onnx
        return cls(models.detector, None if config.box_only else models.sam, config)

    @property
    def class_names(self) -> list[str]:
        return self.detector.class_names if self.detector is not None else []

    @property
    def category_ids(self) -> list[int] | None:
        return self.detector.category_ids if self.detector is not None else None

    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """Boxes of each image, filtered by class and by the (per-class) thresholds."""
        if self.detector is None:
            raise DatasetError("no detector loaded (give --detector, or boxes through --gt-boxes)")
        c = self.config
        dets = self.detector.predict(list(images), self.thresholds.nms_conf, c.iou, c.max_det, self.class_filter, self.timings)
        return [self.thresholds.apply(d) for d in dets]

    def segment(self, pixels: np.ndarray, det: Detections) -> Detections:
        """The detections with masks: SAM on their boxes (encoder once, no SAM call without boxes), or the boxes."""
        from defect_vision.inference.writers import box_rles

        h, w = pixels.shape[:2]
        if self.segmenter is None:
            det.rle = box_rles(det.xyxy, h, w)
        else:
            det.rle, iou = self.segmenter.segment(pixels, det.xyxy, self.timings)
            det.data["sam_iou"] = iou
        det.mask = None
        return det

    def segment_batch(self, images: Sequence[np.ndarray], dets: Sequence[Detections], finish: bool = True) -> list[Detections]:
        """`segment` for several images: SAM's encoder batched over the images with boxes (never run on the others).
        Masks come as det.data["mask_crops"]; `finish` also sets det.rle (else writers.finish_masks does, later)."""
        from defect_vision.inference.writers import finish_masks

        if self.segmenter is None or not hasattr(self.segmenter, "segment_batch"):
            return [self.segment(pixels, det) for pixels, det in zip(images, dets)]
        for det, (crops, iou) in zip(dets, self.segmenter.segment_batch(list(images), [d.xyxy for d in dets], self.timings)):
            det.rle, det.mask = None, None
            det.data["mask_crops"], det.data["sam_iou"] = crops, iou
            if finish:
                finish_masks(det)
        return list(dets)

    def predict(self, images: Sequence[np.ndarray], infos: Sequence[ImageInfo] | None = None) -> list[Result]:
        """Results of RGB uint8 HxWx3 images (one detector batch, then SAM per image)."""
        infos = infos or [ImageInfo(i, f"image_{i}", im.shape[0], im.shape[1]) for i, im in enumerate(images, 1)]
        dets = self.detect(images)
        for pixels, det, info in zip(images, dets, infos):
            det.image = ImageInfo(info.id, info.file_name, pixels.shape[0], pixels.shape[1], info.path, info.is_good, info.extra)
        return [Result(det, pixels) for pixels, det in zip(images, self.segment_batch(images, dets))]

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
                arr = np.asarray(item)
                if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
                    raise DatasetError(f"image {i}: expected an RGB HxWx3 uint8 array, got {arr.dtype} {arr.shape}")
                pixels.append(arr)
                infos.append(ImageInfo(i, f"image_{i}"))
        results = self.predict(pixels, infos)
        return results[0] if single else results
