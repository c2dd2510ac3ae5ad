"""The settings of a YOLO-World fine-tune (`defect-vision train-detector` builds one from its options)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from defect_vision.errors import DatasetError
from defect_vision.models.text_embeddings import (
    DEFAULT_CACHE_DIR,
    DEFAULT_CLIP,
    ENCODERS,
)

SEED_REPORT_DEFAULTS = {"optimizer": "Adam", "lr0": 1e-3, "cos_lr": True, "epochs": 50}


@dataclass
class DetectorTrainConfig:
    """Everything one fine-tuning run needs; `overrides` are extra ultralytics train arguments (key -> value)."""

    category: str
    data: Path  # ultralytics data.yaml (the YOLO export)
    coco: Path  # COCO export folder whose categories[].prompt give the prompts
    out: Path  # run folder
    model: Path = Path("weights/yolov8s-worldv2.pt")  # start weights (any YOLO-World v2 checkpoint)
    from_scratch: bool = False  # random-init model from model_cfg instead of `model`
    model_cfg: str = "yolov8s-worldv2.yaml"
    text_encoder: str = "clip"  # clip | random (tests only)
    clip: Path = DEFAULT_CLIP
    embedding_cache: Path | None = DEFAULT_CACHE_DIR
    prompt_template: str = "{name}"
    prompts: Path | None = None  # prompts.yaml (class -> phrasings); default: <coco>/prompts.yaml when present
    tune_prompts: bool = False  # learnable class embeddings initialised from CLIP (saved in best.pt)
    prompt_reg: float = 1.0  # L2 pull of tuned embeddings towards their CLIP initialisation
    prompt_only: bool = False  # YOLO-World's prompt tuning: only the embeddings train (implies tune_prompts)
    encoder: Callable | None = field(default=None, repr=False)  # stand-in text encoder (tests): list[str] -> (N, 512)
    epochs: int = SEED_REPORT_DEFAULTS["epochs"]
    imgsz: int = 640
    batch: int = 8
    device: str = "auto"
    workers: int = 4
    optimizer: str = SEED_REPORT_DEFAULTS["optimizer"]
    lr0: float = SEED_REPORT_DEFAULTS["lr0"]
    cos_lr: bool = SEED_REPORT_DEFAULTS["cos_lr"]
    freeze: int | None = None
    balanced: bool = False
    balanced_loss: bool = False  # logit-adjusted class scores in the loss (training/balanced_loss.py)
    eval_zero_shot: bool = False
    plots: bool = True
    resume: bool = False
    seed: int = 0
    force: bool = False  # replace an --out folder that is not a previous train-detector output
    overrides: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("data", "coco", "out", "model", "clip"):
            setattr(self, name, Path(getattr(self, name)))
        if self.prompts is not None:
            self.prompts = Path(self.prompts)
        self.tune_prompts = self.tune_prompts or self.prompt_only
        if self.prompt_reg < 0:
            raise DatasetError(f"--prompt-reg {self.prompt_reg}: must be >= 0")
        if self.embedding_cache is not None:
            self.embedding_cache = Path(self.embedding_cache)
        if self.text_encoder not in ENCODERS:
            raise DatasetError(f"--text-encoder {self.text_encoder}: choose from {', '.join(ENCODERS)}")


def check_overrides(overrides: dict) -> dict:
    """The overrides, if every key is an ultralytics train argument; DatasetError naming the first that is not."""
    from ultralytics.cfg import DEFAULT_CFG_DICT

    for key, value in overrides.items():
        if key not in DEFAULT_CFG_DICT:
            raise DatasetError(f"{key}={value}: '{key}' is not an ultralytics argument")
    return dict(overrides)
