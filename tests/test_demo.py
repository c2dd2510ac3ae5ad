"""scripts/demo.sh end to end with the smallest settings, and run_pipeline.sh's refusals on bad input."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from test_report_html import CHROMIUM, render_in_chromium

REPO = Path(__file__).resolve().parents[1]
STAGES = ["convert", "yolo_world", "sam", "predict_val", "calibrate", "predict", "predict_gt_boxes", "evaluate",
          "evaluate_gt_boxes"]
OFFICIAL = all((REPO / "weights" / f).is_file() for f in ("yolov8s-worldv2.pt", "clip/ViT-B-32.pt", "sam_vit_b_01ec64.pth"))


def in_unit(x) -> bool:
    return isinstance(x, (int, float)) and 0.0 <= x <= 1.0


@pytest.mark.slow
def test_demo_runs_every_stage_and_reports_it(tmp_path):
    env = {**os.environ, "DEMO_FAST": "1", "YOLO_OFFLINE": "1"}
    r = subprocess.run(["bash", "scripts/demo.sh", "--work", str(tmp_path)], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=900)
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-4000:]
    run = tmp_path / "runs" / "toy_wood"
    assert "demo: finished in" in log and f"{run}/report/index.html" in log

    # the log says which weights were used
    if OFFICIAL:
        assert "official weights found" in log
    else:
        assert "official weights NOT found" in log and "random-init" in log and "SMOKE RUN" in log

    pipeline = json.loads((run / "pipeline.json").read_text())
    assert list(pipeline["seconds"]) == STAGES
    assert pipeline["weights"] == ("official" if OFFICIAL else "random-init")

    # converters: the test split the report scored is the COCO test split
    gt = json.loads(Path(pipeline["gt_test"]).read_text())
    assert {c["name"] for c in gt["categories"]} == {"combined", "crack", "hole", "scratch", "stain"}

    rep = json.loads((run / "report" / "report.json").read_text())
    assert rep["smoke"] is (not OFFICIAL)
    # YOLO-World fine-tune, SAM fine-tune
    assert in_unit(rep["detector"]["fine_tuned"]["map50"]) and in_unit(rep["detector"]["fine_tuned"]["map50_95"])
    assert rep["sam_finetune"]["model_type"] == ("vit_b" if OFFICIAL else "vit_tiny")
    assert in_unit(rep["sam_finetune"]["val_iou_start"]) and in_unit(rep["sam_finetune"]["val_iou_best"])
    assert rep["sam_finetune"]["val_iou_best"] >= rep["sam_finetune"]["val_iou_start"]
    # inference + evaluation, on detected boxes and on GT boxes
    for key in ("detected_boxes", "gt_boxes"):
        row = rep["segmentation"][key]
        for col in ("mask_iou_instance", "bbox_AP", "segm_AP", "pixel_auroc", "aupro", "max_f1"):
            assert in_unit(row[col]), (key, col, row[col])
    assert rep["segmentation"]["detected_boxes"]["mask_iou_calibrated"] is not None  # calibrate on val ran
    # prompting SAM with the GT boxes gives every GT instance exactly its box: box AP50 is 1 by construction
    assert rep["segmentation"]["gt_boxes"]["bbox_AP50"] == pytest.approx(1.0)
    # thumbnails of the best and worst test images, drawn from the test split
    names = {im["file_name"] for im in gt["images"]}
    shown = rep["best"] + rep["worst"]
    assert len(shown) == min(8, len(names)) and {s["file_name"] for s in shown} <= names
    assert all((run / "report" / s["thumb"]).stat().st_size > 100 for s in shown)
    page = (run / "report" / "index.html").read_text()
    for table_id in ("detector", "segmentation", "sam-finetune", "per-class"):
        assert f'<table id="{table_id}">' in page
    assert ("SMOKE RUN" in page) is (not OFFICIAL)
    assert (run / "thresholds.json").is_file() and (run / "predict" / "predictions.json").is_file()
    if CHROMIUM:  # the demo's own page, in a real browser: tables laid out, every image decoded
        seen = render_in_chromium(run / "report" / "index.html")
        assert {t["id"] for t in seen["tables"]} == {"detector", "segmentation", "sam-finetune", "per-class"}
        assert len(seen["imgs"]) >= len(shown) and all(i["ok"] for i in seen["imgs"]), seen["imgs"]


def run_pipeline(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO / "scripts" / "run_pipeline.sh"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=60)


def test_pipeline_requires_official_weights_unless_from_scratch(tmp_path):
    (tmp_path / "mvtec" / "toy" / "test").mkdir(parents=True)
    r = run_pipeline("--category", "toy", "--root", str(tmp_path / "mvtec"), "--weights", str(tmp_path / "none"),
                     "--runs", str(tmp_path / "runs"))
    assert r.returncode == 2
    assert r.stderr.strip() == (f"error: {tmp_path}/none/yolov8s-worldv2.pt: official weights missing (run "
                                "scripts/download_weights.sh, or pass --from-scratch for a smoke run with random-init models)")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("args, message", [
    (["--root", "/nonexistent"], "error: --category is required (see --help)"),
    (["--category", "wood", "--root", "/nonexistent"],
     "error: /nonexistent/wood: no MVTec category here (expected /nonexistent/wood/test/)"),
    (["--category", "wood", "--yolo-epochs", "x"], "error: x: not a non-negative integer (see --help)"),
    (["--category", "wood", "--bogus"], "error: --bogus: unknown option (see --help)"),
])
def test_pipeline_bad_arguments_are_one_line_errors(args, message):
    r = run_pipeline(*args)
    assert r.returncode == 2 and r.stderr.strip() == message and r.stdout == ""


def test_pipeline_help_lists_the_options():
    r = run_pipeline("--help")
    assert r.returncode == 0
    for opt in ("--category", "--root", "--from-scratch", "--yolo-epochs", "--sam-epochs", "--imgsz", "--conf",
                "--device", "--seed", "[datasets/mvtec_ad]", "[0.01]"):
        assert opt in r.stdout
