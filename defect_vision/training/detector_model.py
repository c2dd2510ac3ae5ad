"""The model a detector fine-tune starts from: official YOLO-World v2 weights, or a random-init model yaml."""
from __future__ import annotations

import logging
from pathlib import Path

from defect_vision.errors import DatasetError
from defect_vision.models.text_embeddings import MissingWeightsError
from defect_vision.training.detector_config import DetectorTrainConfig

LOG = logging.getLogger("defect_vision.yolo_world")
WORLD_V2_URL = "https://github.com/ultralytics/assets/releases/download/v8.4.0/{name}"


def start_model(config: DetectorTrainConfig) -> tuple[str, str]:
    """(what ultralytics builds the model from, "official" | "random-init")."""
    if config.from_scratch:
        from ultralytics.nn.tasks import yaml_model_load

        try:
            cfg = yaml_model_load(config.model_cfg)
        except Exception as exc:  # noqa: BLE001
            raise DatasetError(f"{config.model_cfg}: not a model yaml ({exc.__class__.__name__}: {exc})") from None
        if "world" not in Path(str(config.model_cfg)).stem or not any("WorldDetect" in str(layer) for layer in cfg.get("head", [])):
            raise DatasetError(f"{config.model_cfg}: not a YOLO-World model yaml (no WorldDetect head)")
        LOG.warning("=" * 72)
        LOG.warning("--from-scratch: %s with RANDOM initial weights, no pre-training; results are "
                    "for tests/smoke runs, not YOLO-World's open-vocabulary quality", config.model_cfg)
        LOG.warning("=" * 72)
        return str(config.model_cfg), "random-init"
    path = Path(config.model)
    if not path.is_file():
        raise MissingWeightsError(
            f"{path}: YOLO-World start weights not found; get them with `scripts/download_weights.sh` or "
            f"`curl -L -o {path} {WORLD_V2_URL.format(name=path.name if 'world' in path.name else 'yolov8s-worldv2.pt')}` "
            "(any of yolov8{s,m,l,x}-worldv2.pt), or pass --from-scratch for a random-init smoke run"
        )
    from ultralytics.nn.tasks import WorldModel, load_checkpoint

    try:
        model, _ = load_checkpoint(str(path), device="cpu")
    except Exception as exc:  # noqa: BLE001
        raise DatasetError(f"{path}: not a readable ultralytics checkpoint ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(model, WorldModel):
        raise DatasetError(f"{path}: a {type(model).__name__}, not a YOLO-World (WorldModel) checkpoint")
    return str(path.resolve()), "official"
