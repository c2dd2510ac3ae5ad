"""report.md: the metrics as markdown tables."""
from __future__ import annotations


def _f(v) -> str:
    return "–" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def masks_note(counts: dict) -> str | None:
    """Where the mask figures come from when some predictions had no mask (box-only COCO results), else None."""
    n, total = counts.get("predictions_without_mask") or 0, counts.get("predictions") or 0
    if not n:
        return None
    return f"mask figures from boxes: {n}/{total} predictions are box-only (no segmentation), each box taken as its mask"


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.2f}%"


def image_type_lines(ic: dict | None) -> list[str]:
    """The image-level defect-type section: accuracy, recall per type, confusion matrix (rows true, columns predicted)."""
    if not ic:
        return []
    labels, counts = ic["confusion_matrix"]["labels"], ic["confusion_matrix"]["counts"]
    lines = ["", "## Image-level defect type", "",
             f"Accuracy **{_pct(ic['accuracy'])}** ({ic['correct']}/{ic['images']} images), {ic['thresholds_used']}. "
             f"Rule: {ic['rule']}.", "",
             "| true type | images | correct | recall |", "|---|---|---|---|"]
    lines += [f"| {name} | {c['images']} | {c['correct']} | {_pct(c['recall'])} |" for name, c in ic["per_class"].items()]
    lines += ["", "Confusion matrix (rows: true type, columns: predicted type):", "",
              "| true type | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(str(n) for n in row) + " |" for name, row in zip(labels, counts)]
    return lines


def render(metrics: dict, plots: list[str]) -> str:
    mi, coco, px = metrics["mask_iou"], metrics["coco"], metrics["pixel"]
    lines = [
        f"# Evaluation: {metrics['inputs']['pred']}",
        "",
        f"Ground truth `{metrics['inputs']['gt']}`: {metrics['counts']['images']} images "
        f"({metrics['counts']['defect_images']} with defects, {metrics['counts']['good_images']} good), "
        f"{metrics['counts']['gt_instances']} instances; {metrics['counts']['predictions']} predictions.",
        "",
        *([f"**Note: {note}.**", ""] if (note := masks_note(metrics["counts"])) else []),
        "## Summary",
        "",
        "| metric | value |",
        "|---|---|",
        f"| mean instance mask IoU | {_f(mi['mean_instance'])} |",
        f"| mean image mask IoU | {_f(mi['mean_image'])} |",
        f"| good images with a false positive | {mi['good_fp_images']} / {mi['good_images']} |",
        f"| box AP / AP50 / AP75 | {_f(coco['bbox']['AP'])} / {_f(coco['bbox']['AP50'])} / {_f(coco['bbox']['AP75'])} |",
        f"| mask AP / AP50 / AP75 | {_f(coco['segm']['AP'])} / {_f(coco['segm']['AP50'])} / {_f(coco['segm']['AP75'])} |",
        f"| pixel AUROC | {_f(px['auroc'])} |",
        f"| AUPRO (FPR ≤ 0.3) | {_f(px['aupro'])} |",
        f"| pixel max-F1 | {_f(px['max_f1'])} |",
        f"| region max-F1 (IoU ≥ 0.6) | {_f(px['region_max_f1'])} |",
        f"| image AUROC | {_f(metrics['image_auroc'])} |",
        *([f"| image-level defect-type accuracy | {_f(ic['accuracy'])} |"] if (ic := metrics.get("image_classification"))
          else []),
        "",
        "## Per class",
        "",
        "| class | instances | mean instance IoU | mean image IoU | box AP50 | mask AP | mask AP50 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, c in mi["per_class"].items():
        b, s = coco["bbox"]["per_class"].get(name, {}), coco["segm"]["per_class"].get(name, {})
        lines.append(f"| {name} | {c['instances']} | {_f(c['mean_instance'])} | {_f(c['mean_image'])} | "
                     f"{_f(b.get('AP50'))} | {_f(s.get('AP'))} | {_f(s.get('AP50'))} |")
    lines += image_type_lines(metrics.get("image_classification"))
    cal = metrics.get("calibrated")
    if cal:
        lines += ["", "## With the thresholds calibrated on val", "",
                  "| class | threshold | test precision | test recall | test F1 |", "|---|---|---|---|---|"]
        for name, c in cal["per_class"].items():
            lines.append(f"| {name} | {_f(c['threshold'])} | {_f(c['precision'])} | {_f(c['recall'])} | {_f(c['f1'])} |")
        lines += ["", f"Mean instance IoU {_f(cal['mask_iou']['mean_instance'])}, mean image IoU "
                  f"{_f(cal['mask_iou']['mean_image'])}, good images with a false positive "
                  f"{cal['mask_iou']['good_fp_images']} / {cal['mask_iou']['good_images']}."]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    lines += ["", "Instance IoU: each GT instance is matched one-to-one (Hungarian, class-agnostic) to a predicted "
              "mask; unmatched instances count 0. Pixel metrics use the score map (pixel = max score of the "
              "predicted masks covering it, 0 elsewhere). mAP is pycocotools' COCOeval.", ""]
    return "\n".join(lines)
