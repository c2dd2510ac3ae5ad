"""The report's unknown-defects section (issue 21): the heat map alone vs the named pipeline alone vs their fusion,
and per defect type how many instances a named detection finds, only an `anomaly` detection finds, or neither.
`anomaly_section(run)` is HTML ("" when the run's evaluation has no anomaly figures); the lead's html_report wires it."""
from __future__ import annotations

import html
import json
from pathlib import Path

KINDS = (("map", "heat map alone"), ("named", "named pipeline alone"), ("fusion", "fusion (max)"))
FIGURES = (("pixel_auroc", "pixel AUROC"), ("aupro", "AUPRO"), ("max_f1", "pixel max-F1"), ("image_auroc", "image AUROC"))


def _f(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def anomaly_line(doc: dict) -> str:
    """One line for the evaluate command."""
    parts = [f"{label}: pixel AUROC {_f(doc[k]['pixel_auroc'])}, image AUROC {_f(doc[k]['image_auroc'])}"
             for k, label in KINDS]
    found = sum(r["named"] + r["unknown"] for r in doc["recall"].values())
    total = sum(r["instances"] for r in doc["recall"].values())
    return f"anomaly ({doc.get('method')}): " + "; ".join(parts) + f"; instances found by named or unknown {found}/{total}"


def anomaly_metrics(run: Path) -> dict | None:
    """The anomaly figures of runs/<C>/eval/metrics.json (None when absent)."""
    path = Path(run) / "eval" / "metrics.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text()).get("anomaly")
    except (OSError, ValueError):
        return None


def anomaly_section(run: Path) -> str:
    """HTML: the three-way table and the per-type recall table ("" without an anomaly evaluation)."""
    doc = anomaly_metrics(run)
    if not doc:
        return ""
    head = "".join(f"<th>{label}</th>" for _, label in FIGURES)
    rows = "".join(f"<tr><td>{label}</td>" + "".join(f"<td>{_f(doc[k].get(f))}</td>" for f, _ in FIGURES) + "</tr>"
                   for k, label in KINDS)
    rec = "".join(f"<tr><td>{html.escape(name)}</td><td>{r['instances']}</td><td>{r['by_name']}</td><td>{r['named']}</td>"
                  f"<td>{r['unknown']}</td><td>{r['missed']}</td><td>{_f(r['recall_named'])}</td>"
                  f"<td>{_f(r['recall_fusion'])}</td></tr>" for name, r in doc["recall"].items())
    return (f"<h2>Unknown defects: good-only anomaly map ({html.escape(str(doc.get('method')))})</h2>\n"
            f"<p>Model {html.escape(str(doc.get('model')))}, trained on good images only; map threshold "
            f"{_f(doc.get('map_threshold'))} calibrated on val. Fusion: pixel = max(named score map, heat map), image = "
            f"max(named score, map score). An `anomaly` detection's mask is SAM's on the region's box; the pixel "
            f"figures of the map use the heat map itself. A GT instance is found at mask IoU &ge; {doc.get('hit_iou')}.</p>\n"
            f"<table><tr><th></th>{head}</tr>{rows}</table>\n"
            "<table><tr><th>defect type</th><th>instances</th><th>by its name</th><th>named (any)</th>"
            "<th>only unknown</th><th>missed</th>"
            f"<th>recall named</th><th>recall fusion</th></tr>{rec}</table>\n")
