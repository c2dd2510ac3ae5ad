"""The evaluation CLIs end to end on a hand-built split: outputs, numbers, plots, and bad input."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from evaluation import calibrate, evaluate
from test_evaluation_metrics import H, W, make_gt, perfect_preds, pred, rect, shifted_preds

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
    out.mkdir()
    (out / "index.html").write_text("kept")  # someone else's file in the report folder survives
    rc = evaluate.main(["--gt", str(gt), "--pred", str(tmp / "pred.json"), "--out", str(out),
                        "--val-gt", str(val), "--val-pred", str(tmp / "val_pred.json")])
    assert rc == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("evaluated 3 images (2 defect, 1 good), 3 predictions") and str(out) in line
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
    th = json.loads((out / "thresholds.json").read_text())
    assert th["default"] == 0.25 and th["thresholds"]["hole"] == pytest.approx(0.9)
    assert (out / "index.html").read_text() == "kept"
    for png in ("pr_curves.png", "iou_histogram.png", "worst_cases.png"):
        img = cv2.imread(str(out / png))
        assert img is not None and img.shape[0] > 100, png
    report = (out / "report.md").read_text()
    assert "| hole | 1 | 0.739 |" in report and "![worst_cases.png](worst_cases.png)" in report
    per_image = json.loads((out / "per_image.json").read_text())
    assert [p["image_id"] for p in per_image] == [1, 2, 3] and per_image[2]["fp_pixels"] == 20
    assert not list(tmp.glob(".report.*"))  # no temporary folder left


def test_evaluate_without_images_skips_the_overlay_grid(tmp_path):
    gt = make_gt(tmp_path / "gt.json")  # no info.image_root
    (tmp_path / "pred.json").write_text(json.dumps([]))
    assert evaluate.main(["--gt", str(gt), "--pred", str(tmp_path / "pred.json"), "--out", str(tmp_path / "r")]) == 0
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert m["plots"] == ["pr_curves.png", "iou_histogram.png"] and not (tmp_path / "r" / "worst_cases.png").exists()
    assert m["mask_iou"]["mean_instance"] == 0.0 and m["calibrated"] is None


@pytest.mark.parametrize("problem, content, message", [
    ("unknown ids", [{"image_id": 42, "category_id": 1, "bbox": [0, 0, 2, 2], "score": 0.5}],
     "image id(s) not in"),
    ("malformed", '[{"image_id": 1,', "not valid JSON"),
    ("missing", None, "no such file"),
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
    assert not out.exists() and not list(tmp_path.glob(".report.*"))


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


def test_help_lists_options_and_defaults():
    res = subprocess.run([sys.executable, "-m", "evaluation.evaluate", "--help"], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 0 and "--val-pred" in res.stdout and "default: 200" in res.stdout


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
    assert capsys.readouterr().err.strip() == f"error: {tmp_path}: cannot write (Is a directory)"
