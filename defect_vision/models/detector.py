"""Load an open-vocabulary detector checkpoint (ultralytics format, class names and text embeddings baked in), with
one-line errors naming the file for a missing, foreign or swapped checkpoint; and the two families it may be:

- `yolo_world`: ultralytics' WorldModel. The class embeddings are `txt_feats`, the text model's vectors as they are.
- `yoloe`: YOLOEModel / YOLOESegModel. The class embeddings are `pe`, the text model's vectors through the head's
  learned projection (`reprta`): a new name's vector must go through the same (fine-tuned) projection.

The family is read from the model's class (checkpoint) or its head module (yaml), never from a file name."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from defect_vision.errors import DatasetError
from defect_vision.models.checkpoints import SAM, SAM2, ULTRALYTICS, sniff_checkpoint
from defect_vision.offline import go_offline

if TYPE_CHECKING:
    import torch

YOLO_WORLD, YOLOE = "yolo_world", "yoloe"
FAMILY_NAMES = {YOLO_WORLD: "YOLO-World", YOLOE: "YOLOE"}


def model_family(model) -> str | None:
    """"yolo_world" | "yoloe" for an ultralytics model (ultralytics.nn.tasks), None for any other."""
    from ultralytics.nn.tasks import WorldModel, YOLOEModel

    if isinstance(model, YOLOEModel):
        return YOLOE
    if isinstance(model, WorldModel):
        return YOLO_WORLD
    return None


def yaml_family(cfg: dict) -> str | None:
    """The family of a model yaml (ultralytics' yaml_model_load dict), from its head module."""
    head = " ".join(str(layer) for layer in cfg.get("head", []))
    if "YOLOEDetect" in head or "YOLOESegment" in head:
        return YOLOE
    return YOLO_WORLD if "WorldDetect" in head else None


def is_segmentation(model) -> bool:
    """True for a detector that also predicts masks (YOLOE -seg)."""
    from ultralytics.nn.tasks import SegmentationModel

    return isinstance(model, SegmentationModel)


def class_feats(model) -> torch.Tensor:
    """(K, D) class embeddings the model predicts with (YOLO-World's txt_feats, YOLOE's projected pe)."""
    feats = model.pe if model_family(model) == YOLOE else model.txt_feats
    return feats.reshape(len(model.names), -1).detach().float().cpu()


def project_text(model, raw: torch.Tensor) -> torch.Tensor:
    """(K, D) text-model vectors -> the class embeddings `model` predicts with: YOLOE's head projection (reprta,
    then L2 norm), identity for YOLO-World."""
    import torch

    if model_family(model) != YOLOE:
        return raw.detach().float()
    head = model.model[-1]
    param = next(head.parameters())
    with torch.no_grad():
        out = head.get_tpe(raw.detach().reshape(1, len(raw), -1).to(param.device, param.dtype))
    return out.reshape(len(raw), -1).float().cpu()


def bake_classes(model, names, feats: torch.Tensor) -> None:
    """Make `model` detect `names` with these (K, D) class embeddings (already projected: class_feats' space)."""
    if feats.ndim != 2 or feats.shape[0] != len(names):
        raise ValueError(f"need one embedding row per class name: got {tuple(feats.shape)} for {len(names)} names")
    rows = feats.detach().float().reshape(1, len(names), -1).clone()
    if model_family(model) == YOLOE:
        param = next(model.model[-1].parameters())
        model.pe = rows.to(param.device)
    else:
        model.txt_feats = rows
    model.model[-1].nc = len(names)
    model.names = dict(enumerate(names))


def bake_text(model, names, raw: torch.Tensor) -> None:
    """Make `model` detect `names` from their text-model vectors (YOLOE: through its projection)."""
    bake_classes(model, names, project_text(model, raw))


def load_detector_model(path: Path, with_meta: bool = False):
    """The detection model of an ultralytics checkpoint (what YOLOWorld(path) / YOLOE(path) loads); DatasetError
    naming the file. With `with_meta`: (model, our metadata dict from the checkpoint's "defect_vision" entry, {} if
    none)."""
    go_offline()
    from ultralytics.nn.tasks import DetectionModel, load_checkpoint

    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: detector checkpoint not found (expected a YOLO-World or YOLOE best.pt)")
    kind = sniff_checkpoint(path)
    if kind in (SAM, SAM2):
        raise DatasetError(f"{path}: this is a SAM checkpoint, not a YOLO-World detector (nor a YOLOE one; give it as --sam)")
    if kind != ULTRALYTICS:
        raise DatasetError(f"{path}: not an ultralytics YOLO-World or YOLOE checkpoint ({kind} file)")
    try:
        model, ckpt = load_checkpoint(path)
    except Exception as exc:  # noqa: BLE001 - ultralytics raises TypeError/ModuleNotFoundError/... for bad files
        raise DatasetError(f"{path}: cannot load the ultralytics checkpoint ({str(exc).splitlines()[0][:200]})") from None
    family = model_family(model)
    task = getattr(model, "task", "detect")
    if not isinstance(model, DetectionModel) or (task != "detect" and not (family == YOLOE and task == "segment")):
        raise DatasetError(f"{path}: an ultralytics {type(model).__name__} ({task}), not a detector")
    if not getattr(model, "names", None):
        raise DatasetError(f"{path}: the detector has no class names baked in")
    if family == YOLOE and (getattr(model.model[-1], "is_fused", False) or hasattr(model.model[-1], "lrpc")):
        raise DatasetError(f"{path}: a YOLOE checkpoint with its classes fused into the head (prompt-free or "
                           "linear-probed); give the unfused -seg/.pt file this project's train-detector writes")
    if with_meta:
        meta = ckpt.get("defect_vision") if isinstance(ckpt, dict) else None
        return model, meta if isinstance(meta, dict) else {}
    return model


def require_family(path: Path, model, family: str, what: str) -> None:
    """DatasetError naming `path` when its model is not of `family` (`what`: the option that needs it)."""
    found = model_family(model)
    if found != family:
        kind = FAMILY_NAMES.get(found, type(getattr(model, "model", model)).__name__)
        raise DatasetError(f"{path}: a {kind} checkpoint; {what} needs a {FAMILY_NAMES[family]} checkpoint")
