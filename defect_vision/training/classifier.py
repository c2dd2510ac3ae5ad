"""The course reports' image classifier as a baseline: a torchvision model fine-tuned to the image type (good +
defect types) on the pipeline's own split, best-by-val, measured on test.

`finetune_classifier(ClassifierTrainConfig(...))` writes <out>/best.pt (the best-by-val weights, classes, image size
and normalisation; models.classifier.load_classifier reads it), <out>/metrics.json (test accuracy, per-class recall,
the confusion matrix with its class order, the history) and <out>/confusion.png, all at once (a temporary folder
renamed at the end), and returns metrics.json's content. The command is `defect-vision classify`.
"""
from __future__ import annotations

import copy
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from defect_vision.devices import autocast, autocast_dtype, resolve_device
from defect_vision.io import atomic_dir, torch_save
from defect_vision.models.classifier import (
    CHECKPOINT_FORMAT,
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_classifier,
    default_weights,
    official_files,
)
from defect_vision.training.balanced_loss import DESCRIPTION as BALANCED
from defect_vision.training.balanced_loss import LogitAdjustedCrossEntropy
from defect_vision.training.classifier_config import ClassifierTrainConfig
from defect_vision.training.classifier_data import (
    AugmentedImages,
    ClassifierData,
    load_images,
    normalise,
    read_classifier_data,
)
from defect_vision.training.classifier_metrics import confusion_block, confusion_png

KIND = "classify"
RED, RESET = "\033[31;1m", "\033[0m"


def warn_random_init(message: str) -> None:
    """The smoke-run banner, in red where stderr is a terminal."""
    red = sys.stderr.isatty()
    line = "!" * 78
    print(f"\n{RED if red else ''}{line}\nWARNING: {message}\n{line}{RESET if red else ''}\n", file=sys.stderr)


def start_weights(config: ClassifierTrainConfig) -> Path | None:
    """The weights file to start from: --weights, else torchvision's official file in weights/; None: random init."""
    if config.from_scratch:
        return None
    return config.weights if config.weights is not None else default_weights(config.model)


@torch.no_grad()
def predict(model: torch.nn.Module, images: torch.Tensor, device: torch.device, batch: int,
            dtype: torch.dtype | None) -> torch.Tensor:
    """(N, K) float32 logits of uint8 images, in eval mode."""
    model.eval()
    out = []
    for i in range(0, len(images), batch):
        with autocast(device, dtype):
            out.append(model(normalise(images[i:i + batch].to(device))).float().cpu())
    return torch.cat(out) if out else torch.zeros((0, 0))


def val_figures(logits: torch.Tensor, targets: tuple[int, ...]) -> dict:
    """Plain cross-entropy and accuracy of val logits (None without val images)."""
    if not len(targets):
        return {"val_loss": None, "val_accuracy": None}
    y = torch.as_tensor(targets)
    return {"val_loss": float(F.cross_entropy(logits, y)),
            "val_accuracy": float((logits.argmax(1) == y).float().mean())}


def better(fig: dict, best: dict | None) -> bool:
    """Best-by-val: higher val accuracy, ties by lower val loss; without val images, the last epoch."""
    if best is None or fig["val_accuracy"] is None:
        return True
    return (fig["val_accuracy"], -fig["val_loss"]) > (best["val_accuracy"], -best["val_loss"])


