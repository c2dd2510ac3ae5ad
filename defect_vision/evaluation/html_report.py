"""One HTML page per run: every stage's metrics, the weights used, and the best and worst test images.

Reads `runs/<C>/{yolo_world/best.json, sam/best.json, eval/metrics.json, eval_gt_boxes/metrics.json,
predict/predictions.json, pipeline.json, openvocab/results.json, curve/results.json}` (whatever
exists) and writes `runs/<C>/report/` with
`index.html`, `report.json` (the numbers on the page), `thumbs/*.png` and `plots/*.png`, as a whole
(io.atomic_dir, kind "report"). Smoke runs (random-init weights) are labelled as such on the page: their
numbers test the plumbing only. The image-level defect-type accuracy of eval/metrics.json is shown beside the
seed reports' (capsule 75.0%, wood 76.92%), with its confusion matrix.
"""
from __future__ import annotations

import html
import json
import math
import shutil
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from defect_vision.coco import CocoDataset, load_coco
from defect_vision.data.images import read_image
from defect_vision.errors import ConfigError, DatasetError
from defect_vision.evaluation.anomaly_metrics import load_named
from defect_vision.evaluation.inputs import Predictions, of_image
from defect_vision.evaluation.overlays import tint_and_outline, union_mask
from defect_vision.evaluation.report_anomaly import anomaly_section
from defect_vision.evaluation.report_classify import classify_section
from defect_vision.evaluation.report_md import masks_note
from defect_vision.evaluation.report_selection import selection_section
from defect_vision.evaluation.report_self_training import self_training_section
from defect_vision.evaluation.thresholds import apply_thresholds
from defect_vision.io import atomic_dir, read_json
from defect_vision.run_folder import MASK_SOURCES, RunFolder
from defect_vision.thresholds import ThresholdsFile

THUMB_SIDE = 256
KIND = "report"  # the marker kind of an output folder
CONFUSION_PNG = "confusion_matrix.png"  # evaluate's image-type plot (drawn here from metrics.json when absent)


@dataclass(frozen=True)
class SeedReference:
    """The image-level accuracy of a course report this project grew from (whole-image classifiers)."""
    category: str
    accuracy: float
    shown: str  # as the report wrote it
    model: str


SEED_REFERENCES = (SeedReference("capsule", 0.75, "75.0%", "EfficientNet_v2_l at 512 px (best test accuracy)"),
                   SeedReference("wood", 0.7692, "76.92%", "ResNet18 with layer4 unfrozen"))


@dataclass
class ImageScore:
    """Binary defect-mask IoU of one test image (1.0 for a good image with no prediction)."""
    image_id: int
    file_name: str
    iou: float
    n_gt: int
    n_pred: int
    thumb: str = ""


@dataclass
class RunReport:
    category: str
    run: str
    weights: dict[str, str] = field(default_factory=dict)
    smoke: bool = False
    detector: dict[str, dict | None] = field(default_factory=dict)
    sam_finetune: dict | None = None
    segmentation: dict[str, dict | None] = field(default_factory=dict)
    per_class: list[dict] = field(default_factory=list)
    image_classification: dict | None = None  # eval/metrics.json's image-level defect type (accuracy, recall, matrix)
    best: list[ImageScore] = field(default_factory=list)
    worst: list[ImageScore] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)
    thumb_thresholds: str | None = None
    settings: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # e.g. which mask figures come from boxes
    missing: list[str] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)  # the files read
    openvocab: dict | None = None  # openvocab/results.json: seen / unseen per held-out class (experiment_section)
    curve: dict | None = None  # curve/results.json: metric vs labelled images per class
    mask_sources: list[dict] = field(default_factory=list)  # per predict --masks source (a YOLOE -seg detector)


def read_optional_json(path: Path, missing: list[str], read: list[str]) -> dict | list | None:
    """Parsed JSON (its path recorded in `read`), or None (recorded in `missing`) when the file is absent;
    DatasetError when unreadable."""
    if not path.is_file():
        missing.append(str(path))
        return None
    read.append(str(path))
    return read_json(path)


def read_thresholds(path: Path) -> tuple[dict[str, float], float]:
    """(class name -> threshold, default) of a thresholds json (default 0: classes not listed keep everything)."""
    file = ThresholdsFile.load(path)
    return file.by_name, file.default if file.default is not None else 0.0


