"""The classifier's test figures: accuracy, per-class recall and the confusion matrix (in the layout of the
evaluation's `image_classification` block: labels, rows = true type, columns = predicted), and its PNG."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def confusion_block(truth: np.ndarray, predicted: np.ndarray, classes: tuple[str, ...]) -> dict:
    """accuracy, per_class_recall (None for a class without test images), balanced_accuracy and `confusion`."""
    from sklearn.metrics import confusion_matrix

    k = len(classes)
    matrix = confusion_matrix(truth, predicted, labels=list(range(k))) if len(truth) else np.zeros((k, k), int)
    rows = matrix.sum(axis=1)
    recall = {c: (float(matrix[i, i] / rows[i]) if rows[i] else None) for i, c in enumerate(classes)}
    present = [r for r in recall.values() if r is not None]
    return {
        "accuracy": float(np.trace(matrix) / len(truth)) if len(truth) else None,
        "correct": int(np.trace(matrix)),
        "images": len(truth),
        "per_class_recall": recall,
        "balanced_accuracy": float(np.mean(present)) if present else None,
        "confusion": {"labels": list(classes), "rows": "true type", "columns": "predicted type",
                      "counts": matrix.astype(int).tolist()},
    }


def confusion_png(block: dict, path: Path, title: str) -> None:
    """The confusion matrix as a PNG (scikit-learn's ConfusionMatrixDisplay, counts)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    labels = block["confusion"]["labels"]
    side = 2.6 + 0.55 * len(labels)
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    ConfusionMatrixDisplay(np.asarray(block["confusion"]["counts"]), display_labels=labels).plot(
        ax=ax, cmap="Blues", xticks_rotation=45, colorbar=True)
    acc = block["accuracy"]
    ax.set(xlabel="predicted type", ylabel="true type",
           title=f"{title}\ntest accuracy {'n/a' if acc is None else f'{acc:.3f}'}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
