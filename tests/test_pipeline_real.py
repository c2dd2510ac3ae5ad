"""The whole pipeline on one category of the real MVTec AD sample: converters, a one-epoch fine-tune of each model
(random-init: the official weights cannot be downloaded here), inference, evaluation and the report."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CATEGORY = "bottle"


@pytest.mark.real_data
@pytest.mark.slow
def test_pipeline_on_a_real_category(real_root, tmp_path):
    cmd = ["bash", "scripts/run_pipeline.sh", "--category", CATEGORY, "--root", str(real_root),
           "--datasets", str(tmp_path / "datasets"), "--runs", str(tmp_path / "runs"), "--from-scratch",
           "--yolo-cfg", "yolov8n-worldv2.yaml",
           "--yolo-epochs", "1", "--sam-epochs", "1", "--imgsz", "128", "--batch", "4", "--device", "cpu"]
    r = subprocess.run(cmd, cwd=REPO, env={**os.environ, "YOLO_OFFLINE": "1"}, capture_output=True, text=True,
                       timeout=1200)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    run = tmp_path / "runs" / CATEGORY

    defect_types = sorted(p.name for p in (real_root / CATEGORY / "test").iterdir() if p.is_dir() and p.name != "good")
    gt = json.loads((tmp_path / "datasets" / "coco" / CATEGORY / "instances_test.json").read_text())
    assert [c["name"] for c in gt["categories"]] == defect_types
    assert json.loads((run / "yolo_world" / "best.json").read_text())["classes"] == defect_types

    pipeline = json.loads((run / "pipeline.json").read_text())
    assert pipeline["weights"] == "random-init" and pipeline["settings"]["yolo_epochs"] == 1
    preds = json.loads((run / "predict_gt_boxes" / "predictions.json").read_text())
    assert len(preds) == len(gt["annotations"])  # one mask per GT box
    assert {p["image_id"] for p in preds} <= {im["id"] for im in gt["images"]}

    rep = json.loads((run / "report" / "report.json").read_text())
    assert rep["smoke"] is True and rep["category"] == CATEGORY
    for key in ("detected_boxes", "gt_boxes"):
        row = rep["segmentation"][key]
        for col in ("mask_iou_instance", "segm_AP", "pixel_auroc", "aupro"):
            assert 0.0 <= row[col] <= 1.0, (key, col)
    assert rep["segmentation"]["gt_boxes"]["bbox_AP50"] == pytest.approx(1.0)
    assert 0.0 <= rep["sam_finetune"]["val_iou_best"] <= 1.0
    assert {s["file_name"] for s in rep["best"] + rep["worst"]} <= {im["file_name"] for im in gt["images"]}
    assert "SMOKE RUN" in (run / "report" / "index.html").read_text()
