"""Report figures (matplotlib Agg): PR curves per class, IoU histogram, image-type confusion matrix, worst-case
overlay grid."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from defect_vision.coco import CocoDataset  # noqa: E402
from defect_vision.data.images import read_image  # noqa: E402
from defect_vision.errors import DatasetError  # noqa: E402
from defect_vision.evaluation.inputs import Predictions, of_image  # noqa: E402
from defect_vision.evaluation.mask_iou import ImageIoU  # noqa: E402
from defect_vision.evaluation.overlays import overlay  # noqa: E402


def pr_curves(curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]], path: Path) -> None:
    """One panel per IoU type ("bbox", "segm"), one line per class, at IoU 0.5."""
    fig, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 4), squeeze=False)
    for ax, (iou_type, per_class) in zip(axes[0], curves.items()):
        for name, (recall, precision) in per_class.items():
            ax.plot(recall, precision, label=name)
        ax.set(title=f"{iou_type} PR @ IoU 0.5", xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
        if per_class:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no ground truth", ha="center")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def iou_histogram(values: np.ndarray, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.hist(values, bins=np.linspace(0, 1, 21), color="tab:blue", edgecolor="white")
    mean = f", mean {values.mean():.3f}" if len(values) else ""
    ax.set(title=f"instance mask IoU (n={len(values)}{mean})", xlabel="IoU", ylabel="instances")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def confusion_matrix(classification: dict, path: Path) -> None:
    """The image-type confusion matrix of an `image_classification` block: counts, coloured by row share (recall)."""
    cm = classification["confusion_matrix"]
    labels, counts = cm["labels"], np.asarray(cm["counts"], float).reshape(len(cm["labels"]), len(cm["labels"]))
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    side = 2.6 + 0.55 * len(labels)
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, str(int(counts[i, j])), ha="center", va="center", fontsize=8,
                    color="white" if share[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    acc = classification.get("accuracy")
    ax.set(xlabel="predicted type", ylabel="true type",
           title=f"image type, accuracy {'n/a' if acc is None else f'{acc:.3f}'}")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true type")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def worst_cases(images: list[ImageIoU], k: int) -> list[ImageIoU]:
    """The k worst images: defect images by lowest IoU, then good images by most false-positive pixels."""
    defect = sorted((im for im in images if im.iou is not None), key=lambda im: (im.iou, im.file_name))
    good_fp = sorted((im for im in images if im.is_good and im.fp_pixels), key=lambda im: (-im.fp_pixels, im.file_name))
    return (defect + good_fp)[:k]


def overlay_grid(cases: list[ImageIoU], gt: CocoDataset, predictions: Predictions, path: Path, cols: int = 4) -> int:
    """Grid of worst cases; an image that cannot be read is skipped. Returns the number of panels drawn."""
    panels = []
    for case in cases:
        im = gt.image(case.image_id)
        if im.path is None:
            continue
        try:
            img = read_image(im.path)
        except DatasetError:
            continue
        if img.shape[:2] != (im.height, im.width):
            continue
        title = f"{im.file_name}\n" + (f"IoU {case.iou:.2f}" if case.iou is not None else f"good, {case.fp_pixels} FP px")
        panels.append((overlay(img, gt.detections[im.id], of_image(predictions, gt, im.id)), title))
    if not panels:
        return 0
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (img, title) in zip(axes.ravel(), panels):
        ax.imshow(img)
        ax.set_title(title, fontsize=8)
    fig.suptitle("worst cases (red: prediction, green: GT outline, yellow: predicted box)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return len(panels)
