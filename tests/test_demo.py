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
    demo_stages = [*STAGES[:5], "anomaly", *STAGES[5:]]  # the demo runs the anomaly stage by default
    assert list(pipeline["seconds"]) == [*demo_stages, "report"]
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
    for table_id in ("detector", "segmentation", "sam-finetune", "per-class", "image-classification"):
        assert f'<table id="{table_id}">' in page
    assert ("SMOKE RUN" in page) is (not OFFICIAL)
    assert "Unknown defects: good-only anomaly map (draem)" in page  # the anomaly stage's section
    assert len(list((run / "predict" / "anomaly_maps").glob("*.png"))) == len(gt["images"])
    assert (run / "thresholds.json").is_file() and (run / "predict" / "predictions.json").is_file()
    if CHROMIUM:  # the demo's own page, in a real browser: tables laid out, every image decoded
        seen = render_in_chromium(run / "report" / "index.html")
        assert {t["id"] for t in seen["tables"]} >= {"detector", "segmentation", "sam-finetune", "per-class",
                                                     "image-classification"}
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
    (["--category", "wood", "--root", "/nonexistent"],
     "error: /nonexistent/wood: no MVTec category here (expected /nonexistent/wood/test/; other layouts: --format)"),
    (["--category", "wood", "--conf", "1.5"], "error: 1.5: --conf must be a number in [0, 1]"),
    (["--category", "wood", "--yolo-epochs", "-1"], "--yolo-epochs: must be >= 0, got -1"),
    (["--category", "wood", "--bogus"], "unrecognized arguments: --bogus"),
    (["--root", "/nonexistent"], "the following arguments are required: --category"),
])
def test_pipeline_bad_arguments_exit_2_naming_the_problem(args, message):
    r = run_pipeline(*args)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].endswith(message) and r.stdout == ""


def test_pipeline_help_lists_the_options():
    r = run_pipeline("--help")
    assert r.returncode == 0
    for opt in ("--category", "--root", "--from-scratch", "--yolo-epochs", "--sam-epochs", "--imgsz", "--conf",
                "--device", "--seed", "--force", "(default: datasets/mvtec_ad)", "(default: 0.01)"):
        assert opt in r.stdout


def _parsed(stage) -> object:
    """A stage's arguments as its own command parses them (what the stage will really run with)."""
    import importlib

    from defect_vision.cli import COMMANDS

    module = importlib.import_module(f"defect_vision.cli.{COMMANDS[stage.argv[0]][0]}")
    return module.build_parser("x").parse_args(stage.argv[1:])


def test_pipeline_gives_each_stage_the_official_weights(tmp_path):
    """With the official weights present, every stage's command receives them (parsed by that command's parser)."""
    from defect_vision.cli.pipeline import PipelineConfig, plan

    w = tmp_path / "w"
    for f in ("yolov8s-worldv2.pt", "clip/ViT-B-32.pt", "sam_vit_l_0b3195.pth"):
        (w / f).parent.mkdir(parents=True, exist_ok=True)
        (w / f).write_bytes(b"x")
    (tmp_path / "mvtec" / "toy" / "test").mkdir(parents=True)
    p = plan(PipelineConfig("toy", tmp_path / "mvtec", tmp_path / "ds", tmp_path / "runs", w, sam_model_type="vit_l", seed=3))
    stages = {s.name: s for s in p.stages}
    assert list(stages) == [*STAGES, "report"] and p.weights == "official"
    det = _parsed(stages["yolo_world"])
    assert (det.model, det.text_encoder, det.clip, det.eval_zero_shot) == (w / "yolov8s-worldv2.pt", "clip", w / "clip/ViT-B-32.pt", True)
    assert (det.epochs, det.imgsz, det.batch, det.seed, det.from_scratch) == (80, 640, 16, 3, False)
    sam = _parsed(stages["sam"])
    assert (sam.model_type, sam.checkpoint, sam.from_scratch, sam.epochs) == ("vit_l", w / "sam_vit_l_0b3195.pth", False, 20)
    for name in ("predict_val", "predict", "predict_gt_boxes"):
        pr = _parsed(stages[name])
        assert (pr.model_type, pr.conf, pr.detector) == ("vit_l", 0.01, tmp_path / "runs/toy/yolo_world/best.pt"), name
    assert _parsed(stages["predict_gt_boxes"]).gt_boxes == tmp_path / "ds/coco/toy/instances_test.json"
    assert _parsed(stages["predict"]).save_overlays and _parsed(stages["evaluate"]).val_gt is not None


