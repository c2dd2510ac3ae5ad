"""Load a YOLO-World detector checkpoint (ultralytics format, class names and text embeddings baked in), with
one-line errors naming the file for a missing, foreign or swapped checkpoint."""
from __future__ import annotations

from pathlib import Path

import torch

from defect_vision.errors import DatasetError
from defect_vision.models.checkpoints import SAM, ULTRALYTICS, sniff_checkpoint
from defect_vision.offline import go_offline


def load_detector_model(path: Path, with_meta: bool = False):
    """The detection model of an ultralytics checkpoint (what YOLOWorld(path) loads); DatasetError naming the file.
    With `with_meta`: (model, our metadata dict from the checkpoint's "defect_vision" entry, {} if none)."""
    go_offline()
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
        model, ckpt = load_checkpoint(path)
    except Exception as exc:  # noqa: BLE001 - ultralytics raises TypeError/ModuleNotFoundError/... for bad files
        raise DatasetError(f"{path}: cannot load the ultralytics checkpoint ({str(exc).splitlines()[0][:200]})") from None
    if not isinstance(model, DetectionModel) or getattr(model, "task", "detect") != "detect":
        raise DatasetError(f"{path}: an ultralytics {type(model).__name__} ({getattr(model, 'task', '?')}), not a detector")
    if not getattr(model, "names", None):
        raise DatasetError(f"{path}: the detector has no class names baked in")
    if with_meta:
        meta = ckpt.get("defect_vision") if isinstance(ckpt, dict) else None
        return model, meta if isinstance(meta, dict) else {}
    return model
