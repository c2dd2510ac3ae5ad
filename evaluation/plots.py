"""Report figures (matplotlib Agg): PR curves per class, IoU histogram, worst-case overlay grid."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import cv2  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from pycocotools import mask as mask_utils  # noqa: E402

from converters.errors import DatasetError  # noqa: E402
from converters.mvtec import read_image  # noqa: E402
from evaluation.data import GtImage, Prediction, union_rle  # noqa: E402
from evaluation.mask_iou import ImageIoU  # noqa: E402


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


def worst_cases(images: list[ImageIoU], k: int) -> list[ImageIoU]:
    """The k worst images: defect images by lowest IoU, then good images by most false-positive pixels."""
    defect = sorted((im for im in images if im.iou is not None), key=lambda im: (im.iou, im.file_name))
    good_fp = sorted((im for im in images if im.is_good and im.fp_pixels), key=lambda im: (-im.fp_pixels, im.file_name))
    return (defect + good_fp)[:k]


def tint_and_outline(image: np.ndarray, pred: np.ndarray, gt: np.ndarray, thick: int) -> np.ndarray:
    """RGB copy of `image` with the predicted pixels tinted red and the ground truth outlined green."""
    out = image.astype(np.float32)
    out[pred] = 0.55 * out[pred] + 0.45 * np.array([255, 0, 0], np.float32)
    out = out.astype(np.uint8)
    contours, _ = cv2.findContours(gt.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, contours, -1, (0, 255, 0), thick)
    return out


def union_mask(rles: list[dict], height: int, width: int) -> np.ndarray:
    return mask_utils.decode(union_rle(rles, height, width)).astype(bool)


def overlay(image: np.ndarray, gt: GtImage, preds: list[Prediction], names: dict[int, str] | None = None) -> np.ndarray:
    """Predicted masks tinted red, GT outlines green, predicted boxes yellow with class name and score."""
    thick = max(1, round(max(gt.height, gt.width) / 256))
    out = tint_and_outline(image, union_mask([p.rle for p in preds], gt.height, gt.width),
                           union_mask([a["rle"] for a in gt.annotations], gt.height, gt.width), thick)
    for p in preds:
        x, y, w, h = (round(v) for v in p.bbox)
        cv2.rectangle(out, (x, y), (x + w - 1, y + h - 1), (255, 255, 0), thick)
        label = f"{(names or {}).get(p.category_id, p.category_id)} {p.score:.2f}"
        cv2.putText(out, label, (x, max(y - 3, 10 * thick)), cv2.FONT_HERSHEY_SIMPLEX, 0.35 * thick, (255, 255, 0), thick)
    return out


def overlay_grid(cases: list[ImageIoU], gt_images: dict[int, GtImage], preds: dict[int, list[Prediction]],
                 image_root: Path | None, path: Path, names: dict[int, str] | None = None, cols: int = 4) -> int:
    """Grid of worst cases; an image that cannot be read is skipped. Returns the number of panels drawn."""
    panels = []
    for case in cases:
        gt = gt_images[case.image_id]
        if image_root is None:
            break
        try:
            img = read_image(image_root / gt.file_name)
        except DatasetError:
            continue
        if img.shape[:2] != (gt.height, gt.width):
            continue
        title = f"{gt.file_name}\n" + (f"IoU {case.iou:.2f}" if case.iou is not None else f"good, {case.fp_pixels} FP px")
        panels.append((overlay(img, gt, preds.get(case.image_id, []), names), title))
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
