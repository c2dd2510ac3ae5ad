"""Good-only anomaly models (issue 21): anomalib's torch models built offline, saved and loaded as a model folder.

Methods: `draem` (anomalib's DRAEM: a reconstructive autoencoder + a discriminative U-Net trained on synthetic
Perlin-noise anomalies; needs no pretrained weights at all), `padim` and `patchcore` (anomalib's PaDiM / PatchCore
over a torchvision ResNet backbone whose weights come from weights/ only; random init for tests). The lightning
wrappers are never used: anomalib's `Draem` downloads DTD textures when built, its Engine pulls loggers and
callbacks we do not need. A model folder holds `anomaly.json` (what the model is and its calibrated thresholds)
and `model.pt` (the state_dict)."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from defect_vision.errors import DatasetError

METHODS = ("draem", "padim", "patchcore")
WEIGHT_FREE = ("draem",)
BACKBONES = {  # timm/torchvision name -> torchvision's official file under weights/
    "resnet18": "resnet18-f37072fd.pth",
    "wide_resnet50_2": "wide_resnet50_2-95faca4d.pth",
}
LAYERS = ["layer1", "layer2", "layer3"]
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
META_FILE, MODEL_FILE = "anomaly.json", "model.pt"
MAP_PNG_MAX = 65535  # anomaly map PNGs are uint16: value = MAP_PNG_MAX * min(1, map / map_scale)


@dataclass(frozen=True)
class AnomalyMeta:
    """anomaly.json: the model and what calibration on val set."""

    method: str
    category: str
    image_size: int  # square input side (pixels); maps are resized back to each image's size
    backbone: str | None = None  # padim/patchcore
    weights: str | None = None  # the backbone file used, or "random-init"
    base_width: int = 32  # draem: channels of the first U-Net level
    map_threshold: float = 0.5  # raw map value above which a pixel is anomalous (max pixel F1 on val)
    image_threshold: float = 0.5  # raw image score (map max) above which an image is anomalous (max F1 on val)
    map_scale: float = 1.0  # raw map value written as MAP_PNG_MAX (the largest val map value)
    val: dict = field(default_factory=dict)  # calibration figures on val
    train_images: int = 0
    image_hw: list[int] | None = None  # height, width of the training images (None: they differ); predict checks it

    def to_json(self) -> str:
        return json.dumps({"kind": "anomaly-model", **asdict(self)}, indent=2) + "\n"


def backbone_file(backbone: str, weights_dir: Path = Path("weights")) -> Path:
    return Path(weights_dir) / BACKBONES[backbone]


def default_method(weights_dir: Path = Path("weights")) -> str:
    """padim when weights/resnet18-*.pth is present, else the weight-free draem."""
    return "padim" if backbone_file("resnet18", weights_dir).is_file() else "draem"


def build_model(meta: AnomalyMeta, backbone_weights: Path | None = None):
    """The torch model of `meta` (random init; `backbone_weights`: a torchvision state_dict for padim/patchcore)."""
    import torch

    if meta.method == "draem":
        from anomalib.models.image.draem.torch_model import (
            DiscriminativeSubNetwork,
            DraemModel,
            ReconstructiveSubNetwork,
        )

        model = DraemModel()
        model.reconstructive_subnetwork = ReconstructiveSubNetwork(base_width=meta.base_width)
        model.discriminative_subnetwork = DiscriminativeSubNetwork(in_channels=6, out_channels=2,
                                                                   base_width=meta.base_width)
        return model
    if meta.method not in METHODS:
        raise DatasetError(f"method {meta.method}: unknown (choose from {', '.join(METHODS)})")
    if meta.backbone not in BACKBONES:
        raise DatasetError(f"backbone {meta.backbone}: unknown (choose from {', '.join(BACKBONES)})")
    if meta.method == "padim":
        from anomalib.models.image.padim.torch_model import PadimModel

        model = PadimModel(backbone=meta.backbone, layers=LAYERS, pre_trained=False)
    else:
        from anomalib.models.image.patchcore.torch_model import PatchcoreModel

        model = PatchcoreModel(layers=LAYERS[1:], backbone=meta.backbone, pre_trained=False)
    if backbone_weights is not None:
        state = torch.load(backbone_weights, map_location="cpu", weights_only=True)
        net = model.feature_extractor.feature_extractor
        missing, _ = net.load_state_dict(state, strict=False)
        if missing:
            raise DatasetError(f"{backbone_weights}: not a torchvision {meta.backbone} state_dict "
                               f"(missing {', '.join(missing[:3])})")
    return model


def save_model(folder: Path, model, meta: AnomalyMeta) -> None:
    import torch

    torch.save(model.state_dict(), Path(folder) / MODEL_FILE)
    (Path(folder) / META_FILE).write_text(meta.to_json())


def read_meta(folder: Path) -> AnomalyMeta:
    """anomaly.json of a model folder; DatasetError naming the file when it is missing or not one."""
    path = Path(folder) / META_FILE
    if not path.is_file():
        raise DatasetError(f"{path}: no anomaly model here (defect-vision train-anomaly writes {META_FILE} and "
                           f"{MODEL_FILE})")
    try:
        data = json.loads(path.read_text())
        if data.pop("kind", None) != "anomaly-model":
            raise ValueError("kind is not anomaly-model")
        return AnomalyMeta(**data)
    except (ValueError, TypeError) as exc:
        raise DatasetError(f"{path}: not an anomaly model description ({exc})") from None


def load_model(folder: Path, device="cpu"):
    """(meta, model in eval mode on `device`) of a train-anomaly folder."""
    import torch

    meta = read_meta(folder)
    state = torch.load(Path(folder) / MODEL_FILE, map_location="cpu", weights_only=True)
    model = build_model(meta)
    for name, value in state.items():  # buffers filled by fitting (memory bank, Gaussian) start empty
        owner, _, leaf = name.rpartition(".")
        module = model.get_submodule(owner) if owner else model
        if leaf in module._buffers and module._buffers[leaf] is not None and module._buffers[leaf].shape != value.shape:
            module._buffers[leaf] = torch.empty_like(value)
    model.load_state_dict(state)
    return meta, model.to(device).eval()


def to_input(images: list[np.ndarray], meta: AnomalyMeta, device):
    """RGB uint8 HxWx3 images -> the model's (B, 3, S, S) float batch (ImageNet-normalised for the backbones)."""
    import torch
    import torch.nn.functional as F

    batch = []
    for im in images:
        t = torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1)[None].float().div_(255.0)
        batch.append(F.interpolate(t, size=(meta.image_size, meta.image_size), mode="bilinear", align_corners=False,
                                   antialias=True))
    x = torch.cat(batch).to(device)
    if meta.method != "draem":
        mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
        x = (x - mean) / std
    return x


def raw_maps(model, images: list[np.ndarray], meta: AnomalyMeta, device) -> list[np.ndarray]:
    """Each image's raw anomaly map (float32, the image's own size; higher = more anomalous)."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        out = model(to_input(images, meta, device))
        maps = out.anomaly_map.float()
        if maps.ndim == 3:
            maps = maps[:, None]
        result = []
        for m, im in zip(maps, images):
            full = F.interpolate(m[None], size=im.shape[:2], mode="bilinear", align_corners=False)
            result.append(full[0, 0].cpu().numpy().astype(np.float32))
    return result


def map_png_values(raw: np.ndarray, scale: float) -> np.ndarray:
    """A raw map as the uint16 values of its PNG (MAP_PNG_MAX at `scale` and above, 0 at 0 and below)."""
    return np.round(np.clip(raw / max(scale, 1e-12), 0.0, 1.0) * MAP_PNG_MAX).astype(np.uint16)