def train(config: ClassifierTrainConfig, data: ClassifierData, model: torch.nn.Module, device: torch.device,
          images: dict[str, torch.Tensor]) -> tuple[dict, list[dict], dict]:
    """The epochs; (best state_dict, history, best epoch's figures)."""
    from tqdm import tqdm

    dtype = autocast_dtype(device)
    counts = data.counts("train")
    criterion = LogitAdjustedCrossEntropy(counts, config.tau if config.balanced_loss else 0.0).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    train_set = AugmentedImages(images["train"], data.splits["train"].targets, config.rotation, config.jitter)
    size = min(config.batch, len(train_set))
    loader = torch.utils.data.DataLoader(train_set, batch_size=size, shuffle=True,
                                         generator=torch.Generator().manual_seed(config.seed),
                                         drop_last=len(train_set) > size and len(train_set) % size == 1)  # BatchNorm
    history, best, best_state = [], None, None
    bar = tqdm(range(1, config.epochs + 1), desc=f"classify {config.model}", unit="epoch",
               disable=not config.progress or None)
    for epoch in bar:
        model.train()
        seen, loss_sum, correct = 0, 0.0, 0
        for x, y in loader:
            x, y = normalise(x.to(device)), y.to(device)
            with autocast(device, dtype):
                logits = model(x)
            loss = criterion(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            seen += len(y)
            loss_sum += float(loss.detach()) * len(y)
            correct += int((logits.argmax(1) == y).sum())
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        fig = {"epoch": epoch, "train_loss": loss_sum / max(seen, 1), "train_accuracy": correct / max(seen, 1),
               **val_figures(predict(model, images["val"], device, config.batch, dtype), data.splits["val"].targets),
               "lr": lr}
        if not math.isfinite(fig["train_loss"]):
            raise FloatingPointError(f"classify: the training loss is {fig['train_loss']} at epoch {epoch} "
                                     f"(--lr {config.lr} too high?)")
        history.append(fig)
        if better(fig, best):
            best, best_state = fig, copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
        bar.set_postfix(loss=f"{fig['train_loss']:.3f}", val_acc="n/a" if fig["val_accuracy"] is None
                        else f"{fig['val_accuracy']:.3f}")
    return best_state, history, best


def finetune_classifier(config: ClassifierTrainConfig) -> dict:
    """The whole stage; returns metrics.json's content. Bad input raises DatasetError before anything is written."""
    t0 = time.time()
    data = read_classifier_data(config.coco)
    device = resolve_device(config.device)
    weights_file = start_weights(config)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed % 2**32)
    with atomic_dir(config.out, KIND, [config.coco], config.force) as tmp:
        start = build_classifier(config.model, len(data.classes), weights_file, config.seed)
        if start.weights == "random-init":
            why = "--from-scratch" if config.from_scratch else f"no weights/{official_files(config.model)[0]}"
            warn_random_init(f"classify: {config.model} with RANDOM initial weights ({why}). SMOKE RUN: the "
                             "accuracy shows that the classifier runs and learns, not what the reports' ImageNet-"
                             "pretrained model reaches.")
        images = {s: load_images(data.splits[s], config.imgsz, config.progress) for s in data.splits}
        model = start.model.to(device)
        best_state, history, best = train(config, data, model, device, images)
        model.load_state_dict(best_state)
        logits = predict(model, images["test"], device, config.batch, autocast_dtype(device))
        truth = np.asarray(data.splits["test"].targets, int)
        predicted = logits.argmax(1).numpy() if len(truth) else np.zeros(0, int)
        block = confusion_block(truth, predicted, data.classes)
        probs = logits.softmax(1).numpy() if len(truth) else np.zeros((0, len(data.classes)))
        metrics = {
            "category": config.category,
            "model": config.model,
            "weights": start.weights,
            "weights_file": str(start.file) if start.file else None,
            "balanced_loss": bool(config.balanced_loss),
            "loss": f"{BALANCED}, tau {config.tau:g}" if config.balanced_loss else "cross-entropy",
            "classes": list(data.classes),
            **block,
            "train_counts": dict(zip(data.classes, data.counts("train").tolist())),
            "images_per_split": {s: len(data.splits[s]) for s in data.splits},
            "best_epoch": best["epoch"],
            "selected_by": ("val accuracy (ties: val loss)" if best["val_accuracy"] is not None
                            else "last epoch (no val images)"),
            "val_accuracy": best["val_accuracy"],
            "epochs": config.epochs,
            "settings": {"imgsz": config.imgsz, "batch": config.batch, "optimizer": "Adam", "lr": config.lr,
                         "schedule": "cosine", "rotation": config.rotation, "jitter": config.jitter,
                         "normalise": "imagenet", "device": str(device), "seed": config.seed},
            "coco": str(config.coco.resolve()),
            "history": history,
            "test_images": [{"file_name": f, "true": data.classes[t], "predicted": data.classes[int(p)],
                             "score": round(float(pr[int(p)]), 4)}
                            for f, t, p, pr in zip(data.splits["test"].file_names, truth, predicted, probs)],
            "seconds": round(time.time() - t0, 1),
        }
        torch_save({"format": CHECKPOINT_FORMAT, "model": config.model, "classes": list(data.classes),
                    "imgsz": config.imgsz, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
                    "weights": start.weights, "balanced_loss": bool(config.balanced_loss),
                    "state_dict": best_state}, tmp / "best.pt")
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
        balanced = ", balanced loss" if config.balanced_loss else ""
        confusion_png(block, tmp / "confusion.png",
                      f"{config.category or config.coco.name}: {config.model} ({start.weights}{balanced})")
    return metrics


def summary(metrics: dict, out: Path) -> str:
    """The one line a finished run prints."""
    acc = metrics["accuracy"]
    recall = ", ".join(f"{c} {'n/a' if r is None else f'{r:.2f}'}" for c, r in metrics["per_class_recall"].items())
    smoke = ": SMOKE RUN" if metrics["weights"] == "random-init" else ""
    return (f"classify: {metrics['model']} ({metrics['weights']}{smoke}), {metrics['loss']}, {metrics['epochs']} "
            f"epochs (best {metrics['best_epoch']}): test accuracy "
            f"{'n/a' if acc is None else f'{acc:.4f}'} on {metrics['images']} images; recall {recall} -> {out}")