def dig(d, *keys):
    """d[k0][k1]... or None when any level is missing."""
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def number(x) -> float | None:
    """A finite float, else None (NaN, None and non-numbers all show as n/a)."""
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def segmentation_row(metrics: dict | None) -> dict | None:
    """The numbers one evaluation (metrics.json) contributes to the main table."""
    if metrics is None:
        return None
    return {
        "mask_iou_instance": number(dig(metrics, "mask_iou", "mean_instance")),
        "mask_iou_image": number(dig(metrics, "mask_iou", "mean_image")),
        "bbox_AP": number(dig(metrics, "coco", "bbox", "AP")),
        "bbox_AP50": number(dig(metrics, "coco", "bbox", "AP50")),
        "segm_AP": number(dig(metrics, "coco", "segm", "AP")),
        "segm_AP50": number(dig(metrics, "coco", "segm", "AP50")),
        "pixel_auroc": number(dig(metrics, "pixel", "auroc")),
        "aupro": number(dig(metrics, "pixel", "aupro")),
        "max_f1": number(dig(metrics, "pixel", "max_f1")),
        "region_max_f1": number(dig(metrics, "pixel", "region_max_f1")),
        "image_auroc": number(metrics.get("image_auroc")),
        "mask_iou_calibrated": number(dig(metrics, "calibrated", "mask_iou", "mean_instance")),
        "good_fp_images": dig(metrics, "mask_iou", "good_fp_images"),
    }


def image_classification(metrics: dict | None) -> dict | None:
    """The image-level defect-type figures of an evaluation (metrics.json), None when it has none."""
    ic = dig(metrics, "image_classification")
    labels, counts = dig(ic, "confusion_matrix", "labels"), dig(ic, "confusion_matrix", "counts")
    square = isinstance(labels, list) and isinstance(counts, list) and len(counts) == len(labels) and all(
        isinstance(row, list) and len(row) == len(labels) and all(isinstance(n, int) for n in row) for row in counts)
    if not square:
        return None
    return {"accuracy": number(ic.get("accuracy")), "correct": ic.get("correct"), "images": ic.get("images"),
            "recall": {str(k): number(dig(v, "recall")) for k, v in (ic.get("per_class") or {}).items()},
            "labels": [str(x) for x in labels], "counts": counts, "thresholds_used": str(ic.get("thresholds_used", "")),
            "plot": None}


def detector_row(metrics: dict | None) -> dict | None:
    if metrics is None:
        return None
    return {"map50": number(metrics.get("map50")), "map50_95": number(metrics.get("map50_95"))}


def per_class_rows(det: dict | None, seg: dict | None) -> list[dict]:
    """One row per defect class: fine-tuned detector AP50 and mask IoU / AP of the pipeline."""
    sources = {  # column -> (table {class: number | {key: number}}, keys to take from a dict, in order)
        "det_map50": (dig(det, "metrics", "fine_tuned", "per_class"), ("map50", "AP50", "ap50")),
        "mask_iou": (dig(seg, "mask_iou", "per_class"), ("mean_instance", "mean_image")),
        "bbox_AP": (dig(seg, "coco", "bbox", "per_class"), ("AP",)),
        "segm_AP": (dig(seg, "coco", "segm", "per_class"), ("AP",)),
    }
    rows: dict[str, dict] = defaultdict(dict)
    for col, (table, keys) in sources.items():
        if not isinstance(table, dict):
            continue
        for name, value in table.items():
            if isinstance(value, dict):
                value = next((value[k] for k in keys if k in value), None)
            rows[name][col] = number(value)
    return [{"class": name, **vals} for name, vals in sorted(rows.items())]


def score_images(gt: CocoDataset, predictions: Predictions) -> tuple[list[ImageScore], dict[int, np.ndarray], dict[int, np.ndarray]]:
    """Per test image: the IoU of the union of its predicted masks with the union of its GT masks, and both unions."""
    scores, gts, pms = [], {}, {}
    for im in gt.images:
        truth, pred = gt.detections[im.id], of_image(predictions, gt, im.id)
        g, p = union_mask(truth, im.height, im.width), union_mask(pred, im.height, im.width)
        union = np.logical_or(g, p).sum()
        iou = 1.0 if union == 0 else float(np.logical_and(g, p).sum() / union)
        scores.append(ImageScore(im.id, im.file_name, iou, len(truth), len(pred)))
        gts[im.id], pms[im.id] = g, p
    return scores, gts, pms


