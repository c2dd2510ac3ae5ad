"""The course reports' image classifier: a torchvision model (ResNet18, EfficientNet-v2, ...) with its last linear
layer replaced by one output per image type. Start weights are torchvision's official ImageNet files, read from
weights/ under their release names (weights/resnet18-f37072fd.pth, ...), never downloaded; without them the model is
random-init. torch is imported inside the functions: the command's --help lists MODELS without it."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from defect_vision.errors import DatasetError

if TYPE_CHECKING:
    import torch

MODELS = ("resnet18", "resnet34", "resnet50", "efficientnet_v2_s", "efficientnet_v2_m", "efficientnet_v2_l",
          "mobilenet_v3_small", "mobilenet_v3_large", "convnext_tiny")
WEIGHTS_DIR = Path("weights")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CHECKPOINT_FORMAT = "defect-vision-classifier/1"


def check_model(name: str) -> None:
    if name not in MODELS:
        raise DatasetError(f"--model {name}: unknown classifier (choose from {', '.join(MODELS)})")


def official_files(name: str) -> list[str]:
    """torchvision's release file names of `name`'s ImageNet weights, the default first (e.g. resnet18-f37072fd.pth)."""
    from torchvision.models import get_model_weights

    check_model(name)
    enum = get_model_weights(name)
    ordered = [enum.DEFAULT, *(w for w in enum if w is not enum.DEFAULT)]
    return [Path(w.url).name for w in ordered]


def default_weights(name: str, folder: Path = WEIGHTS_DIR) -> Path | None:
    """The first of `name`'s official weight files present in `folder`, None when there is none."""
    return next((folder / f for f in official_files(name) if (folder / f).is_file()), None)


@dataclass(frozen=True)
class Start:
    model: torch.nn.Module
    weights: str  # "imagenet" | "random-init"
    file: Path | None  # the weights file read


def replace_head(model: torch.nn.Module, num_classes: int) -> None:
    """Swap the model's last nn.Linear (resnet `fc`, efficientnet/mobilenet/convnext `classifier[-1]`) for a fresh
    one with `num_classes` outputs."""
    import torch

    name = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)][-1]
    parent_name, _, leaf = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, leaf)
    setattr(parent, leaf, torch.nn.Linear(old.in_features, num_classes))


def build_classifier(name: str, num_classes: int, weights: Path | None, seed: int = 0) -> Start:
    """`name` with ImageNet weights from `weights` (None: random init), head replaced by `num_classes` outputs;
    torch's RNG is seeded first, so the same seed gives the same head (and random body)."""
    import torch
    import torchvision

    check_model(name)
    torch.manual_seed(seed)
    model = torchvision.models.get_model(name, weights=None)
    if weights is not None:
        weights = Path(weights)
        if not weights.is_file():
            raise DatasetError(f"{weights}: classifier start weights not found (torchvision's {name} ImageNet file, "
                               f"e.g. weights/{official_files(name)[0]}; or --from-scratch)")
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        except Exception as exc:  # noqa: BLE001 - unpickling, zip and key/shape mismatches all mean "not this model"
            raise DatasetError(f"{weights}: not torchvision {name} weights ({exc.__class__.__name__}: "
                               f"{str(exc).splitlines()[0][:200]})") from None
    replace_head(model, num_classes)
    return Start(model, "imagenet" if weights is not None else "random-init", weights)


def load_classifier(path: Path) -> tuple[torch.nn.Module, dict]:
    """(model in eval mode, its metadata: model, classes, imgsz, mean, std, weights) of a classify best.pt."""
    import torch
    import torchvision

    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: missing (no classifier checkpoint)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise DatasetError(f"{path}: not a readable checkpoint ({exc.__class__.__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise DatasetError(f"{path}: not a defect-vision classifier checkpoint (no format {CHECKPOINT_FORMAT})")
    model = torchvision.models.get_model(ckpt["model"], weights=None)
    replace_head(model, len(ckpt["classes"]))
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), {k: v for k, v in ckpt.items() if k != "state_dict"}
