"""`defect-vision evaluate` and `defect-vision calibrate` end to end on a hand-built split: outputs, numbers, plots,
output-folder safety, box-only results, and bad input."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_evaluation_metrics import (
    H,
    W,
    make_gt,
    perfect_preds,
    pred,
    rect,
    shifted_preds,
)

from defect_vision.cli import calibrate, evaluate
from defect_vision.io import MARKER

REPO = Path(__file__).resolve().parents[1]


def write_images(root: Path, gt_path: Path) -> None:
    for im in json.loads(gt_path.read_text())["images"]:
        p = root / im["file_name"]
        p.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(p), np.full((H, W), 128, np.uint8))  # grayscale file: read as RGB


@pytest.fixture
def case(tmp_path):
    root = tmp_path / "toy"
    gt = make_gt(tmp_path / "instances_test.json", image_root=str(root))
    write_images(root, gt)
    (root / "test/defect/002.png").unlink()  # a missing image only drops its overlay
    val = make_gt(tmp_path / "instances_val.json")
    return tmp_path, gt, val


def test_evaluate_writes_metrics_report_and_plots(case, capsys):
    tmp, gt, val = case
    fp = pred(3, 1, rect(0, 0, 4, 5), 0.3)  # a low-scored false positive on the good image
    (tmp / "pred.json").write_text(json.dumps(shifted_preds() + [fp]))
    (tmp / "val_pred.json").write_text(json.dumps(perfect_preds() + [fp]))
    out = tmp / "report"
    rc = evaluate.main(["--gt", str(gt), "--pred", str(tmp / "pred.json"), "--out", str(out),
                        "--val-gt", str(val), "--val-pred", str(tmp / "val_pred.json")])
    assert rc == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("evaluated 3 images (2 defect, 1 good), 3 predictions") and str(out) in line
    assert ", image type accuracy 0.333 at the per-class thresholds calibrated on val (" in line
    m = json.loads((out / "metrics.json").read_text())
    assert m["mask_iou"]["mean_instance"] == pytest.approx((17 / 23 + 2 / 3) / 2)
    assert m["mask_iou"]["good_fp_images"] == 1
    assert m["coco"]["segm"]["AP"] == pytest.approx(0.45)
    assert m["coco"]["bbox"]["per_class"]["hole"]["AP50"] == pytest.approx(1.0)
    assert set(m["pixel"]) >= {"auroc", "aupro", "max_f1", "region_max_f1"}
    assert 0.9 < m["pixel"]["auroc"] <= 1.0 and m["image_auroc"] == pytest.approx(1.0)
    # calibration on val (perfect at 0.9, a false positive at 0.3) sets 0.9 for hole and scratch
    assert m["calibrated"]["thresholds"] == {"hole": pytest.approx(0.9), "scratch": pytest.approx(0.9)}
    assert m["calibrated"]["mask_iou"]["good_fp_images"] == 0
    assert m["calibrated"]["mask_iou"]["mean_instance"] == 0.0  # test scores 0.8/0.7 fall below 0.9
    # image-level type at the calibrated thresholds: every test detection falls below 0.9, every image reads good
    ic = m["image_classification"]
    assert ic["confusion_matrix"] == {"labels": ["good", "hole", "scratch"], "rows": "true type",
                                      "columns": "predicted type", "counts": [[1, 0, 0], [1, 0, 0], [1, 0, 0]]}
    assert ic["accuracy"] == pytest.approx(1 / 3) and ic["per_class"]["good"]["recall"] == 1.0
    assert ic["thresholds"]["source"] == "calibrated" and ic["thresholds"]["per_class"]["hole"] == pytest.approx(0.9)
    th = json.loads((out / "thresholds.json").read_text())
    assert th["default"] == 0.25 and th["thresholds"]["hole"] == pytest.approx(0.9)
    assert json.loads((out / MARKER).read_text())["kind"] == "evaluate"
    assert m["plots"] == ["pr_curves.png", "iou_histogram.png", "confusion_matrix.png", "worst_cases.png"]
    for png in ("pr_curves.png", "iou_histogram.png", "confusion_matrix.png", "worst_cases.png"):
        img = cv2.imread(str(out / png))
        assert img is not None and img.shape[0] > 100, png
    report = (out / "report.md").read_text()
    assert "| hole | 1 | 0.739 |" in report and "![worst_cases.png](worst_cases.png)" in report
    assert "Accuracy **33.33%** (1/3 images), at the per-class thresholds calibrated on val." in report
    assert "| true type | good | hole | scratch |" in report and "| scratch | 1 | 0 | 0 |" in report
    assert "| hole | 1 | 0 | 0.00% |" in report and "![confusion_matrix.png](confusion_matrix.png)" in report
    per_image = json.loads((out / "per_image.json").read_text())
    assert [p["image_id"] for p in per_image] == [1, 2, 3] and per_image[2]["fp_pixels"] == 20
    assert not list(tmp.glob(".report*"))  # no temporary folder or journal left
    # a second run replaces the folder as a whole: no stale thresholds.json of the run with val
    assert evaluate.main(["--gt", str(gt), "--pred", str(tmp / "pred.json"), "--out", str(out), "--no-plots"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "metrics.json", "per_image.json", "report.md"]
    m = json.loads((out / "metrics.json").read_text())
    assert m["calibrated"] is None
    # without val: --default-threshold 0.25, said so; the 0.3 false positive now makes the good image a hole
    assert m["image_classification"]["thresholds"]["source"] == "default_threshold"
    assert m["image_classification"]["confusion_matrix"]["counts"] == [[0, 1, 0], [0, 1, 0], [0, 0, 1]]
    assert "image type accuracy 0.667 at score >= 0.25 (--default-threshold; no val calibration)" in \
        capsys.readouterr().out


def test_evaluate_without_images_skips_the_overlay_grid(tmp_path):
    gt = make_gt(tmp_path / "gt.json")  # no info.image_root
    (tmp_path / "pred.json").write_text(json.dumps([]))
    assert evaluate.main(["--gt", str(gt), "--pred", str(tmp_path / "pred.json"), "--out", str(tmp_path / "r")]) == 0
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert m["plots"] == ["pr_curves.png", "iou_histogram.png", "confusion_matrix.png"]
    assert not (tmp_path / "r" / "worst_cases.png").exists()
    assert m["mask_iou"]["mean_instance"] == 0.0 and m["calibrated"] is None


@pytest.mark.parametrize("problem, content, message", [
    ("unknown ids", [{"image_id": 42, "category_id": 1, "bbox": [0, 0, 2, 2], "score": 0.5}],
     "image id(s) not in"),
    ("malformed", '[{"image_id": 1,', "not valid JSON"),
    ("missing", None, "missing (no such COCO results file)"),
    ("negative box width", [{"image_id": 1, "category_id": 1, "bbox": [30, 10, -20, 20], "score": 0.9}],
     "entry 0 has bbox [30, 10, -20, 20] with a negative width or height"),
    ("not a list", {"annotations": []}, "not a COCO results list"),
])
def test_evaluate_bad_input_is_one_line_and_exit_2(tmp_path, capsys, problem, content, message):
    gt = make_gt(tmp_path / "gt.json")
    p = tmp_path / "pred.json"
    if content is not None:
        p.write_text(content if isinstance(content, str) else json.dumps(content))
    out = tmp_path / "report"
    assert evaluate.main(["--gt", str(gt), "--pred", str(p), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {p}: ") and message in err[0]
    assert not out.exists() and not list(tmp_path.glob(".report*"))


def test_calibrate_cli_writes_the_thresholds_file(tmp_path, capsys):
    gt = make_gt(tmp_path / "val.json")
    preds = perfect_preds() + [pred(3, 2, rect(0, 0, 5, 5), 0.95), pred(1, 1, rect(40, 40, 5, 5), 0.2)]
    (tmp_path / "p.json").write_text(json.dumps(preds))
    out = tmp_path / "thresholds.json"
    assert calibrate.main(["--gt", str(gt), "--pred", str(tmp_path / "p.json"), "--out", str(out), "--default", "0.3"]) == 0
    doc = json.loads(out.read_text())
    # hole: the 0.2 false positive is cut at 0.9 (F1 1); scratch: its 0.95 false positive outranks the TP: 0.9, F1 2/3
    assert doc["thresholds"] == {"hole": pytest.approx(0.9), "scratch": pytest.approx(0.9)} and doc["default"] == 0.3
    assert doc["stats"]["scratch"]["f1"] == pytest.approx(2 / 3)
    assert "calibrated 2/2 classes" in capsys.readouterr().out
    (tmp_path / "p.json").write_text("{")
    assert calibrate.main(["--gt", str(gt), "--pred", str(tmp_path / "p.json"), "--out", str(tmp_path / "t2.json")]) == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'p.json'}: not valid JSON")
    assert not (tmp_path / "t2.json").exists()


@pytest.mark.parametrize("command, required, options", [
    ("evaluate", "--gt g --pred p --out o", ["--val-pred", "--score-threshold", "--force", "(default: 200)"]),
    ("calibrate", "--gt g --pred p --out o", ["--iou", "(default: 0.25)"]),
    ("report", "--run r", ["--top-k", "--force", "(default: 4)"]),
])
def test_every_command_has_help_and_no_seed(command, required, options):
    res = subprocess.run([sys.executable, "-m", "defect_vision", command, "--help"], cwd=REPO, capture_output=True,
                         text=True)
    assert res.returncode == 0 and res.stdout.startswith(f"usage: defect-vision {command} ")
    text = " ".join(res.stdout.split())  # argparse wraps lines
    assert all(o in text for o in options) and "--seed" not in text
    res = subprocess.run([sys.executable, "-m", "defect_vision", command, *required.split(), "--seed", "0"], cwd=REPO,
                         capture_output=True, text=True)
    assert res.returncode == 2 and res.stderr.strip().endswith("error: unrecognized arguments: --seed 0")


def test_predictions_on_a_folder_are_matched_to_the_gt_by_path(case, capsys):
    """inference on a folder numbers images 1..N; its image_ids.json maps them to the GT's ids by resolved path."""
    tmp, gt, _ = case
    root = Path(json.loads(gt.read_text())["info"]["image_root"])
    run = tmp / "predict"
    run.mkdir()
    # folder order: an extra image outside the split first, then the split's images in reverse: ids all shifted
    files = ["train/good/000.png", "test/good/003.png", "test/defect/002.png", "test/defect/001.png"]
    (run / "image_ids.json").write_text(json.dumps(
        [{"id": i, "file_name": f, "path": str(root / f)} for i, f in enumerate(files, 1)]))
    folder_id = {1: 4, 2: 3, 3: 2}  # GT id -> folder id
    preds = [{**p, "image_id": folder_id[p["image_id"]]} for p in perfect_preds()]
    preds.append(pred(1, 1, rect(0, 0, 5, 5), 0.9))  # on the image outside the split: ignored
    (run / "predictions.json").write_text(json.dumps(preds))
    assert evaluate.main(["--gt", str(gt), "--pred", str(run / "predictions.json"), "--out", str(tmp / "r"), "--no-plots"]) == 0
    err = capsys.readouterr().err
    assert "predictions on 1 image(s) outside" in err
    m = json.loads((tmp / "r" / "metrics.json").read_text())
    assert m["mask_iou"]["mean_instance"] == 1.0 and m["coco"]["segm"]["AP"] == pytest.approx(1.0)
    assert m["counts"]["predictions"] == 2 and m["inputs"]["image_ids_matched_by_path"] is True

    # a listing of another dataset's images is an error, not a silent match of equal ids
    (run / "image_ids.json").write_text(json.dumps(
        [{"id": i, "file_name": f, "path": str(tmp / "elsewhere" / f)} for i, f in enumerate(files, 1)]))
    assert evaluate.main(["--gt", str(gt), "--pred", str(run / "predictions.json"), "--out", str(tmp / "r2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: {run / 'image_ids.json'}: none of its 4 images is in {gt}")
    assert not (tmp / "r2").exists()


def test_predictions_on_the_gt_json_keep_their_ids_after_the_images_moved(case):
    tmp, gt, _ = case
    run = tmp / "predict"
    run.mkdir()
    images = json.loads(gt.read_text())["images"]
    (run / "image_ids.json").write_text(json.dumps(
        [{"id": im["id"], "file_name": im["file_name"], "path": str(tmp / "moved" / im["file_name"])} for im in images]))
    (run / "predictions.json").write_text(json.dumps(perfect_preds()))
    assert evaluate.main(["--gt", str(gt), "--pred", str(run / "predictions.json"), "--out", str(tmp / "r"), "--no-plots"]) == 0
    m = json.loads((tmp / "r" / "metrics.json").read_text())
    assert m["mask_iou"]["mean_instance"] == 1.0 and m["inputs"]["image_ids_matched_by_path"] is False


def test_an_out_path_that_is_a_file_is_a_one_line_error(tmp_path, capsys):
    gt = make_gt(tmp_path / "gt.json")
    (tmp_path / "p.json").write_text(json.dumps(perfect_preds()))
    (tmp_path / "taken").write_text("a file, not a folder")
    assert evaluate.main(["--gt", str(gt), "--pred", str(tmp_path / "p.json"), "--out", str(tmp_path / "taken")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {tmp_path / 'taken'}: ")
    assert (tmp_path / "taken").read_text() == "a file, not a folder" and not list(tmp_path.glob(".taken.*"))
    assert calibrate.main(["--gt", str(gt), "--pred", str(tmp_path / "p.json"), "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path}: is a folder, not a file (the thresholds json goes there)"


def _run(gt: Path, pred: Path, out: Path, *extra: str) -> int:
    return evaluate.main(["--gt", str(gt), "--pred", str(pred), "--out", str(out), "--no-plots", *extra])


def test_evaluate_never_replaces_a_folder_it_did_not_write(tmp_path, capsys):
    gt = make_gt(tmp_path / "gt.json")
    (tmp_path / "p.json").write_text(json.dumps(perfect_preds()))
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("the user's")
    assert _run(gt, tmp_path / "p.json", out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {out}: folder exists and is not a previous evaluate output (no {MARKER} in it); "
                   "pass --force to replace it, or choose another folder"]
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and not list(tmp_path.glob(".mine*"))
    # another command's output is refused too
    (out / MARKER).write_text(json.dumps({"kind": "report"}))
    assert _run(gt, tmp_path / "p.json", out) == 2
    assert "is a report output, not a evaluate one" in capsys.readouterr().err
    # --force replaces it as a whole
    assert _run(gt, tmp_path / "p.json", out, "--force") == 0
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "metrics.json", "per_image.json", "report.md"]
    assert json.loads((out / "metrics.json").read_text())["coco"]["segm"]["AP"] == pytest.approx(1.0)


@pytest.mark.parametrize("where", ["folder of the GT", "folder of the predictions", "parent of the GT folder"])
def test_evaluate_refuses_an_out_folder_that_holds_an_input_even_with_force(tmp_path, capsys, where):
    data = tmp_path / "data"
    data.mkdir()
    gt = make_gt(data / "gt.json")
    run = tmp_path / "run"
    run.mkdir()
    (run / "predictions.json").write_text(json.dumps(perfect_preds()))
    out = {"folder of the GT": data, "folder of the predictions": run, "parent of the GT folder": tmp_path}[where]
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert _run(gt, run / "predictions.json", out, "--force") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {out}: output folder holds the input ")
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_box_only_results_evaluate_through_the_cli(tmp_path, capsys):
    """Issue 9: COCO bbox results (no segmentation) used to fail in pycocotools ("Argument 'bb' has incorrect
    type"); they give box AP, and the mask figures come from the boxes, said in metrics.json, summary and report."""
    gt = make_gt(tmp_path / "gt.json")
    boxes = [{k: v for k, v in p.items() if k != "segmentation"} for p in perfect_preds()]
    (tmp_path / "p.json").write_text(json.dumps(boxes))
    assert _run(gt, tmp_path / "p.json", tmp_path / "r") == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "box AP50 1.000" in line and "mask figures from boxes: 2/2 predictions are box-only" in line
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert m["coco"]["bbox"]["AP"] == pytest.approx(1.0) and m["coco"]["segm"]["AP"] == pytest.approx(1.0)
    assert m["inputs"]["mask_source"] == "boxes" and m["counts"]["predictions_without_mask"] == 2
    assert "**Note: mask figures from boxes: 2/2 predictions" in (tmp_path / "r" / "report.md").read_text()


def test_negative_box_width_is_refused_naming_the_entry(tmp_path, capsys):
    """Issue 10: a box with negative width used to pass silently (box AP50 1.000 -> 0.901)."""
    gt = make_gt(tmp_path / "gt.json")
    preds = perfect_preds()
    x, y, w, h = preds[1]["bbox"]
    preds[1]["bbox"] = [x + w, y, -w, h]
    (tmp_path / "p.json").write_text(json.dumps(preds))
    assert _run(gt, tmp_path / "p.json", tmp_path / "r") == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: {tmp_path / 'p.json'}: entry 1 has bbox [45.0, 40.0, -40.0, 10.0] with a negative width or height "
        "(expected [x, y, w, h])"]
    assert not (tmp_path / "r").exists()


def test_calibrate_never_overwrites_its_input(tmp_path, capsys):
    gt = make_gt(tmp_path / "val.json")
    (tmp_path / "p.json").write_text(json.dumps(perfect_preds()))
    before = gt.read_text()
    assert calibrate.main(["--gt", str(gt), "--pred", str(tmp_path / "p.json"), "--out", str(gt)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {gt}: is an input of this command; choose another output file"
    assert gt.read_text() == before and sorted(p.name for p in tmp_path.iterdir()) == ["p.json", "val.json"]


def test_val_gt_without_val_pred_is_a_usage_error(tmp_path, capsys):
    gt = make_gt(tmp_path / "gt.json")
    with pytest.raises(SystemExit) as exc:
        evaluate.main(["--gt", str(gt), "--pred", str(gt), "--out", str(tmp_path / "r"), "--val-gt", str(gt)])
    assert exc.value.code == 2 and "--val-gt and --val-pred go together" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
