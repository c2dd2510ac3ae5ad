"""The report's self-training section: what the detector run pseudo-labelled (runs/<C>/yolo_world/
pseudo_labels.json, written by train-detector --unlabelled: per round the per-class thresholds and pseudo-label
counts) and, when measured, labels alone vs labels + unlabelled images (runs/<C>/curve_unlabelled, written by
experiments/unlabelled_curve.py) as a table and its plot."""
from __future__ import annotations

import base64
import html
from pathlib import Path

from defect_vision.evaluation.report_selection import mean_spread
from defect_vision.io import read_json
from defect_vision.run_folder import RunFolder

PSEUDO_FILE = "pseudo_labels.json"
STAGE = "curve_unlabelled"
PLOT = "unlabelled_curve.png"
METRICS = (("detector_box_ap50", "detector box AP50"), ("end_to_end_mask_iou", "end-to-end mask IoU"))
COLOURS = {"labels": "tab:gray", "adaptive": "tab:orange", "fixed": "tab:blue"}
NAMES = {"labels": "labels alone", "adaptive": "+ unlabelled, adaptive thresholds",
         "fixed": "+ unlabelled, fixed threshold"}


def unlabelled_curve_plot(results: dict, path: Path) -> Path:
    """Metric vs k (labelled defect images per class), one line per variant (mean, seed min-max band)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(METRICS), figsize=(4.6 * len(METRICS), 3.6), squeeze=False)
    for ax, (metric, title) in zip(axes[0], METRICS):
        for i, (variant, metrics) in enumerate((results.get("summary") or {}).items()):
            pts = [p for p in metrics.get(metric) or [] if p["mean"] is not None]
            x = [p["k"] + 0.06 * (i - 1) for p in pts]  # side by side: equal results would hide each other
            colour = COLOURS.get(variant)
            ax.fill_between(x, [p["min"] for p in pts], [p["max"] for p in pts], alpha=0.2, color=colour)
            ax.plot(x, [p["mean"] for p in pts], "o-", color=colour, label=NAMES.get(variant, variant))
        ax.set(title=title, xlabel="labelled defect images per class (k)", ylim=(0, 1.02))
        ax.legend(fontsize=7)
    fig.suptitle(f"{results.get('category', '')}: labels alone vs + unlabelled images (self-training)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def pseudo_table(record: dict) -> str:
    """Per round: val mAP50, images used, the adaptive rule's reference class and share, and per class its threshold
    and pseudo-label count."""
    e = html.escape
    classes = list(record.get("labelled_per_class") or {})
    head = "".join(f"<th>{e(c)}<br>threshold / pseudo-labels</th>" for c in classes)
    rows = ["<tr><td>labels</td><td></td><td></td><td></td>"
            + "".join(f"<td>{record['labelled_per_class'][c]} labelled</td>" for c in classes) + "</tr>"]
    for r in record.get("rounds") or []:
        val = "n/a" if r.get("val_map50") is None else f"{r['val_map50']:.3f}"
        if r["round"] == 0:
            cells = "".join("<td>-</td>" for _ in classes)
            rows.append(f"<tr><td>round 0 (labels only)</td><td>{val}</td><td>-</td><td>-</td>{cells}</tr>")
            continue
        ref = f"{e(str(r['reference_class']))}: {r['reference_share']:.2f}" if "reference_class" in r else "-"
        cells = "".join(f"<td>{r['thresholds'][c]:.3f} / {r['pseudo_per_class'][c]}</td>" for c in classes)
        rows.append(f"<tr><td>round {r['round']}</td><td>{val}</td><td>{r['images_used']} of {r['images_seen']}</td>"
                    f"<td>{ref}</td>{cells}</tr>")
    return ('<table id="pseudo-labels"><thead><tr><th>round</th><th>val box mAP50</th><th>images used</th>'
            f"<th>reference class: share reaching conf</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>")


def curve_table(results: dict) -> str:
    e = html.escape
    rows, ks = [], None
    for variant, metrics in (results.get("summary") or {}).items():
        for metric, title in METRICS:
            pts = metrics.get(metric) or []
            ks = ks or [p["k"] for p in pts]
            rows.append(f"<tr><td>{e(NAMES.get(variant, variant))}</td><td>{e(title)}</td>"
                        + "".join(f"<td>{mean_spread(p)}</td>" for p in pts) + "</tr>")
    head = "".join(f"<th>k = {e(str(k))}</th>" for k in ks or [])
    return (f'<table id="unlabelled-curve"><thead><tr><th>training data</th><th>metric</th>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table>")


def self_training_section(run: Path) -> str:
    """HTML of the run's pseudo_labels.json and curve_unlabelled/results.json (plot inlined); "" when neither."""
    e = html.escape
    folder = RunFolder(Path(run))
    parts = []
    pseudo = folder.detector_dir / PSEUDO_FILE
    if pseudo.is_file():
        record = read_json(pseudo, PSEUDO_FILE)
        s = record.get("settings") or {}
        intro = (f"<p>The detector was self-trained on {record.get('unlabelled_images')} unlabelled images "
                 f"({e(str(s.get('unlabelled')))}): rule <b>{e(str(s.get('rule')))}</b>, threshold "
                 f"{s.get('conf')} for the most-labelled class (floor {s.get('floor')}), {s.get('rounds')} round(s), "
                 f"each fine-tuned from the start weights; best.pt is the last round's.</p>")
        parts += [intro, pseudo_table(record)]
    curve = folder.stage(STAGE) / "results.json"
    results = read_json(curve, "unlabelled curve results") if curve.is_file() else None
    if isinstance(results, dict) and results.get("summary"):
        png = folder.stage(STAGE) / PLOT
        plot = (f'<figure><img src="data:image/png;base64,{base64.b64encode(png.read_bytes()).decode()}" '
                f'alt="labels alone vs + unlabelled" width="900"><figcaption>metric vs labelled defect images per '
                f"class: labels alone vs + unlabelled images, mean and seed range</figcaption></figure>"
                if png.is_file() else "")
        intro = (f"<p>{e(str(results.get('protocol', '')))}. Seeds {e(str(results.get('seeds')))}; weights: "
                 f"{e(str(results.get('weights')))}. Cells: mean [min-max over seeds] on the test split.</p>")
        parts += [intro, curve_table(results), plot]
    if not parts:
        return ""
    return "<h2>Learning from unlabelled images (self-training, class-adaptive pseudo-label thresholds)</h2>" + "".join(parts)
