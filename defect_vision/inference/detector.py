"""Open-vocabulary detector (YOLO-World or YOLOE, read from the checkpoint): load an ultralytics checkpoint (class
names + text embeddings baked in), predict in batches. A YOLOE -seg detector also gives each box its mask when
`keep_masks` is set (predict --masks detector|refine), kept in each Detections' data["detector_masks"]."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from defect_vision.detections import Detections
from defect_vision.devices import (
    COUNT,
    Timings,
    autocast,
    full_precision,
    timed,
    to_device,
)
from defect_vision.inference.interfaces import BoxDetector
from defect_vision.masks import MaskCrop

MASKS_KEY = "detector_masks"  # inference.detector_masks.KEY (that module imports torch-free parts only)
from defect_vision.models.detector import (
    is_segmentation,
    load_detector_model,
    model_family,
)


def decode_head_in_fp32(model: torch.nn.Module) -> torch.nn.Module | None:
    """Make the detection head build its anchors and decode boxes in fp32 under autocast. ultralytics decodes in
    the feature maps' dtype: in bf16 box coordinates round to 4 px steps at 640 px (2 px in fp16), and those boxes
    are SAM's prompts. Returns the patched head (None when the model has none)."""
    head = model.model[-1] if hasattr(model, "model") and len(model.model) else None
    if head is None or not hasattr(head, "_inference"):
        return None
    inner = type(head)._inference.__get__(head)

    def inference(x: dict) -> torch.Tensor:
        device = x["boxes"].device
        with full_precision(device):
            return inner({k: ([f.float() for f in v] if isinstance(v, (list, tuple)) else v.float())
                          for k, v in x.items()})

    head._inference = inference
    return head


def dense_crops(masks: torch.Tensor) -> list[MaskCrop]:
    """(N, H, W) masks (nonzero = inside) -> N MaskCrops cropped to each mask's extent."""
    out = []
    for m in masks.bool().cpu().numpy():
        rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        if len(rows) == 0:
            out.append(MaskCrop(0, 0, np.zeros((0, 0), bool), *m.shape))
            continue
        r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        out.append(MaskCrop(int(r0), int(c0), m[r0:r1, c0:c1].copy(), *m.shape))
    return out


class Detector(BoxDetector):
    """Batched YOLO-World / YOLOE prediction: letterbox -> forward (autocast on CUDA) -> NMS -> boxes in original
    pixels (and, for a -seg YOLOE with `keep_masks`, each box's mask)."""

    open_vocabulary = True  # new --classes names are embedded by the local text encoder (inference/vocabulary.py)

    memory_format = torch.contiguous_format  # of the input batch (and of the convolutions' weights)

    def __init__(self, path: Path, device: torch.device, dtype: torch.dtype | None = None, imgsz: int | None = None):
        from ultralytics.data.augment import LetterBox
        from ultralytics.utils.checks import check_imgsz

        self.path = Path(path)
        model, meta = load_detector_model(self.path, with_meta=True)
        self.meta: dict = meta  # the checkpoint's defect_vision metadata (prompts, text encoder, ...)
        self.family = model_family(model)  # models.detector.YOLO_WORLD | YOLOE
        self.segment = is_segmentation(model)  # a YOLOE -seg model: masks available
        self.keep_masks = False  # compute the -seg masks into data["detector_masks"] (set by inference.backends)
        names = model.names
        self.class_names: list[str] = [str(n) for n in (names if isinstance(names, list) else [names[k] for k in sorted(names)])]
        ids = meta.get("category_ids")
        self.category_ids: list[int] | None = [int(i) for i in ids] if isinstance(ids, list) and len(ids) == len(self.class_names) else None
        self.stride = int(max(model.stride)) if hasattr(model, "stride") else 32
        self.imgsz = check_imgsz(imgsz or model.args.get("imgsz", 640), stride=self.stride, min_dim=1, max_dim=1)
        if isinstance(self.imgsz, list):
            self.imgsz = self.imgsz[0]
        self.end2end = bool(getattr(model, "end2end", False))
        self.model = model.fuse(verbose=False).to(device).eval() if hasattr(model, "fuse") else model.to(device).eval()
        self.device, self.dtype = device, dtype
        decode_head_in_fp32(self.model)
        if device.type == "cpu":  # oneDNN's convolutions run 20-30% faster on NHWC tensors (yolov8s-worldv2, fp32)
            self.memory_format = torch.channels_last
            self.model.to(memory_format=self.memory_format)
        self.letterbox = LetterBox(new_shape=(self.imgsz, self.imgsz), auto=False, stride=self.stride)
        self.calls = 0

    def preprocess(self, images: list[np.ndarray]) -> torch.Tensor:
        """RGB uint8 HxWx3 images -> one letterboxed float batch (B, 3, imgsz, imgsz) in [0, 1] on the device
        (uint8 copied from pinned memory, converted on the device)."""
        batch = np.stack([self.letterbox(image=im) for im in images]).transpose(0, 3, 1, 2)
        x = to_device(np.ascontiguousarray(batch), self.device).float().div_(255)
        return x.contiguous(memory_format=self.memory_format)

    @torch.inference_mode()
    def predict(self, images: list[np.ndarray], conf: float = 0.25, iou: float = 0.5, max_det: int = 100,
                classes: list[int] | None = None, timings: Timings | None = None, infos=None) -> list[Detections]:
        """Detections per image (same order), boxes clipped to each image (`infos` unused: pixels are enough)."""
        from ultralytics.utils import nms, ops

        if not images:
            return []
        timings = timings if timings is not None else Timings()
        with timed(timings, "detector", self.device):
            x = self.preprocess(images)
            with autocast(self.device, self.dtype):
                preds = self.model(x)
            preds = preds[0] if isinstance(preds, (list, tuple)) else preds
            protos = None
            if isinstance(preds, (list, tuple)):  # -seg: (boxes + scores + mask coefficients, prototypes)
                preds, protos = preds
            nc = len(self.class_names) if protos is not None else 0  # -seg: the channels after the classes are masks
            out = nms.non_max_suppression(preds.float(), conf, iou, classes, max_det=max_det, nc=nc, end2end=self.end2end)
            host = torch.cat([det[:, :6] for det in out]).cpu().split([len(det) for det in out])  # one copy per batch
            results = []
            for k, (det, im) in enumerate(zip(host, images)):
                boxes = ops.scale_boxes(x.shape[2:], det[:, :4].clone(), im.shape)
                results.append(Detections(boxes.numpy().astype(np.float32), det[:, 5].numpy().astype(np.int64),
                                          det[:, 4].numpy().astype(np.float32), class_names=self.class_names,
                                          category_ids=self.category_ids))
                if self.keep_masks and protos is not None:  # follow the detections through every filter
                    results[-1].data[MASKS_KEY] = self.masks(protos[k], out[k], boxes, im.shape[:2])
        with COUNT:
            self.calls += 1
        return results

    @staticmethod
    def masks(protos: torch.Tensor, det: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int]) -> list[MaskCrop]:
        """The -seg masks of one image's detections (NMS rows: box, score, class, mask coefficients) at its original
        size, as ultralytics' predictor makes them with retina_masks (each cropped to its box)."""
        from ultralytics.utils import ops

        if len(det) == 0:
            return []
        masks = ops.process_mask_native(protos.float(), det[:, 6:].float(), boxes.to(protos.device).float(), size)
        return dense_crops(masks > 0)
