"""`train_anomaly`: a good-only anomaly model of one category (issue 21). Reads the category with the readers of
`convert` and its split, fits on the good TRAINING images only (the split's train + unused good images; never a
val or test image), calibrates the map and image thresholds on val (good + defect images, max F1) and writes a
model folder (io.atomic_dir, kind "train-anomaly"): anomaly.json + model.pt (defect_vision.models.anomaly)."""
from __future__ import annotations

import sys
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from defect_vision.data.source import DatasetSource, read_dataset
from defect_vision.errors import ConfigError, DatasetError
from defect_vision.io import atomic_dir
from defect_vision.models.anomaly import (
    BACKBONES,
    METHODS,
    WEIGHT_FREE,
    AnomalyMeta,
    backbone_file,
    build_model,
    default_method,
    raw_maps,
    save_model,
    to_input,
)

KIND = "train-anomaly"


@dataclass(frozen=True)
class AnomalyTrainConfig:
    source: DatasetSource
    out: Path
    splits: Path | None = None  # the category's split file (default: made as convert makes it, not written)
    method: str | None = None  # draem | padim | patchcore (None: padim with weights/resnet18, else draem)
    backbone: str = "resnet18"  # padim/patchcore
    weights: Path | None = None  # backbone state_dict (default: weights/<torchvision file>)
    weights_dir: Path = Path("weights")
    from_scratch: bool = False  # padim/patchcore on a random-init backbone: tests and smoke runs only
    image_size: int = 256
    epochs: int = 20  # draem
    batch: int = 8
    lr: float = 1e-3  # draem (Adam)
    base_width: int = 32  # draem
    coreset: float = 0.1  # patchcore coreset sampling ratio
    device: str = "auto"
    seed: int = 0
    force: bool = False
    progress: bool = True

    def __post_init__(self):
        if self.method is not None and self.method not in METHODS:
            raise ConfigError(f"{{method}} {self.method}: expected one of {', '.join(METHODS)}", "method")
        if self.backbone not in BACKBONES:
            raise ConfigError(f"{{backbone}} {self.backbone}: expected one of {', '.join(BACKBONES)}", "backbone")
        for name in ("image_size", "batch", "base_width"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{{{name}}} {getattr(self, name)}: must be >= 1", name)
        if self.epochs < 0:
            raise ConfigError(f"{{epochs}} {self.epochs}: must be >= 0", "epochs")
        if not 0 < self.coreset <= 1:
            raise ConfigError(f"{{coreset}} {self.coreset}: must be within (0, 1]", "coreset")


def warn(msg: str) -> None:
    """A warning framed like the other random-init smoke runs' (red on a terminal)."""
    red, end = ("\033[31m", "\033[0m") if sys.stderr.isatty() else ("", "")
    print(f"{red}{'!' * 78}\nWARNING: {msg}\n{'!' * 78}{end}", file=sys.stderr)


def anomaly_images(source: DatasetSource, splits: Path | None):
    """(category, good training records, val records) of the category and its split."""
    from defect_vision.data.splits import (
        SplitConfig,
        load_or_make_split,
        load_split,
        make_split,
    )

    cat = read_dataset(source)
    if splits is not None and Path(splits).is_file():  # the split convert wrote: the pipeline's own
        split, _ = load_or_make_split(cat, Path(splits), load_split(splits).config)
    else:  # convert's default split, made the same way (not written)
        split = make_split(cat, SplitConfig())
    of = split.split_of()
    unused = set(split.unused_good)
    train = [r for r in cat.images if r.is_good and (of.get(r.file_name) == "train" or r.file_name in unused)]
    val = [r for r in cat.images if of.get(r.file_name) == "val"]
    if not train:
        n_good = sum(r.is_good for r in cat.images)
        raise DatasetError(f"{source.cat_root}: no good training image to learn what normal looks like ({n_good} good "
                           f"images in all, none in the split's train; add good images, e.g. <C>/train/good/)")
    return cat, train, val


def resolve_method(config: AnomalyTrainConfig) -> tuple[str, Path | None, str | None]:
    """(method, backbone weights file or None, weights label for anomaly.json)."""
    method = config.method or default_method(config.weights_dir)
    if config.method is None and method in WEIGHT_FREE:
        warn(f"no {backbone_file('resnet18', config.weights_dir)}: training the weight-free method '{method}' "
             "(DRAEM: learns from synthetic anomalies on the good images; slower and weaker than PaDiM on a "
             "pretrained backbone)")
    if method in WEIGHT_FREE:
        return method, None, None
    if config.from_scratch:
        warn(f"--from-scratch: {method} on a RANDOM-INIT {config.backbone} backbone; the maps are meaningless, "
             "use this for smoke tests only, never for results.")
        return method, None, "random-init"
    path = Path(config.weights or backbone_file(config.backbone, config.weights_dir))
    if not path.is_file():
        raise DatasetError(f"{path}: {config.backbone} backbone weights missing (torchvision's file; copy it into "
                           f"{config.weights_dir}/), or use --method draem, which needs none")
    return method, path, str(path)


def read_rgb(records) -> list[np.ndarray]:
    from defect_vision.data.images import read_image

    return [read_image(r.path) for r in records]


def same_size(records) -> list[int] | None:
    """[height, width] shared by all the records, else None."""
    sizes = {(r.height, r.width) for r in records}
    return list(sizes.pop()) if len(sizes) == 1 else None


def gt_mask(record) -> np.ndarray:
    out = np.zeros((record.height, record.width), bool)
    for inst in record.instances:
        out |= inst.full_mask()
    return out


def fit(model, meta: AnomalyMeta, train: list, config: AnomalyTrainConfig, device) -> dict:
    """Fit `model` on the good training records: one pass for padim/patchcore, `epochs` for draem."""
    import torch
    from tqdm import tqdm

    g = np.random.default_rng(config.seed)
    if meta.method in ("padim", "patchcore"):
        model.to(device).train()
        for start in tqdm(range(0, len(train), config.batch), desc=f"{meta.method} features", unit="batch",
                          disable=not config.progress):
            model(to_input(read_rgb(train[start : start + config.batch]), meta, device))
        if meta.method == "padim":
            model.fit()
        else:
            model.subsample_embedding(config.coreset)
        return {"epochs": 1}
    from anomalib.data.utils.generators.perlin import PerlinAnomalyGenerator
    from anomalib.models.image.draem.loss import DraemLoss

    images = read_rgb(train)
    model.to(device).train()
    augmenter, loss_fn = PerlinAnomalyGenerator(anomaly_source_path=None, blend_factor=(0.1, 1.0)), DraemLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    losses = []
    for _ in tqdm(range(config.epochs), desc="draem", unit="epoch", disable=not config.progress):
        order, total = g.permutation(len(images)), 0.0
        for start in range(0, len(order), config.batch):
            x = to_input([images[i] for i in order[start : start + config.batch]], meta, device)
            if g.random() < 0.5:  # flips: more views of few good images
                x = x.flip(-1)
            augmented, mask = augmenter(x)
            reconstruction, prediction = model(augmented)
            loss = loss_fn(x, reconstruction, mask, prediction)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(x)
        losses.append(round(total / len(images), 5))
    return {"epochs": config.epochs, "loss": losses}


def best_f1_threshold(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(threshold, F1) maximising F1 of `scores > threshold` (scores quantised to 1024 levels, exact counts)."""
    scores, labels = np.asarray(scores, np.float64).ravel(), np.asarray(labels, bool).ravel()
    lo, hi = float(scores.min()), float(scores.max())
    if not labels.any() or hi <= lo:
        return hi, 0.0
    edges = np.linspace(lo, hi, 1025)
    pos, _ = np.histogram(scores[labels], edges)
    neg, _ = np.histogram(scores[~labels], edges)
    tp = np.cumsum(pos[::-1])[::-1]  # scores in bin k and above
    fp = np.cumsum(neg[::-1])[::-1]
    f1 = 2 * tp / np.maximum(tp + fp + labels.sum(), 1)
    k = int(np.argmax(f1))
    return float(edges[k] - 1e-12), float(f1[k])


def calibrate(model, meta: AnomalyMeta, val: list, train: list, config: AnomalyTrainConfig, device) -> AnomalyMeta:
    """meta with the map / image thresholds that maximise pixel / image F1 on val, and the map's PNG scale."""
    from sklearn.metrics import roc_auc_score

    model.eval()
    maps, masks = [], []
    for start in range(0, len(val), config.batch):
        recs = val[start : start + config.batch]
        maps += raw_maps(model, read_rgb(recs), meta, device)
        masks += [gt_mask(r) for r in recs]
    defect = np.array([not r.is_good for r in val], bool)
    if not defect.any():  # nothing to calibrate on: no good val pixel above the threshold
        ref = maps or raw_maps(model, read_rgb(train[: config.batch]), meta, device)
        top = max(float(m.max()) for m in ref)
        print(f"warning: {config.source.cat_root}: no defect image in val; thresholds set to the highest map value "
              "of the good images (no false positive on them)", file=sys.stderr)
        return replace(meta, map_threshold=top, image_threshold=top, map_scale=top * 2 or 1.0, val={"images": len(val)})
    pixels = np.concatenate([m.ravel() for m in maps])
    labels = np.concatenate([g.ravel() for g in masks])
    map_thr, pixel_f1 = best_f1_threshold(pixels, labels)
    scores = np.array([m.max() for m in maps])
    img_thr, image_f1 = best_f1_threshold(scores, defect)
    figures = {"images": len(val), "defect_images": int(defect.sum()), "pixel_f1": round(pixel_f1, 4),
               "image_f1": round(image_f1, 4),
               "pixel_auroc": round(float(roc_auc_score(labels, pixels)), 4) if 0 < labels.sum() < len(labels) else None,
               "image_auroc": round(float(roc_auc_score(defect, scores)), 4) if 0 < defect.sum() < len(defect) else None}
    return replace(meta, map_threshold=map_thr, image_threshold=img_thr, map_scale=float(pixels.max()) or 1.0, val=figures)


def train_anomaly(config: AnomalyTrainConfig) -> dict:
    """Fit, calibrate and write the model folder; returns anomaly.json's content plus timings."""
    import torch

    from defect_vision.devices import resolve_device

    t0 = time.perf_counter()
    cat, train, val = anomaly_images(config.source, config.splits)
    method, weights, label = resolve_method(config)
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    meta = AnomalyMeta(method, cat.name, config.image_size, None if method in WEIGHT_FREE else config.backbone,
                       label, config.base_width, train_images=len(train), image_hw=same_size(train))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # anomalib's own deprecation notices at import
        model = build_model(meta, weights)
    inputs = [config.source.cat_root] + ([weights] if weights else [])
    with atomic_dir(config.out, KIND, inputs, config.force) as folder:
        history = fit(model, meta, train, config, device)
        meta = calibrate(model, meta, val, train, config, device)
        save_model(folder, model.cpu(), meta)
    return {"meta": meta, "history": history, "val_images": len(val), "seconds": round(time.perf_counter() - t0, 1)}


def summary_line(result: dict, out: Path) -> str:
    m: AnomalyMeta = result["meta"]
    v = m.val
    return (f"train-anomaly: {m.method} on {m.train_images} good training images of {m.category} @ {m.image_size}px, "
            f"val ({result['val_images']} images): pixel AUROC {v.get('pixel_auroc')}, image AUROC "
            f"{v.get('image_auroc')}, pixel F1 {v.get('pixel_f1')} at map threshold {m.map_threshold:.4g} "
            f"({result['seconds']} s) -> {out}")
