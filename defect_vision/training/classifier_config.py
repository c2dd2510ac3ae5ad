"""The settings of a classifier run (`defect-vision classify` builds one from its options). The defaults are the
course reports': Adam 1e-3, cosine schedule, images resized to 512, ImageNet normalisation, random rotation and
colour jitter, batch 32, 50 epochs (the wood report's; the capsule report trained 200)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from defect_vision.errors import ConfigError
from defect_vision.models.classifier import MODELS


@dataclass(frozen=True)
class ClassifierTrainConfig:
    """One classifier fine-tune on a converted category's COCO split (instances_{train,val,test}.json of `coco`)."""

    coco: Path  # COCO export folder (datasets/coco/<category>)
    out: Path  # run folder: best.pt, metrics.json, confusion.png
    category: str = ""
    model: str = "resnet18"  # a torchvision classifier (models.classifier.MODELS)
    weights: Path | None = None  # start weights (None: weights/<torchvision's file of `model`>, else random init)
    from_scratch: bool = False  # random init even when the weights are there
    epochs: int = 50
    imgsz: int = 512  # images resized to imgsz x imgsz (the reports' Resize 512)
    batch: int = 32
    lr: float = 1e-3  # Adam; cosine annealing to 0 over the epochs
    rotation: float = 15.0  # random rotation, +- degrees (train only)
    jitter: float = 0.2  # colour jitter: brightness, contrast and saturation factor range (train only)
    balanced_loss: bool = False  # logit-adjusted cross-entropy (training/balanced_loss.py) instead of plain
    tau: float = 1.0  # logit adjustment strength (1: Menon et al.'s default, = balanced softmax)
    device: str = "auto"
    seed: int = 0
    progress: bool = True
    force: bool = False  # replace an --out folder that is not a previous classify output

    def __post_init__(self) -> None:
        object.__setattr__(self, "coco", Path(self.coco))
        object.__setattr__(self, "out", Path(self.out))
        if self.weights is not None:
            object.__setattr__(self, "weights", Path(self.weights))
        if self.model not in MODELS:
            raise ConfigError(f"{{model}} {self.model}: unknown classifier (choose from {', '.join(MODELS)})", "model")
        if self.from_scratch and self.weights is not None:
            raise ConfigError("{from_scratch} and {weights}: choose one start", "from_scratch", "weights")
        for name, low in (("epochs", 1), ("imgsz", 32), ("batch", 1)):
            if getattr(self, name) < low:
                raise ConfigError(f"{{{name}}} {getattr(self, name)}: must be >= {low}", name)
        for name in ("lr", "tau", "rotation", "jitter"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"{{{name}}} {getattr(self, name)}: must be >= 0", name)
        if self.lr == 0:
            raise ConfigError("{lr} 0: must be > 0", "lr")
