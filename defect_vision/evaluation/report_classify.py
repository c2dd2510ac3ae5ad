"""The report's classifier-baseline section: the course reports' image classifier (`defect-vision classify`,
runs/<C>/classify/metrics.json) beside the pipeline's image-level defect type (eval/metrics.json's
`image_classification`, evaluation/image_types.py): test accuracy, per-type recall, and the classifier's confusion
matrix. A random-init classifier is flagged as a smoke run, in red, as the rest of the report does."""
from __future__ import annotations

import html
import json
from pathlib import Path

from defect_vision.run_folder import RunFolder

SECTION_ID = "classifier-baseline"


def _read(path: Path) -> dict | None:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _classifier(metrics: dict | None) -> dict | None:
    """The classify metrics, when they hold a square confusion matrix over their classes (else None)."""
    cm = (metrics or {}).get("confusion") or {}
    labels, counts = cm.get("labels"), cm.get("counts")
    if not (isinstance(labels, list) and isinstance(counts, list) and len(counts) == len(labels)
            and all(isinstance(r, list) and len(r) == len(labels) for r in counts)):
        return None
    return metrics


def classify_section(run: Path) -> str:
    """HTML of the section; "" when the run has no (readable) classify/metrics.json."""
    from defect_vision.evaluation.html_report import (  # shared helpers
        fmt,
        image_classification,
        pct,
        table,
    )

    rf = RunFolder(Path(run))
    clf = _classifier(_read(rf.stage("classify") / "metrics.json"))
    if clf is None:
        return ""
    e = html.escape
    pipe = image_classification(_read(rf.stage("eval") / "metrics.json"))
    labels = [str(x) for x in clf["confusion"]["labels"]]
    counts = clf["confusion"]["counts"]
    smoke = clf.get("weights") == "random-init"
    what = (f"{e(str(clf.get('model')))} ({e(str(clf.get('weights')))} start, {e(str(clf.get('loss', '')))}, "
            f"{fmt(clf.get('epochs'))} epochs, best epoch {fmt(clf.get('best_epoch'))} by val)")
    rows = [[f"classifier: {what}", fmt(clf.get("images")), pct(clf.get("accuracy")),
             pct(clf.get("balanced_accuracy"))]]
    if pipe is not None:
        recalls = [r for r in pipe["recall"].values() if r is not None]
        rows.append([f"pipeline: detections, {e(pipe['thresholds_used'])}", fmt(pipe["images"]),
                     pct(pipe["accuracy"]), pct(sum(recalls) / len(recalls) if recalls else None)])
    else:
        rows.append(["pipeline: no image-level figures (eval/metrics.json missing)", "", "n/a", "n/a"])
    types = labels + [t for t in (pipe["labels"] if pipe else []) if t not in labels]
    recall = clf.get("per_class_recall") or {}
    recall_rows = [[e(t), fmt(sum(counts[labels.index(t)])) if t in labels else "0",
                    pct(recall.get(t)), pct(pipe["recall"].get(t)) if pipe else "n/a"] for t in types]
    matrix = [[e(t), *(fmt(n) for n in row)] for t, row in zip(labels, counts)]
    banner = (f'<div class="banner smoke" id="{SECTION_ID}-smoke">SMOKE RUN — the classifier started from '
              "random weights (no torchvision ImageNet file in weights/): its accuracy shows that it runs and learns, "
              "not what the reports' pretrained model reaches.</div>" if smoke else "")
    return "".join([
        f'<h2 id="{SECTION_ID}">The course reports\' classifier as a baseline</h2>', banner,
        ("<p>The reports' whole-image classifier (torchvision transfer learning: Adam, cosine schedule, ImageNet "
         "normalisation, rotation + colour jitter), trained on the same train split and measured on the same test "
         "images as the pipeline, whose image-level type is the class of its highest-scoring detection "
         "(<i>good</i> when none). Balanced accuracy: the mean of the per-type recalls.</p>"),
        table(["image-level type", "test images", "accuracy", "balanced accuracy"], rows, f"{SECTION_ID}-accuracy"),
        table(["true type", "test images", "classifier recall", "pipeline recall"], recall_rows,
              f"{SECTION_ID}-recall"),
        "<p>Classifier confusion matrix (rows: true type, columns: predicted type):</p>",
        table(["true \\ predicted", *labels], matrix, f"{SECTION_ID}-confusion"),
    ])
