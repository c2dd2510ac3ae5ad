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


STUB = """#!/usr/bin/env bash
# stands in for .venv/bin/python: records each call; the converter writes the files the pipeline checks for
printf '%s\\n' "$*" >> "$STUB_CALLS"
if [ "$1" = - ]; then exec "$REAL_PY" "$@"; fi
if [ "$1" = converters/mvtec_to_all.py ]; then
  while [ $# -gt 0 ]; do case "$1" in --out) out=$2 ;; --category) cat=$2 ;; esac; shift; done
  mkdir -p "$out/coco/$cat" "$out/yolo/$cat"
  echo '{}' > "$out/coco/$cat/instances_val.json"; echo '{}' > "$out/coco/$cat/instances_test.json"
  echo 'names: {}' > "$out/yolo/$cat/data.yaml"
fi
"""


def stub_pipeline(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict[str, str]]:
    """run_pipeline.sh with every stage's Python replaced by a recorder: returns the result and {stage: argv}."""
    stub = tmp_path / "python"
    stub.write_text(STUB)
    stub.chmod(0o755)
    (tmp_path / "mvtec" / "toy" / "test").mkdir(parents=True, exist_ok=True)
    calls = tmp_path / "calls.txt"
    calls.unlink(missing_ok=True)
    env = {**os.environ, "PYTHON_BIN": str(stub), "STUB_CALLS": str(calls), "REAL_PY": str(REPO / ".venv/bin/python")}
    r = subprocess.run(["bash", str(REPO / "scripts" / "run_pipeline.sh"), "--category", "toy", "--root",
                        str(tmp_path / "mvtec"), "--datasets", str(tmp_path / "ds"), "--runs", str(tmp_path / "runs"),
                        *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    by_stage = {}
    for line in calls.read_text().splitlines() if calls.exists() else []:
        if line.startswith("-m "):
            mod = line.split()[1]
            if mod == "inference.predict":  # told apart by their --out folder
                mod = "predict:" + line.split("--out ")[1].split()[0].rsplit("/", 1)[-1]
            by_stage[mod] = line
        elif line.startswith("converters/"):
            by_stage["convert"] = line
    return r, by_stage


def test_pipeline_passes_the_official_weights_to_every_stage(tmp_path):
    w = tmp_path / "w"
    for f in ("yolov8s-worldv2.pt", "clip/ViT-B-32.pt", "sam_vit_l_0b3195.pth"):
        (w / f).parent.mkdir(parents=True, exist_ok=True)
        (w / f).write_bytes(b"x")
    r, calls = stub_pipeline(tmp_path, "--weights", str(w), "--sam-model-type", "vit_l", "--seed", "3")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "OFFICIAL weights" in r.stdout
    assert f"--model {w}/yolov8s-worldv2.pt --text-encoder clip --clip {w}/clip/ViT-B-32.pt --eval-zero-shot" \
        in calls["finetune.yolo_world"]
    assert "--epochs 80 --imgsz 640 --batch 16" in calls["finetune.yolo_world"] and "--seed 3" in calls["finetune.yolo_world"]
    assert calls["finetune.sam"].endswith(f"--model-type vit_l --checkpoint {w}/sam_vit_l_0b3195.pth")
    assert "--from-scratch" not in calls["finetune.yolo_world"] + calls["finetune.sam"]
    for out in ("predict_val", "predict", "predict_gt_boxes"):
        assert "--model-type vit_l --conf 0.01" in calls[f"predict:{out}"], out
    assert "--gt-boxes" in calls["predict:predict_gt_boxes"] and "--save-overlays" in calls["predict:predict"]
    pipeline = json.loads((tmp_path / "runs" / "toy" / "pipeline.json").read_text())
    assert list(pipeline["seconds"]) == STAGES
    assert (pipeline["weights"], pipeline["sam_model_type"], pipeline["sam_checkpoint"]) == \
        ("official", "vit_l", f"{w}/sam_vit_l_0b3195.pth")
    assert calls["evaluation.html_report"] == f"-m evaluation.html_report --run {tmp_path}/runs/toy"


def test_pipeline_from_scratch_trains_the_prompt_encoder_and_no_calibrate_drops_stale_thresholds(tmp_path):
    run = tmp_path / "runs" / "toy"
    (run / "predict_val").mkdir(parents=True)
    (run / "thresholds.json").write_text('{"thresholds": {}, "default": 0.9}')  # from an earlier run
    r, calls = stub_pipeline(tmp_path, "--from-scratch", "--no-calibrate", "--yolo-cfg", "yolov8n-worldv2.yaml")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "RANDOM-INIT" in r.stdout and "SMOKE RUN" in r.stdout
    assert "--from-scratch --model-cfg yolov8n-worldv2.yaml --text-encoder random" in calls["finetune.yolo_world"]
    assert "--eval-zero-shot" not in calls["finetune.yolo_world"]
    assert calls["finetune.sam"].endswith("--model-type vit_tiny --from-scratch --train-prompt-encoder --lr 1e-3 "
                                          "--batch-images 2")
    assert "predict:predict_val" not in calls and "evaluation.calibrate" not in calls
    assert "--val-gt" not in calls["evaluation.evaluate"]
    assert not (run / "thresholds.json").exists() and not (run / "predict_val").exists()
    assert json.loads((run / "pipeline.json").read_text())["settings"]["calibrate"] is False


@pytest.mark.parametrize("conf", ["1.5", "5", "-0.1", "x"])
def test_pipeline_rejects_conf_outside_unit_interval(conf):
    r = run_pipeline("--category", "wood", "--conf", conf)
    assert r.returncode == 2 and r.stderr.strip() == f"error: {conf}: --conf must be a number in [0, 1]"


def test_demo_bad_arguments_are_one_line_errors():
    for args, message in ((["--bogus"], "error: --bogus: unknown option (see --help)"),
                          (["--seed", "x"], "error: x: --seed must be a non-negative integer"),
                          (["--work"], "error: --work: missing value")):
        r = subprocess.run(["bash", str(REPO / "scripts" / "demo.sh"), *args], capture_output=True, text=True, timeout=30)
        assert r.returncode == 2 and r.stderr.strip() == message and r.stdout == "", args


def test_demo_with_root_runs_the_pipeline_on_that_real_category(tmp_path):
    stub = tmp_path / "python"
    stub.write_text(STUB)
    stub.chmod(0o755)
    (tmp_path / "mvtec" / "capsule" / "test").mkdir(parents=True)
    calls = tmp_path / "calls.txt"
    env = {**os.environ, "PYTHON_BIN": str(stub), "STUB_CALLS": str(calls), "REAL_PY": str(REPO / ".venv/bin/python"),
           "DEMO_FAST": "1"}
    r = subprocess.run(["bash", str(REPO / "scripts" / "demo.sh"), "--root", str(tmp_path / "mvtec"), "--category",
                        "capsule", "--work", str(tmp_path / "work")], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"demo: real MVTec AD category capsule from {tmp_path}/mvtec" in r.stdout
    assert not (tmp_path / "work" / "datasets" / "synthetic").exists()  # no synthetic data generated
    lines = calls.read_text().splitlines()
    assert lines[0].startswith(f"converters/mvtec_to_all.py --category capsule --root {tmp_path}/mvtec "
                               f"--out {tmp_path}/work/datasets")
    sam = next(l for l in lines if l.startswith("-m finetune.sam"))
    assert "--epochs 1" in sam and ("--from-scratch" in sam) is (not OFFICIAL)
    assert f"open {tmp_path}/work/runs/capsule/report/index.html" in r.stdout
