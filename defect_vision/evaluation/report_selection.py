"""The report's active-learning section: labels chosen by `select` vs at random (runs/<C>/selection_curve, written by
experiments/selection_curve.py), as a table of metric vs labelled images per strategy and its plot."""
from __future__ import annotations

import base64
import html
from pathlib import Path

from defect_vision.io import read_json
from defect_vision.run_folder import RunFolder

STAGE = "selection_curve"
PLOT = "selection_curve.png"
METRICS = (("detector_box_ap50", "detector box AP50"), ("end_to_end_mask_iou", "end-to-end mask IoU"),
           ("sam_gt_box_mask_iou", "SAM mask IoU on ground-truth boxes"))
COLOURS = {"select": "tab:orange", "random": "tab:blue"}


def mean_spread(p: dict) -> str:
    """A curve point as `mean [min-max]` (the seeds' spread when there are several), n/a without a value."""
    if p.get("mean") is None:
        return "n/a"
    spread = f" [{p['min']:.3f}-{p['max']:.3f}]" if p.get("n", 0) > 1 else ""
    return f"{p['mean']:.3f}{spread}"


def selection_plot(results: dict, path: Path) -> Path:
    """Metric vs labelled defect images, one line per strategy (mean, seed min-max band)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(METRICS), figsize=(4.6 * len(METRICS), 3.6), squeeze=False)
    for ax, (metric, title) in zip(axes[0], METRICS):
        for strategy, metrics in (results.get("summary") or {}).items():
            pts = [p for p in metrics.get(metric) or [] if p["mean"] is not None]
            x = [p["labels"] for p in pts]
            colour = COLOURS.get(strategy)
            ax.fill_between(x, [p["min"] for p in pts], [p["max"] for p in pts], alpha=0.2, color=colour)
            ax.plot(x, [p["mean"] for p in pts], "o-", color=colour, label=f"{strategy} (mean over seeds)")
        ax.set(title=title, xlabel="labelled defect images", ylim=(0, 1.02))
        ax.legend(fontsize=7)
    fig.suptitle(f"{results.get('category', '')}: labels chosen by select vs at random", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def selection_section(run: Path) -> str:
    """HTML of <run>/selection_curve/results.json (table + the plot inlined), "" when absent or without a summary."""
    folder = RunFolder(Path(run)).stage(STAGE)
    path = folder / "results.json"
    if not path.is_file():
        return ""
    results = read_json(path, "selection curve results")
    summary = results.get("summary") if isinstance(results, dict) else None
    if not isinstance(summary, dict) or not summary:
        return ""
    e = html.escape
    rows, labels = [], None
    for strategy, metrics in summary.items():
        for metric, title in METRICS:
            pts = metrics.get(metric) or []
            labels = labels or [p["labels"] for p in pts]
            rows.append(f"<tr><td>{e(strategy)}</td><td>{e(title)}</td>" + "".join(f"<td>{mean_spread(p)}</td>" for p in pts)
                        + "</tr>")
    head = "".join(f"<th>{n:g} labels</th>" for n in labels or [])
    table = (f'<table id="selection-curve"><thead><tr><th>strategy</th><th>metric</th>{head}</tr></thead>'
             f"<tbody>{''.join(rows)}</tbody></table>")
    png = folder / PLOT
    plot = (f'<figure><img src="data:image/png;base64,{base64.b64encode(png.read_bytes()).decode()}" '
            f'alt="select vs random" width="900"><figcaption>metric vs labelled defect images: labels chosen by '
            f"select vs at random, mean and seed range</figcaption></figure>" if png.is_file() else "")
    detector = (results.get("detector") or {}).get("label") or "YOLO-World"
    return "".join([
        f"<h2>Which images to label next: select vs random ({e(str(detector))})</h2>",
        (f"<p>{e(str(results.get('protocol', '')))}. Seeds {e(str(results.get('seeds')))}; weights: "
         f"{e(str(results.get('weights')))}. Cells: mean [min-max over seeds] on the test split.</p>"),
        table, plot,
    ])
