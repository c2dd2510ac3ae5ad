"""Figures of the experiments' results.json files (drawn by the experiments and by the HTML report): the seen /
unseen bars of `openvocab` and the learning curve of `curve`."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

SEEN_UNSEEN = (("zero_shot", "zero-shot (start model)", "tab:gray"), ("unseen", "unseen (trained without it)", "tab:orange"),
               ("seen", "seen (trained with it)", "tab:blue"))
CURVE_METRICS = (("detector_box_ap50", "detector box AP50"), ("sam_gt_box_mask_iou", "SAM mask IoU on GT boxes"),
                 ("end_to_end_mask_iou", "end-to-end mask IoU"))


def _value(x) -> float:
    return float("nan") if x is None else float(x)


def seen_unseen_bars(results: dict, path: Path) -> Path:
    """Per held-out class, box AP50 and mask IoU: zero-shot vs unseen vs seen (one panel per metric)."""
    rows = results.get("rows") or []
    names = [r["class"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(max(6, 1.6 * len(names) + 3) * 2 / 1.4, 3.8), squeeze=False)
    x = np.arange(len(names))
    for ax, (metric, title) in zip(axes[0], (("ap50", "box AP50"), ("mask_iou", "mask IoU (class-aware)"))):
        for i, (key, label, color) in enumerate(SEEN_UNSEEN):
            vals = [_value((r.get(key) or {}).get(metric)) for r in rows]
            bars = ax.bar(x + (i - 1) * 0.27, vals, 0.27, label=label, color=color)
            ax.bar_label(bars, labels=["n/a" if np.isnan(v) else f"{v:.2f}" for v in vals], fontsize=6)
        ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
        ax.set(title=f"{title} of the held-out class", ylim=(0, 1.02))
        ax.legend(fontsize=7)
    fig.suptitle(f"{results.get('category', '')}: seen / unseen defect names", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def learning_curve(results: dict, path: Path) -> Path:
    """Metric vs labelled images per class (k = 0 is zero-shot; "all" at the right), mean with the seed spread."""
    summary = results.get("summary") or {}
    fig, axes = plt.subplots(1, len(CURVE_METRICS), figsize=(4.2 * len(CURVE_METRICS), 3.6), squeeze=False)
    for ax, (metric, title) in zip(axes[0], CURVE_METRICS):
        points = summary.get(metric) or []
        labels = [str(p["k"]) for p in points]
        x = np.arange(len(points))
        mean = np.array([_value(p["mean"]) for p in points])
        lo, hi = np.array([_value(p["min"]) for p in points]), np.array([_value(p["max"]) for p in points])
        ax.fill_between(x, lo, hi, alpha=0.25, color="tab:blue", label="seed min-max")
        ax.plot(x, mean, "o-", color="tab:blue", label="mean over seeds")
        best = (results.get("smallest_k") or {}).get(metric)
        if best is not None and str(best) in labels:
            ax.axvline(labels.index(str(best)), color="tab:green", ls="--", label=f"smallest k within 90%: {best}")
        ax.set_xticks(x, labels)
        ax.set(title=title, xlabel="labelled defect images per class (k)", ylim=(0, 1.02))
        ax.legend(fontsize=7)
    fig.suptitle(f"{results.get('category', '')}: how many labelled images are enough", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