def test_pipeline_from_scratch_without_calibration(tmp_path):
    """--from-scratch trains random-init models (prompt encoder included), --no-calibrate skips val and drops a
    previous run's thresholds; pipeline.json records the stages that ran."""
    from defect_vision.cli.pipeline import PipelineConfig, run_pipeline

    (tmp_path / "mvtec" / "toy" / "test").mkdir(parents=True)
    run = tmp_path / "runs" / "toy"
    (run / "predict_val").mkdir(parents=True)
    (run / "thresholds.json").write_text('{"thresholds": {}, "default": 0.9}')  # from an earlier run
    ran = []

    def runner(argv, log):  # stands in for the stage processes; the converter writes what the next stage checks
        ran.append(argv)
        if argv[0] == "convert":
            for f in ("coco/toy/instances_val.json", "coco/toy/instances_test.json", "yolo/toy/data.yaml"):
                (tmp_path / "ds" / f).parent.mkdir(parents=True, exist_ok=True)
                (tmp_path / "ds" / f).write_text("{}")
        return 0

    cfg = PipelineConfig("toy", tmp_path / "mvtec", tmp_path / "ds", tmp_path / "runs", tmp_path / "none",
                         from_scratch=True, yolo_cfg="yolov8n-worldv2.yaml", calibrate=False)
    summary = run_pipeline(cfg, runner)
    assert [a[0] for a in ran] == ["convert", "train-detector", "train-sam", "predict", "predict", "evaluate", "evaluate", "report"]
    det = _parsed(type("S", (), {"argv": ran[1]}))
    assert (det.from_scratch, det.model_cfg, det.text_encoder, det.eval_zero_shot) == (True, "yolov8n-worldv2.yaml", "random", False)
    sam = _parsed(type("S", (), {"argv": ran[2]}))
    assert (sam.model_type, sam.from_scratch, sam.train_prompt_encoder, sam.lr) == ("vit_tiny", True, True, 1e-3)
    assert not (run / "thresholds.json").exists() and not (run / "predict_val").exists()
    assert _parsed(type("S", (), {"argv": ran[5]})).val_gt is None
    saved = json.loads((run / "pipeline.json").read_text())
    assert saved == json.loads(json.dumps(summary)) and saved["settings"]["calibrate"] is False
    assert saved["weights"] == "random-init" and list(saved["seconds"]) == [s for s in STAGES if s not in ("predict_val", "calibrate")] + ["report"]
    assert "RANDOM-INIT" in (run / "pipeline.log").read_text()


def test_a_failed_stage_stops_the_pipeline_naming_it(tmp_path, capsys):
    from defect_vision.cli import pipeline

    (tmp_path / "mvtec" / "toy" / "test").mkdir(parents=True)
    cfg = ["--category", "toy", "--root", str(tmp_path / "mvtec"), "--datasets", str(tmp_path / "ds"), "--runs",
           str(tmp_path / "runs"), "--from-scratch"]
    calls = []
    real = pipeline.run_stage
    pipeline.run_stage = lambda argv, log: calls.append(argv) or 3
    try:
        assert pipeline.main(cfg) == 2
    finally:
        pipeline.run_stage = real
    err = capsys.readouterr().err.strip().splitlines()
    assert len(calls) == 1 and err[-1] == (f"error: pipeline stage 'convert' failed (exit 3; see the messages above; "
                                           f"log: {tmp_path / 'runs' / 'toy' / 'pipeline.log'})")


def test_demo_bad_arguments_are_one_line_errors():
    for args, message in ((["--bogus"], "error: --bogus: unknown option (see --help)"),
                          (["--seed", "x"], "error: x: --seed must be a non-negative integer"),
                          (["--work"], "error: --work: missing value")):
        r = subprocess.run(["bash", str(REPO / "scripts" / "demo.sh"), *args], capture_output=True, text=True, timeout=30)
        assert r.returncode == 2 and r.stderr.strip() == message and r.stdout == "", args


def test_demo_with_root_runs_the_pipeline_on_that_real_category(tmp_path):
    """--root uses the real category as is (no synthetic data), through the whole pipeline (smallest settings)."""
    from defect_vision.data.synthetic import make_category

    make_category(tmp_path / "mvtec", "capsule", style="capsule", size=96, defects=("crack", "hole"), per_defect=4,
                  good_test=2, good_train=2, combined=0, seed=2)
    env = {**os.environ, "DEMO_FAST": "1"}
    r = subprocess.run(["bash", str(REPO / "scripts" / "demo.sh"), "--root", str(tmp_path / "mvtec"), "--category",
                        "capsule", "--work", str(tmp_path / "work")], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert f"demo: real mvtec category capsule from {tmp_path}/mvtec" in r.stdout
    assert not (tmp_path / "work" / "datasets" / "synthetic").exists()  # no synthetic data generated
    run = tmp_path / "work" / "runs" / "capsule"
    pipeline = json.loads((run / "pipeline.json").read_text())
    assert pipeline["root"] == str(tmp_path / "mvtec") and pipeline["settings"]["sam_epochs"] == 1
    gt = json.loads((tmp_path / "work" / "datasets" / "coco" / "capsule" / "instances_test.json").read_text())
    assert {c["name"] for c in gt["categories"]} == {"crack", "hole"}
    assert (run / "report" / "index.html").is_file() and f"open {run}/report/index.html" in r.stdout


def test_pipeline_passes_the_dataset_layout_to_the_converter(tmp_path):
    """--format and the reader options reach `defect-vision convert` (parsed by its own parser)."""
    from defect_vision.cli import pipeline

    (tmp_path / "data" / "pcb1").mkdir(parents=True)
    argv = ["--category", "pcb1", "--root", str(tmp_path / "data"), "--from-scratch", "--format", "visa",
            "--mask-threshold", "3", "--names", "names.yaml", "--benchmark-split"]
    seen = []
    real = pipeline.run_stage
    pipeline.run_stage = lambda stage_argv, log: seen.append(stage_argv) or 1  # stop after the converter
    try:
        assert pipeline.main(argv) == 2
    finally:
        pipeline.run_stage = real
    conv = _parsed(type("S", (), {"argv": seen[0]}))
    assert (conv.layout, conv.mask_threshold, conv.names, conv.benchmark_split) == ("visa", 3, Path("names.yaml"), True)
    r = run_pipeline("--category", "pcb1", "--root", str(tmp_path / "nowhere"), "--format", "visa")
    assert r.returncode == 2 and r.stderr.strip() == f"error: {tmp_path / 'nowhere'}: no such folder (the dataset root)"
