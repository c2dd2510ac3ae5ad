"""The model a detector fine-tune starts from: official YOLO-World v2 or YOLOE weights, or a random-init model yaml;
its family is read from the checkpoint's model class (or the yaml's head), never from the file name."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from defect_vision.errors import DatasetError
from defect_vision.models.detector import (
    FAMILY_NAMES,
    YOLOE,
    is_segmentation,
    model_family,
    yaml_family,
)
from defect_vision.models.text_embeddings import MissingWeightsError
from defect_vision.training.detector_config import DetectorTrainConfig

LOG = logging.getLogger("defect_vision.yolo_world")
WORLD_V2_URL = "https://github.com/ultralytics/assets/releases/download/v8.4.0/{name}"


@dataclass(frozen=True)
class StartModel:
    spec: str  # what ultralytics builds the model from (a yaml name/file, or a checkpoint path)
    weights: str  # "official" | "random-init"
    family: str  # models.detector.YOLO_WORLD | YOLOE
    segment: bool = False  # a -seg model (YOLOE): trains masks too (task "segment")
    text_model: str | None = None  # YOLOE's text model ("mobileclip:blt", "mobileclip2:b"); None for YOLO-World


def start_model(config: DetectorTrainConfig) -> StartModel:
    """The start model of `config`; DatasetError naming the file when it is not a YOLO-World or YOLOE model."""
    if config.from_scratch:
        from ultralytics.nn.tasks import yaml_model_load

        try:
            cfg = yaml_model_load(config.model_cfg)
        except Exception as exc:  # noqa: BLE001
            raise DatasetError(f"{config.model_cfg}: not a model yaml ({exc.__class__.__name__}: {exc})") from None
        family = yaml_family(cfg)
        if family is None:
            raise DatasetError(f"{config.model_cfg}: not a YOLO-World or YOLOE model yaml (no WorldDetect, "
                               "YOLOEDetect or YOLOESegment head)")
        LOG.warning("=" * 72)
        LOG.warning("--from-scratch: %s with RANDOM initial weights, no pre-training; results are "
                    "for tests/smoke runs, not %s's open-vocabulary quality", config.model_cfg, FAMILY_NAMES[family])
        LOG.warning("=" * 72)
        segment = any("YOLOESegment" in str(layer) for layer in cfg.get("head", []))
        text_model = cfg.get("text_model", "mobileclip:blt") if family == YOLOE else None
        return StartModel(str(config.model_cfg), "random-init", family, segment, text_model)
    path = Path(config.model)
    if not path.is_file():
        raise MissingWeightsError(
            f"{path}: YOLO-World start weights not found; get them with `scripts/download_weights.sh` or "
            f"`curl -L -o {path} {WORLD_V2_URL.format(name=path.name if 'world' in path.name else 'yolov8s-worldv2.pt')}` "
            "(any of yolov8{s,m,l,x}-worldv2.pt), or pass --from-scratch for a random-init smoke run"
        )
    from ultralytics.nn.tasks import load_checkpoint

    try:
        model, _ = load_checkpoint(str(path), device="cpu")
    except Exception as exc:  # noqa: BLE001
        raise DatasetError(f"{path}: not a readable ultralytics checkpoint ({exc.__class__.__name__}: {exc})") from None
    family = model_family(model)
    if family is None:
        raise DatasetError(f"{path}: a {type(model).__name__}, not a YOLO-World (WorldModel) or YOLOE checkpoint")
    head = model.model[-1]
    if family == YOLOE and (getattr(head, "is_fused", False) or hasattr(head, "lrpc")):
        raise DatasetError(f"{path}: a YOLOE checkpoint with its classes fused into the head (prompt-free or "
                           "linear-probed): no text pathway left to fine-tune; start from the official yoloe-*.pt")
    text_model = getattr(model, "text_model", "mobileclip:blt") if family == YOLOE else None
    return StartModel(str(path.resolve()), "official", family, is_segmentation(model), text_model)
