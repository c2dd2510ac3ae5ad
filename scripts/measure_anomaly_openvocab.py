#!/usr/bin/env python3
"""Unknown defects, three ways (issue 21): for each defect type held out of the detector's training (the openvocab
experiment's leave-one-defect-out models), the share of its test instances found (i) by its name (a named
detection of that class, open vocabulary), (ii) only by the anomaly fusion (a named detection of another class or
an `anomaly` detection of the good-only model), (iii) by neither. Runs the commands themselves:

  defect-vision openvocab --category C --fast --no-seen          (one detector per held-out class)
  defect-vision predict --detector <without_k>/best.pt --classes <all> --anomaly runs/C/anomaly --box-only ...
  defect-vision evaluate ...                                     (metrics.json["anomaly"]["recall"][k])

Needs the converted category (datasets/) and a train-anomaly model (runs/C/anomaly). Prints a markdown table and
writes <runs>/<C>/anomaly_openvocab.json. CPU: --fast settings (random-init detector and text encoder, 64 px)."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


def cli(*args) -> None:
    cmd = [sys.executable, "-m", "defect_vision", *map(str, args)]
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{r.stderr[-2000:]}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--category", required=True)
    p.add_argument("--datasets", type=Path, default=Path("datasets"))
    p.add_argument("--runs", type=Path, default=Path("runs"))
    p.add_argument("--conf", type=float, default=0.25, help="named detections kept at or above this score")
    p.add_argument("--skip-openvocab", action="store_true", help="reuse <runs>/<C>/openvocab")
    p.add_argument("--classes", nargs="+", default=None,
                   help="held-out classes (default: all; a class whose images are val's only defects cannot be)")
    a = p.parse_args()
    c, run = a.category, a.runs / a.category
    gt = a.datasets / "coco" / c / "instances_test.json"
    classes = [x["name"] for x in json.loads(gt.read_text())["categories"]]
    if not a.skip_openvocab:
        cli("openvocab", "--category", c, "--datasets", a.datasets, "--runs", a.runs, "--fast", "--no-seen", "--force",
            *(["--classes", *a.classes] if a.classes else []))
    rows = {}
    for k in a.classes or classes:
        model = run / "openvocab" / "models" / f"without_{k}" / "best.pt"
        pred, ev = run / "anomaly_openvocab" / f"predict_without_{k}", run / "anomaly_openvocab" / f"eval_without_{k}"
        cli("predict", "--detector", model, "--box-only", "--source", gt, "--classes", *classes, "--text-encoder",
            "random", "--conf", a.conf, "--anomaly", run / "anomaly", "--out", pred, "--quiet", "--force")
        cli("evaluate", "--gt", gt, "--pred", pred / "predictions.json", "--out", ev, "--no-plots", "--force")
        r = json.loads((ev / "metrics.json").read_text())["anomaly"]["recall"].get(k)
        if r:
            fused = r["named"] + r["unknown"]
            rows[k] = {"instances": r["instances"], "by_name": r["by_name"], "fusion_only": fused - r["by_name"],
                       "neither": r["missed"], "fusion": fused}
    (run / "anomaly_openvocab.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(f"| {c}: held-out type | instances | (i) by its name | (ii) only by the fusion | (iii) neither |")
    print("|---|---:|---:|---:|---:|")
    for k, r in rows.items():
        print(f"| {k} | {r['instances']} | {r['by_name']} | {r['fusion_only']} | {r['neither']} |")
    tot = {f: sum(r[f] for r in rows.values()) for f in ("instances", "by_name", "fusion_only", "neither")}
    print(f"| all | {tot['instances']} | {tot['by_name']} | {tot['fusion_only']} | {tot['neither']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
