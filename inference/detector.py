"""YOLO-World detector: load an ultralytics checkpoint (class names + text embeddings baked in), predict in batches."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")  # no hub / font / version look-ups at run time

import numpy as np
import torch

from converters.errors import DatasetError
from inference.checkpoints import SAM, ULTRALYTICS, sniff_checkpoint
from inference.devices import Timings, autocast, timed


@dataclass
class Detections:
    """Boxes of one image in original pixel coordinates."""

    boxes: np.ndarray  # (N, 4) float32 xyxy
    scores: np.ndarray  # (N,) float32
    classes: np.ndarray  # (N,) int64 class index (COCO category id - 1)

    def __len__(self) -> int:
        return len(self.boxes)

    def keep(self, selected: np.ndarray) -> Detections:
        return Detections(self.boxes[selected], self.scores[selected], self.classes[selected])

    @staticmethod
    def empty() -> Detections:
        return Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))


def load_detector_model(path: Path) -> torch.nn.Module:
    """The detection model of an ultralytics checkpoint (what YOLOWorld(path) loads); DatasetError naming the file."""
    from ultralytics.nn.tasks import DetectionModel, load_checkpoint

    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: detector checkpoint not found (expected a YOLO-World best.pt)")
    kind = sniff_checkpoint(path)
    if kind == SAM:
        raise DatasetError(f"{path}: this is a SAM checkpoint, not a YOLO-World detector (give it as --sam)")
    if kind != ULTRALYTICS:
        raise DatasetError(f"{path}: not an ultralytics YOLO-World checkpoint ({kind} file)")
    try:
        model, _ = load_checkpoint(path)
    except Exception as exc:  # noqa: BLE001 - ultralytics raises TypeError/ModuleNotFoundError/... for bad files
        raise DatasetError(f"{path}: cannot load the ultralytics checkpoint ({str(exc).splitlines()[0][:200]})") from None
    if not isinstance(model, DetectionModel) or getattr(model, "task", "detect") != "detect":
        raise DatasetError(f"{path}: an ultralytics {type(model).__name__} ({getattr(model, 'task', '?')}), not a detector")
    if not getattr(model, "names", None):
        raise DatasetError(f"{path}: the detector has no class names baked in")
    return model


class Detector:
    """Batched YOLO-World prediction: letterbox -> forward (autocast on CUDA) -> NMS -> boxes in original pixels."""

    def __init__(self, path: Path, device: torch.device, dtype: torch.dtype | None = None, imgsz: int | None = None):
        from ultralytics.data.augment import LetterBox
        from ultralytics.utils.checks import check_imgsz

        self.path = Path(path)
        model = load_detector_model(self.path)
        self.names: dict[int, str] = dict(enumerate(model.names)) if isinstance(model.names, list) else dict(model.names)
        self.stride = int(max(model.stride)) if hasattr(model, "stride") else 32
        self.imgsz = check_imgsz(imgsz or model.args.get("imgsz", 640), stride=self.stride, min_dim=1, max_dim=1)
        if isinstance(self.imgsz, list):
            self.imgsz = self.imgsz[0]
        self.end2end = bool(getattr(model, "end2end", False))
        self.model = model.fuse(verbose=False).to(device).eval() if hasattr(model, "fuse") else model.to(device).eval()
        self.device, self.dtype = device, dtype
        self.letterbox = LetterBox(new_shape=(self.imgsz, self.imgsz), auto=False, stride=self.stride)
        self.calls = 0

    def preprocess(self, images: list[np.ndarray]) -> torch.Tensor:
        """RGB uint8 HxWx3 images -> one letterboxed float batch (B, 3, imgsz, imgsz) in [0, 1] on the device."""
        batch = np.stack([self.letterbox(image=im) for im in images]).transpose(0, 3, 1, 2)
        return torch.from_numpy(np.ascontiguousarray(batch)).to(self.device).float().div_(255)

    @torch.inference_mode()
    def predict(self, images: list[np.ndarray], conf: float = 0.25, iou: float = 0.5, max_det: int = 100,
                classes: list[int] | None = None, timings: Timings | None = None) -> list[Detections]:
        """Detections per image (same order), boxes clipped to each image."""
        from ultralytics.utils import nms, ops

        if not images:
            return []
        timings = timings if timings is not None else Timings()
        with timed(timings, "detector", self.device):
            x = self.preprocess(images)
            with autocast(self.device, self.dtype):
                preds = self.model(x)
            preds = preds[0] if isinstance(preds, (list, tuple)) else preds
            out = nms.non_max_suppression(preds.float(), conf, iou, classes, max_det=max_det, nc=0, end2end=self.end2end)
            results = []
            for det, im in zip(out, images):
                boxes = ops.scale_boxes(x.shape[2:], det[:, :4].clone(), im.shape)
                results.append(Detections(boxes.cpu().numpy().astype(np.float32), det[:, 4].cpu().numpy().astype(np.float32),
                                          det[:, 5].cpu().numpy().astype(np.int64)))
        self.calls += 1
        return results