def pick_best_worst(scores: list[ImageScore], k: int) -> tuple[list[ImageScore], list[ImageScore]]:
    """Best: highest IoU, defect images first on ties; worst: lowest IoU among the rest."""
    best = sorted(scores, key=lambda s: (-s.iou, s.n_gt == 0, s.file_name))[:k]
    chosen = {s.image_id for s in best}
    worst = sorted((s for s in scores if s.image_id not in chosen), key=lambda s: (s.iou, s.n_gt == 0, s.file_name))[:k]
    return best, worst


def draw_thumb(image: np.ndarray | None, gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """RGB thumbnail: prediction tinted red, ground truth outlined green (as in evaluation's worst-case grid)."""
    if image is None:
        image = np.full((*gt.shape, 3), 128, np.uint8)
    out = tint_and_outline(image, pred, gt, max(1, round(max(gt.shape) / 200)))
    scale = THUMB_SIDE / max(out.shape[:2])
    if scale < 1:
        out = cv2.resize(out, (round(out.shape[1] * scale), round(out.shape[0] * scale)), interpolation=cv2.INTER_AREA)
    return out


def collect(run: Path, gt_path: Path | None, k: int) -> tuple[RunReport, dict]:
    """Everything the page shows, plus what the thumbnails need (the GT dataset, both masks per image)."""
    rf = RunFolder(Path(run))
    missing: list[str] = []
    read: list[str] = []
    pipeline = read_optional_json(run / "pipeline.json", [], read)  # optional: written by scripts/run_pipeline.sh
    pipeline = pipeline if isinstance(pipeline, dict) else {}
    det = read_optional_json(rf.detector_dir / "best.json", missing, read)
    sam = read_optional_json(rf.sam_dir / "best.json", missing, read)
    ev = read_optional_json(rf.stage("eval") / "metrics.json", missing, read)
    ev_gt = read_optional_json(run / "eval_gt_boxes" / "metrics.json", missing, read)
    rep = RunReport(category=pipeline.get("category") or run.name, run=str(run))
    rep.settings = pipeline.get("settings") or {}
    rep.seconds = pipeline.get("seconds") or {}
    rep.weights = {"detector": (det or {}).get("weights", "unknown"), "sam": (sam or {}).get("weights", "unknown")}
    rep.smoke = any(w == "random-init" for w in rep.weights.values())
    rep.weights["detector_family"] = ({"yoloe": "YOLOE"}.get((det or {}).get("family"), "YOLO-World")
                                      + (" -seg" if (det or {}).get("segment") else ""))
    rep.detector = {"zero_shot": detector_row(dig(det, "metrics", "zero_shot")),
                    "fine_tuned": detector_row(dig(det, "metrics", "fine_tuned"))}
    if sam is not None:
        rep.sam_finetune = {k2: sam.get(k2) for k2 in ("model_type", "epochs", "val_iou_start", "val_iou_best")}
        if det is not None:
            rep.weights["detector_text_encoder"] = str(det.get("text_encoder", "unknown"))
        rep.weights["sam_model_type"] = str(sam.get("model_type", "unknown"))
    rep.segmentation = {"detected_boxes": segmentation_row(ev), "gt_boxes": segmentation_row(ev_gt)}
    for label, metrics in (("SAM on detected boxes", ev), ("SAM on ground-truth boxes", ev_gt)):
        note = masks_note(dig(metrics, "counts") or {})
        if note:
            rep.notes.append(f"{label}: {note}")
    rep.per_class = per_class_rows(det, ev)
    rep.image_classification = image_classification(ev)
    rep.plots = sorted(p.name for p in rf.stage("eval").glob("*.png")) if rf.stage("eval").is_dir() else []
    read += [str(rf.stage("eval") / p) for p in rep.plots]

    gt_path = gt_path or (Path(pipeline["gt_test"]) if pipeline.get("gt_test") else None)
    images: dict = {}
    pred_path = rf.stage("predict") / "predictions.json"
    if gt_path is None:
        missing.append("test ground truth (pass --gt instances_test.json)")
    elif not pred_path.is_file():
        missing.append(str(pred_path))
    elif not Path(gt_path).is_file():
        missing.append(str(gt_path))
    else:
        gt = load_coco(Path(gt_path))
        predictions, _ = load_named(pred_path, gt)  # a predict --anomaly run: its named detections
        read += [str(gt_path), str(pred_path)]
        th_path = next((q for q in (rf.stage("eval") / "thresholds.json", rf.thresholds) if q.is_file()), None)
        if th_path is not None:
            predictions = apply_thresholds(predictions, *read_thresholds(th_path))
            rep.thumb_thresholds = str(th_path)
            read.append(str(th_path))
        scores, gts, pms = score_images(gt, predictions)
        rep.best, rep.worst = pick_best_worst(scores, k)
        images = {"dataset": gt, "gt": gts, "pred": pms}
    rep.openvocab = openvocab_summary(read_optional_json(run / "openvocab" / "results.json", [], read))
    rep.curve = curve_summary(read_optional_json(run / "curve" / "results.json", [], read))
    rep.mask_sources = mask_source_rows(rf, read)
    rep.missing, rep.inputs = missing, read
    return rep, images


MASK_SOURCE_LABELS = {"sam": "SAM on the detected boxes (--masks sam)",
                      "detector": "the detector's own masks, no SAM (--masks detector)",
                      "refine": "SAM with the detector's mask as its prompt (--masks refine)"}


def mask_source_rows(rf: RunFolder, read: list[str]) -> list[dict]:
    """One row per mask source evaluated on the test split (eval_masks/metrics.json and the seconds per image of
    predict_masks/summary.json); [] unless a source besides SAM ran (a YOLOE -seg detector in the pipeline)."""
    found = [s for s in MASK_SOURCES if (rf.eval_masks(s) / "metrics.json").is_file()]
    if found == [] or found == ["sam"]:
        return []
    rows = []
    for source in found:
        metrics = read_optional_json(rf.eval_masks(source) / "metrics.json", [], read)
        summary = read_optional_json(rf.predict_masks(source) / "summary.json", [], read) or {}
        wall, images = number(dig(summary, "timings_s", "wall")), summary.get("images")
        seg = segmentation_row(metrics) or {}
        rows.append({"source": source, **{k: seg.get(k) for k in ("mask_iou_instance", "mask_iou_calibrated",
                                                                   "segm_AP", "segm_AP50", "pixel_auroc", "aupro")},
                     "seconds_per_image": wall / images if wall is not None and isinstance(images, int) and images else None,
                     "sam_encoder_calls": summary.get("sam_encoder_calls")})
    return rows


def openvocab_summary(results: dict | None) -> dict | None:
    """What the page shows of openvocab/results.json (None when absent or without rows)."""
    if not isinstance(results, dict) or not isinstance(results.get("rows"), list):
        return None
    keep = ("category", "weights", "text_encoder", "held_out_images", "mask_source", "settings", "rows")
    return {**{k: results.get(k) for k in keep}, "detector": detector_label(results), "plot": None}


def curve_summary(results: dict | None) -> dict | None:
    """What the page shows of curve/results.json (None when absent or without a summary)."""
    if not isinstance(results, dict) or not isinstance(results.get("summary"), dict):
        return None
    keep = ("category", "weights", "sam_weights", "shots", "seeds", "target", "subsets", "settings", "summary",
            "smallest_k")
    return {**{k: results.get(k) for k in keep}, "detector": detector_label(results), "plot": None}


def detector_label(results: dict) -> str:
    """The detector family an experiment fine-tuned ("YOLOE -seg", "YOLO-World"; results.json's detector.label),
    YOLO-World for results written before it was recorded (only YOLO-World ran then)."""
    return str((results.get("detector") or {}).get("label") or "YOLO-World")


def fmt(x, digits: int = 3) -> str:
    if isinstance(x, (int, np.integer)) and not isinstance(x, bool):
        return str(x)
    x = number(x)
    return "n/a" if x is None else f"{x:.{digits}f}"


def table(headers: list[str], rows: list[list[str]], table_id: str) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


SEG_COLUMNS = [("mask_iou_instance", "mask IoU (instance)"), ("mask_iou_image", "mask IoU (image)"),
               ("mask_iou_calibrated", "mask IoU at val thresholds"),
               ("bbox_AP", "box AP"), ("bbox_AP50", "box AP50"), ("segm_AP", "mask AP"), ("segm_AP50", "mask AP50"),
               ("pixel_auroc", "pixel AUROC"), ("aupro", "AUPRO"), ("max_f1", "max-F1"),
               ("region_max_f1", "region max-F1"), ("image_auroc", "image AUROC")]

CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}th,td{border:1px solid #bbb;padding:.3em .6em;text-align:right}
th:first-child,td:first-child{text-align:left}thead{background:#eee}
.banner{padding:1em;border-radius:6px;margin:1em 0;font-weight:600}
.smoke{background:#fde2e1;border:3px solid #c0392b;color:#7b1c13}.official{background:#e3f4e1;border:2px solid #2e7d32}
.custom{background:#fff4d6;border:2px solid #b7791f}
figure{display:inline-block;margin:.4em;text-align:center;font-size:.85em}figure img{display:block;border:1px solid #999}
.missing{color:#a66}"""


def pct(x) -> str:
    x = number(x)
    return "n/a" if x is None else f"{100 * x:.2f}%"


def image_type_section(rep: RunReport) -> str:
    """This run's image-level defect-type accuracy beside the seed reports' (whole-image classifiers), recall per
    true type and the confusion matrix plot."""
    ic, e = rep.image_classification, html.escape
    if ic is None:
        return ""
    rows = [[f"this run: detections, {e(ic['thresholds_used'])}", e(rep.category), fmt(ic["images"]), pct(ic["accuracy"])]]
    for ref in SEED_REFERENCES:
        same = " (same category)" if ref.category == rep.category else ""
        rows.append([f"seed report: {e(ref.model)}{same}", e(ref.category), "", ref.shown])
    recall = [[e(name), fmt(sum(row)), pct(ic["recall"].get(name))] for name, row in zip(ic["labels"], ic["counts"])]
    plot = (f'<figure><img src="{e(ic["plot"])}" alt="image-type confusion matrix" width="400">'
            f"<figcaption>image-type confusion matrix (rows: true type, columns: predicted)</figcaption></figure>"
            if ic["plot"] else "")
    return "".join([
        "<h2>Image-level defect type (what the seed reports measured)</h2>",
        "<p>Predicted type of a test image: the class of its highest-scoring detection at the thresholds, "
        "<i>good</i> when none. The seed reports classified whole images into good + defect types; their test "
        "accuracies are reference numbers, comparable only on the same category.</p>",
        table(["image classifier", "category", "test images", "accuracy"], rows, "image-classification"),
        table(["true type", "images", "recall"], recall, "image-type-recall"),
        plot,
    ])


def openvocab_section(rep: RunReport) -> str:
    """The seen / unseen table: per held-out class, box AP50 and mask IoU of its name for the start model
    (zero-shot), the model fine-tuned without it (unseen) and the model fine-tuned with it (seen)."""
    ov, e = rep.openvocab, html.escape
    if ov is None:
        return ""
    rows = [[e(str(r.get("class"))), *(fmt(dig(r, key, m)) for key in ("zero_shot", "unseen", "seen")
                                       for m in ("ap50", "mask_iou"))] for r in ov["rows"]]
    head = ["held-out class"] + [f"{who} {m}" for who in ("zero-shot", "unseen", "seen") for m in ("box AP50", "mask IoU")]
    plot = (f'<figure><img src="{e(ov["plot"])}" alt="seen / unseen" width="800"><figcaption>box AP50 and mask IoU '
            f"of each held-out class: zero-shot, unseen, seen</figcaption></figure>" if ov["plot"] else "")
    return "".join([
        f"<h2>Open vocabulary: seen / unseen defect names (leave-one-defect-out, {e(ov['detector'])})</h2>",
        f"<p>Detector: <b id=openvocab-detector>{e(ov['detector'])}</b>. For each class k: fine-tuned on every "
        f"other class, k's images {e(str(ov.get('held_out_images')))}; "
        f"detected on the test split with the full vocabulary, k's name included. Weights: "
        f"{e(str(ov.get('weights')))}; text encoder: {e(str(ov.get('text_encoder')))}; masks: "
        f"{e(str(ov.get('mask_source')))}.</p>",
        table(head, rows, "openvocab"), plot,
    ])


def mask_sources_section(rep: RunReport) -> str:
    """The mask sources side by side on the test split (the same detections): SAM, the detector's own masks, SAM
    refining them; mask quality against seconds per image, so a user sees whether SAM earns its cost."""
    if not rep.mask_sources:
        return ""
    e = html.escape
    cols = [("mask_iou_instance", "mask IoU (instance)"), ("mask_iou_calibrated", "mask IoU at val thresholds"),
            ("segm_AP", "mask AP"), ("segm_AP50", "mask AP50"), ("pixel_auroc", "pixel AUROC"), ("aupro", "AUPRO")]
    rows = [[e(MASK_SOURCE_LABELS.get(r["source"], r["source"])), *(fmt(r[k]) for k, _ in cols),
             fmt(r["seconds_per_image"], 4), fmt(r["sam_encoder_calls"])] for r in rep.mask_sources]
    return "".join([
        "<h2>Mask sources on the test split: does SAM earn its cost?</h2>",
        "<p>The same detections (a YOLOE -seg detector), each with its masks from another source; seconds per image "
        "are the whole prediction's (detector included, model loading excluded), from each run's summary.json.</p>",
        table(["masks", *(h for _, h in cols), "seconds per image", "SAM encoder runs"], rows, "mask-sources"),
    ])


def curve_section(rep: RunReport) -> str:
    """The learning curve: per k (labelled defect images per class) the mean and seed range of each metric, and
    the smallest k within the target of 'all'."""
    cv, e = rep.curve, html.escape
    if cv is None:
        return ""
    from defect_vision.evaluation.experiment_plots import CURVE_METRICS

    ks = [p["k"] for p in (cv["summary"].get(CURVE_METRICS[0][0]) or [])]
    rows = []
    for metric, label in CURVE_METRICS:
        points = {str(p["k"]): p for p in cv["summary"].get(metric) or []}
        cells = [(f"{fmt(points[str(k)]['mean'])} [{fmt(points[str(k)]['min'])}-{fmt(points[str(k)]['max'])}]"
                  if str(k) in points and points[str(k)]["n"] > 1 else fmt((points.get(str(k)) or {}).get("mean")))
                 for k in ks]
        best = (cv.get("smallest_k") or {}).get(metric)
        rows.append([e(label), *cells, "n/a (all is 0)" if best is None else e(str(best))])
    target = number(cv.get("target")) or 0.9
    plot = (f'<figure><img src="{e(cv["plot"])}" alt="learning curve" width="900"><figcaption>metric vs labelled '
            f"images per class, mean and seed range</figcaption></figure>" if cv["plot"] else "")
    return "".join([
        f"<h2>How many labelled images are enough (few-shot learning curve, {e(cv['detector'])})</h2>",
        f"<p>Detector: <b id=curve-detector>{e(cv['detector'])}</b>. k = labelled defect images per class "
        f"(0: zero-shot). {e(str(cv.get('subsets')))}. Seeds "
        f"{e(str(cv.get('seeds')))}; weights: {e(str(cv.get('weights')))}. Cells: mean [min-max over seeds].</p>",
        table(["metric", *(f"k = {k}" for k in ks), f"smallest k within {target:.0%} of all"], rows, "curve"), plot,
    ])


def render(rep: RunReport) -> str:
    e = html.escape
    w = rep.weights
    if rep.smoke:
        banner = (f'<div id="weights" class="banner smoke">SMOKE RUN — weights: detector {e(w["detector"])}, '
                  f'SAM {e(w["sam"])}. Random-initialised models built from config: these numbers only show that '
                  f'every stage runs end to end. They say nothing about model quality. Put the official weights in '
                  f'weights/ (scripts/download_weights.sh) for real numbers.</div>')
    elif all(w[k] == "official" for k in ("detector", "sam")):
        banner = (f'<div id="weights" class="banner official">Official pretrained weights, fine-tuned: '
                  f'detector {e(w["detector"])}, SAM {e(w["sam"])}.</div>')
    else:
        banner = (f'<div id="weights" class="banner custom">Start weights not (all) the official release files: '
                  f'detector {e(w["detector"])}, SAM {e(w["sam"])} (see the stages\' best.json for the files).</div>')
    details = ", ".join(f"{e(k)}: {e(str(v))}" for k, v in w.items())
    det_rows = [[label, fmt(dig(rep.detector, key, "map50")), fmt(dig(rep.detector, key, "map50_95"))]
                if rep.detector.get(key) else [label] + ["not run" + (" (random-init: nothing to measure)"
                                                                      if rep.smoke and key == "zero_shot" else "")] * 2
                for key, label in (("zero_shot", "zero-shot (prompts only)"), ("fine_tuned", "fine-tuned"))]
    seg_rows = []
    for key, label in (("gt_boxes", "SAM on ground-truth boxes"), ("detected_boxes", "SAM on detected boxes (pipeline)")):
        row = rep.segmentation.get(key)
        seg_rows.append([label] + ([fmt(row[c]) for c, _ in SEG_COLUMNS] if row else ["missing"] * len(SEG_COLUMNS)))
    sam = rep.sam_finetune
    sam_rows = [[e(str(sam.get("model_type"))), fmt(sam.get("epochs")), fmt(sam.get("val_iou_start")),
                 fmt(sam.get("val_iou_best"))]] if sam else [["missing", "", "", ""]]
    pc_rows = [[e(r["class"]), fmt(r.get("det_map50")), fmt(r.get("mask_iou")), fmt(r.get("bbox_AP")),
                fmt(r.get("segm_AP"))] for r in rep.per_class]

    def figures(items: list[ImageScore]) -> str:
        return "".join(f'<figure><img src="{e(s.thumb)}" alt="{e(s.file_name)}" width="{THUMB_SIDE}">'
                       f'<figcaption>{e(s.file_name)}<br>IoU {s.iou:.3f} · {s.n_gt} GT · {s.n_pred} pred</figcaption></figure>'
                       for s in items) or "<p>no test images scored</p>"

    parts = [
        f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>defect-vision report: {e(rep.category)}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>defect-vision report: {e(rep.category)}</h1>",
        banner, f"<p>Weights: {details}. Run folder: <code>{e(rep.run)}</code>.</p>",
        (f"<p id=settings>Settings: {e(', '.join(f'{k} {v}' for k, v in rep.settings.items()))}. Stage times (s): "
         f"{e(', '.join(f'{k} {v}' for k, v in rep.seconds.items()))}.</p>" if rep.settings else ""),
        f"<h2>Detector ({e(rep.weights.get('detector_family', 'YOLO-World'))}): zero-shot vs fine-tuned, validation split</h2>",
        table(["detector", "mAP50", "mAP50-95"], det_rows, "detector"),
        "<h2>Segmentation on the test split: SAM on ground-truth boxes vs on detected boxes</h2>",
        table(["boxes"] + [h for _, h in SEG_COLUMNS], seg_rows, "segmentation"),
        '<p id="gt-box-note">On ground-truth boxes the boxes are the answer: box AP is 1 and image AUROC is 1 (only '
        "defect images get a box) by construction. That row is SAM's upper bound; compare its mask columns.</p>",
        "".join(f'<p class="mask-note"><b>Note</b>: {e(n)}.</p>' for n in rep.notes),
        "<h2>SAM fine-tune (validation mask IoU)</h2>",
        table(["model type", "epochs", "IoU before", "IoU best"], sam_rows, "sam-finetune"),
        "<h2>Per class (pipeline on detected boxes)</h2>",
        table(["class", "detector AP50", "mask IoU", "box AP", "mask AP"], pc_rows, "per-class") if pc_rows
        else "<p>no per-class numbers</p>",
        image_type_section(rep),
        classify_section(Path(rep.run)),
        anomaly_section(Path(rep.run)),
        mask_sources_section(rep),
        openvocab_section(rep),
        curve_section(rep),
        selection_section(Path(rep.run)),
        self_training_section(Path(rep.run)),
        "<h2>Best test images</h2><p>Red: predicted masks"
        + (f" at the per-class thresholds calibrated on val (<code>{e(rep.thumb_thresholds)}</code>)" if rep.thumb_thresholds
           else " (all predictions)") + ". Green outline: ground truth. IoU: defect pixels, predicted vs true.</p>",
        f'<div id="best">{figures(rep.best)}</div>',
        "<h2>Worst test images</h2>", f'<div id="worst">{figures(rep.worst)}</div>',
    ]
    gallery = [p for p in rep.plots if not (p == CONFUSION_PNG and rep.image_classification)]  # shown above
    if gallery:
        parts.append("<h2>Evaluation plots</h2><div id=plots>" + "".join(
            f'<figure><img src="plots/{e(p)}" alt="{e(p)}" width="400"><figcaption>{e(p)}</figcaption></figure>'
            for p in gallery) + "</div>")
    if rep.missing:
        parts.append('<h2>Missing inputs</h2><ul class="missing">' + "".join(f"<li>{e(m)}</li>" for m in rep.missing) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(run: Path, out: Path | None = None, gt: Path | None = None, top_k: int = 4,
                 force: bool = False) -> RunReport:
    """Build the report folder `out` (default run/report) as a whole and return what it shows. `gt`: the test
    split's COCO json for the thumbnails (default: gt_test in run/pipeline.json). `out` is refused (as
    io.check_output_dir says) unless it is absent, empty or a previous report, or with `force`; never a folder
    that holds a file the report reads."""
    run = Path(run)
    rf = RunFolder(run)
    out = Path(out) if out is not None else rf.stage("report")
    if top_k < 0:
        raise ConfigError(f"{{top_k}} {top_k}: must be >= 0", "top_k")
    if not run.is_dir():
        raise DatasetError(f"{run}: no such run folder")
    rep, images = collect(run, gt, top_k)
    if all(v is None for v in (*rep.detector.values(), rep.sam_finetune, *rep.segmentation.values(), rep.openvocab,
                               rep.curve)):
        raise DatasetError(f"{run}: no stage output found (expected yolo_world/best.json, sam/best.json, eval/metrics.json)")
    with atomic_dir(out, KIND, [Path(p) for p in rep.inputs], force) as tmp:
        (tmp / "thumbs").mkdir()
        if images:
            _draw_thumbs(rep, images, tmp)
        if rep.plots or rep.image_classification or rep.openvocab or rep.curve:
            (tmp / "plots").mkdir()
        _experiment_plots(rep, tmp / "plots")
        for p in rep.plots:
            shutil.copy2(rf.stage("eval") / p, tmp / "plots" / p)
        if rep.image_classification:
            _confusion_plot(rep, tmp / "plots")
        (tmp / "index.html").write_text(render(rep))
        (tmp / "report.json").write_text(json.dumps(asdict(rep), indent=2))
    return rep


def _experiment_plots(rep: RunReport, folder: Path) -> None:
    """The seen / unseen bars and the learning curve, drawn from the experiments' results."""
    if not (rep.openvocab or rep.curve):
        return
    from defect_vision.evaluation import (
        experiment_plots,  # matplotlib: only when drawing
    )

    if rep.openvocab:
        experiment_plots.seen_unseen_bars(rep.openvocab, folder / "seen_unseen.png")
        rep.openvocab["plot"] = "plots/seen_unseen.png"
    if rep.curve:
        experiment_plots.learning_curve(rep.curve, folder / "curve.png")
        rep.curve["plot"] = "plots/curve.png"


def _confusion_plot(rep: RunReport, folder: Path) -> None:
    """The confusion matrix: evaluate's plot when the eval folder has it, else drawn from metrics.json."""
    ic = rep.image_classification
    if CONFUSION_PNG not in rep.plots:
        from defect_vision.evaluation import plots  # matplotlib: only when drawing

        plots.confusion_matrix({"accuracy": ic["accuracy"], "confusion_matrix": {"labels": ic["labels"],
                                                                                 "counts": ic["counts"]}},
                               folder / CONFUSION_PNG)
    ic["plot"] = f"plots/{CONFUSION_PNG}"


def _draw_thumbs(rep: RunReport, images: dict, folder: Path) -> None:
    drawn = set()
    for s in tqdm([*rep.best, *rep.worst], desc="thumbnails", unit="img", disable=None):
        path = images["dataset"].image(s.image_id).path
        try:
            img = read_image(path)
        except DatasetError:
            img = None
            rep.missing.append(f"{path} (thumbnail drawn without the image)")
        gt, pred = images["gt"][s.image_id], images["pred"][s.image_id]
        if img is not None and img.shape[:2] != gt.shape:
            img = None
        s.thumb = f"thumbs/{s.image_id:05d}.png"
        if s.image_id not in drawn:
            cv2.imwrite(str(folder / s.thumb), cv2.cvtColor(draw_thumb(img, gt, pred), cv2.COLOR_RGB2BGR))
            drawn.add(s.image_id)


def summary_line(rep: RunReport, out: Path) -> str:
    seg = rep.segmentation.get("detected_boxes") or {}
    kind = ("SMOKE RUN, random-init weights" if rep.smoke
            else f"weights: detector {rep.weights['detector']}, SAM {rep.weights['sam']}")
    notes = "".join(f"; {n}" for n in rep.notes)
    return (f"report: {Path(out) / 'index.html'} ({kind}; mask IoU {fmt(seg.get('mask_iou_instance'))}, pixel AUROC "
            f"{fmt(seg.get('pixel_auroc'))}; {len(rep.best) + len(rep.worst)} thumbnails; {len(rep.missing)} missing "
            f"inputs{notes})")
