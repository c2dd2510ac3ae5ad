"""`defect-vision report` / evaluation.write_report: the numbers on the page, the best/worst choice, output-folder
safety, and a real headless Chromium rendering it."""
from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from defect_vision.cli import report
from defect_vision.evaluation import write_report
from defect_vision.io import MARKER
from defect_vision.masks import encode_rle

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
SIZE = 64


def square(x: int, y: int, s: int) -> np.ndarray:
    m = np.zeros((SIZE, SIZE), bool)
    m[y:y + s, x:x + s] = True
    return m


IMAGE_TYPES = {"accuracy": 0.5, "correct": 2, "images": 4,
               "per_class": {"good": {"images": 2, "correct": 1, "recall": 0.5},
                             "hole": {"images": 2, "correct": 1, "recall": 0.5}},
               "confusion_matrix": {"labels": ["good", "hole"], "rows": "true type", "columns": "predicted type",
                                    "counts": [[1, 1], [1, 1]]},
               "thresholds_used": "at the per-class thresholds calibrated on val"}


def make_run(tmp: Path, weights: str = "random-init", image_types: bool = False) -> tuple[Path, Path]:
    """A run folder in the contract's layout: 4 test images with known IoUs (1.0, 0.5, 0.0 on a good image, 1.0 good);
    with `image_types`, eval/metrics.json has evaluate's image-level defect-type block (IMAGE_TYPES)."""
    cat = tmp / "data" / "toy"
    gt_masks = {1: square(10, 10, 20), 2: square(0, 0, 20), 3: None, 4: None}
    pred_masks = {1: square(10, 10, 20), 2: square(0, 0, 20) & (np.arange(SIZE)[None, :] < 10),  # IoU 0.5
                  3: square(40, 40, 8), 4: None}
    images, anns = [], []
    for i, name in ((1, "test/hole/000.png"), (2, "test/hole/001.png"), (3, "test/good/000.png"), (4, "test/good/001.png")):
        (cat / name).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(cat / name), np.full((SIZE, SIZE, 3), 90 + 20 * i, np.uint8))
        images.append({"id": i, "file_name": name, "height": SIZE, "width": SIZE,
                       "defect_type": name.split("/")[1], "is_good": gt_masks[i] is None})
        if gt_masks[i] is not None:
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": 1, "bbox": [0, 0, 1, 1], "area": 1,
                         "iscrowd": 0, "segmentation": encode_rle(gt_masks[i])})
    gt = {"info": {"image_root": str(cat), "category": "toy", "split": "test"}, "images": images, "annotations": anns,
          "categories": [{"id": 1, "name": "hole", "prompt": "hole", "supercategory": "toy"}]}
    gt_path = tmp / "instances_test.json"
    gt_path.write_text(json.dumps(gt))
    run = tmp / "runs" / "toy"
    preds = [{"image_id": i, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.9, "segmentation": encode_rle(m)}
             for i, m in pred_masks.items() if m is not None]
    files = {
        "yolo_world/best.json": {"classes": ["hole"], "category_ids": [1], "prompts": ["hole"], "text_encoder": "random",
                                 "weights": weights, "metrics": {"zero_shot": None, "fine_tuned": {
                                     "map50": 0.125, "map50_95": 0.0625, "per_class": {"hole": 0.25}}}},
        "sam/best.json": {"model_type": "vit_tiny", "data": "x", "epochs": 1, "val_iou_start": 0.2,
                          "val_iou_best": 0.375, "weights": weights},
        "eval/metrics.json": {"mask_iou": {"mean_instance": 0.75, "mean_image": 0.625, "good_fp_images": 1,
                                           "per_class": {"hole": {"mean_instance": 0.75, "mean_image": 0.5}}},
                              "coco": {"bbox": {"AP": 0.5, "AP50": 0.875, "AP75": 0.25,
                                                "per_class": {"hole": {"AP": 0.5, "AP50": 0.875}}},
                                       "segm": {"AP": 0.4375, "AP50": 0.8125, "AP75": 0.25,
                                                "per_class": {"hole": {"AP": 0.4375, "AP50": 0.8125}}}},
                              "calibrated": {"mask_iou": {"mean_instance": 0.71875}},
                              "pixel": {"auroc": 0.9375, "aupro": 0.6875, "max_f1": 0.5625, "region_max_f1": 0.53125},
                              "image_auroc": float("nan")},
        "eval_gt_boxes/metrics.json": {"mask_iou": {"mean_instance": 0.8125}, "coco": {"segm": {"AP": 0.59375}},
                                       "pixel": {"auroc": 0.96875}},
        "predict/predictions.json": preds,
    }
    if image_types:
        files["eval/metrics.json"]["image_classification"] = IMAGE_TYPES
    for rel, obj in files.items():
        (run / rel).parent.mkdir(parents=True, exist_ok=True)
        (run / rel).write_text(json.dumps(obj))
    cv2.imwrite(str(run / "eval" / "pr_curve.png"), np.full((20, 30, 3), 200, np.uint8))
    return run, gt_path


def test_scores_best_and_worst_images(tmp_path):
    run, gt_path = make_run(tmp_path)
    rep = write_report(run, run / "report", gt_path, top_k=2)
    ious = {s.file_name: s.iou for s in [*rep.best, *rep.worst]}
    assert ious == {"test/hole/000.png": 1.0, "test/good/001.png": 1.0, "test/good/000.png": 0.0,
                    "test/hole/001.png": pytest.approx(0.5)}
    assert [s.file_name for s in rep.best] == ["test/hole/000.png", "test/good/001.png"]  # defect image first on ties
    assert [s.file_name for s in rep.worst] == ["test/good/000.png", "test/hole/001.png"]
    for s in [*rep.best, *rep.worst]:
        thumb = cv2.imread(str(run / "report" / s.thumb))
        assert thumb is not None and thumb.shape == (SIZE, SIZE, 3)
    # the perfect prediction is drawn red inside the green ground-truth outline
    t = cv2.cvtColor(cv2.imread(str(run / "report" / rep.best[0].thumb)), cv2.COLOR_BGR2RGB).astype(int)
    assert t[20, 20, 0] > t[20, 20, 1] + 50 and t[10, 20, 1] > t[10, 20, 0] + 50


def test_report_json_holds_every_stage_and_page_shows_smoke(tmp_path, capsys):
    run, gt_path = make_run(tmp_path)
    assert report.main(["--run", str(run), "--gt", str(gt_path)]) == 0
    assert capsys.readouterr().out.strip() == (f"report: {run / 'report' / 'index.html'} (SMOKE RUN, random-init weights; "
                                               "mask IoU 0.750, pixel AUROC 0.938; 4 thumbnails; 0 missing inputs)")
    data = json.loads((run / "report" / "report.json").read_text())
    assert data["smoke"] is True and data["weights"]["detector"] == "random-init"
    assert data["detector"] == {"zero_shot": None, "fine_tuned": {"map50": 0.125, "map50_95": 0.0625}}
    seg, seg_gt = data["segmentation"]["detected_boxes"], data["segmentation"]["gt_boxes"]
    assert (seg["mask_iou_instance"], seg["bbox_AP50"], seg["pixel_auroc"], seg["aupro"], seg["max_f1"]) == \
        (0.75, 0.875, 0.9375, 0.6875, 0.5625)
    assert seg["image_auroc"] is None  # NaN shows as n/a, not as a number
    assert seg["mask_iou_calibrated"] == 0.71875
    assert (seg_gt["mask_iou_instance"], seg_gt["segm_AP"], seg_gt["aupro"]) == (0.8125, 0.59375, None)
    assert data["sam_finetune"]["val_iou_best"] == 0.375
    assert data["per_class"] == [{"class": "hole", "det_map50": 0.25, "mask_iou": 0.75, "bbox_AP": 0.5, "segm_AP": 0.4375}]
    page = (run / "report" / "index.html").read_text()
    assert 'class="banner smoke"' in page and "SMOKE RUN" in page and "nothing about model" in page
    assert "box AP is 1 and image AUROC is 1" in page  # the GT-box row's perfect numbers are explained, not claimed
    for shown in ("0.719", "0.125", "0.938", "0.688", "0.812", "0.594", "not run"):
        assert shown in page
    assert (run / "report" / "plots" / "pr_curve.png").is_file()
    assert data["image_classification"] is None and 'id="image-classification"' not in page  # an older metrics.json


def test_thumbnails_use_the_calibrated_thresholds(tmp_path):
    run, gt_path = make_run(tmp_path)
    preds = json.loads((run / "predict" / "predictions.json").read_text())
    preds[2]["score"] = 0.1  # the false positive on test/good/000.png falls below the hole threshold
    (run / "predict" / "predictions.json").write_text(json.dumps(preds))
    (run / "eval" / "thresholds.json").write_text(json.dumps({"thresholds": {"hole": 0.3}, "default": 0.25}))
    rep = write_report(run, run / "report", gt_path, top_k=4)
    ious = {s.file_name: s.iou for s in [*rep.best, *rep.worst]}
    assert ious["test/good/000.png"] == 1.0 and ious["test/hole/001.png"] == pytest.approx(0.5)
    assert rep.thumb_thresholds == str(run / "eval" / "thresholds.json")
    assert "calibrated on val" in (run / "report" / "index.html").read_text()


@pytest.mark.parametrize("detector, sam, banner", [
    ("official", "official", "official"),
    ("official", "checkpoint", "custom"),  # defect_vision.training.sam's word for a --checkpoint that is not the default file
    ("official", "random-init", "smoke"),
])
def test_banner_follows_the_weights_of_both_models(tmp_path, detector, sam, banner):
    run, gt_path = make_run(tmp_path, weights=detector)
    meta = json.loads((run / "sam" / "best.json").read_text())
    (run / "sam" / "best.json").write_text(json.dumps({**meta, "weights": sam}))
    rep = write_report(run, gt=gt_path)
    page = (run / "report" / "index.html").read_text()
    assert rep.smoke is (banner == "smoke") and ("SMOKE RUN" in page) is (banner == "smoke")
    assert f'class="banner {banner}"' in page and f"SAM {sam}" in page


def test_bad_input_is_one_line_error_and_leaves_nothing(tmp_path, capsys):
    assert report.main(["--run", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'nope'}: no such run folder"
    run, gt_path = make_run(tmp_path)
    (run / "eval" / "metrics.json").write_text("{broken")
    assert report.main(["--run", str(run), "--gt", str(gt_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {run / 'eval' / 'metrics.json'}: not valid JSON")
    assert not (run / "report").exists() and not list(run.glob(".report*"))


CHECK_JS = """<script>
window.addEventListener('load', () => {
  const imgs = [...document.images].map(i => ({src: i.getAttribute('src'), ok: i.complete && i.naturalWidth > 0,
                                                 w: i.getBoundingClientRect().width}));
  const tables = [...document.querySelectorAll('table')].map(t => ({id: t.id, rows: t.tBodies[0].rows.length,
                                                                     h: t.getBoundingClientRect().height}));
  const pre = document.createElement('pre'); pre.id = 'check';
  pre.textContent = JSON.stringify({imgs, tables, banner: getComputedStyle(document.getElementById('weights')).backgroundColor});
  document.body.appendChild(pre);
});
</script>"""


def render_in_chromium(index: Path) -> dict:
    """Load the page in headless Chromium; return what the browser rendered (images decoded, table sizes)."""
    probe = index.with_name("_probe.html")
    probe.write_text(index.read_text().replace("</body>", CHECK_JS + "</body>"))
    with tempfile.TemporaryDirectory() as profile:
        cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    probe.unlink()
    m = re.search(r'<pre id="check">(.*?)</pre>', out.stdout, re.S)
    assert m, f"chromium rendered no probe result (rc {out.returncode}): {out.stderr[-2000:]}"
    return json.loads(html.unescape(m.group(1)))


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (Debian: apt-get install chromium); "
                                              ".ci/run installs it when it can")
def test_chromium_renders_tables_and_thumbnails(tmp_path):
    run, gt_path = make_run(tmp_path, image_types=True)
    write_report(run, run / "report", gt_path, top_k=2)
    seen = render_in_chromium(run / "report" / "index.html")
    tables = {t["id"]: t for t in seen["tables"]}
    assert set(tables) == {"detector", "segmentation", "sam-finetune", "per-class", "image-classification",
                           "image-type-recall"}
    assert tables["image-classification"]["rows"] == 3 and tables["image-type-recall"]["rows"] == 2
    assert any(i["src"] == "plots/confusion_matrix.png" and i["ok"] and i["w"] > 0 for i in seen["imgs"])
    assert tables["detector"]["rows"] == 2 and tables["segmentation"]["rows"] == 2
    assert all(t["h"] > 20 for t in tables.values())
    thumbs = [i for i in seen["imgs"] if i["src"].startswith("thumbs/")]
    assert len(thumbs) == 4 and all(i["ok"] and i["w"] > 0 for i in thumbs), seen["imgs"]
    assert any(i["src"] == "plots/pr_curve.png" and i["ok"] for i in seen["imgs"])
    assert seen["banner"] == "rgb(253, 226, 225)"  # the smoke-run banner is styled, not plain text


def test_negative_top_k_is_refused(tmp_path, capsys):
    run, gt_path = make_run(tmp_path)
    assert report.main(["--run", str(run), "--gt", str(gt_path), "--top-k", "-1"]) == 2
    assert capsys.readouterr().err.strip() == "error: --top-k -1: must be >= 0"
    assert not (run / "report").exists()


def test_report_replaces_only_its_own_folder(tmp_path, capsys):
    run, gt_path = make_run(tmp_path)
    out = run / "report"
    assert report.main(["--run", str(run), "--gt", str(gt_path), "--top-k", "1"]) == 0
    assert json.loads((out / MARKER).read_text())["kind"] == "report" and len(list((out / "thumbs").iterdir())) == 2
    data = json.loads((out / "report.json").read_text())
    assert str(gt_path) in data["inputs"] and str(run / "predict" / "predictions.json") in data["inputs"]
    # a re-run replaces the whole folder: no thumbnail of the previous run is left over
    assert report.main(["--run", str(run), "--gt", str(gt_path), "--top-k", "0"]) == 0
    assert list((out / "thumbs").iterdir()) == []
    capsys.readouterr()
    # a folder that is not a report output is refused, untouched, unless --force
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("the user's")
    assert report.main(["--run", str(run), "--gt", str(gt_path), "--out", str(mine)]) == 2
    assert capsys.readouterr().err.strip() == (f"error: {mine}: folder exists and is not a previous report output "
                                               f"(no {MARKER} in it); pass --force to replace it, or choose another folder")
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    assert report.main(["--run", str(run), "--gt", str(gt_path), "--out", str(mine), "--force"]) == 0
    assert (mine / "index.html").is_file() and not (mine / "notes.txt").exists()


@pytest.mark.parametrize("out", ["run", "run/eval", "gt folder"])
def test_report_never_replaces_a_folder_holding_what_it_reads(tmp_path, capsys, out):
    run, gt_path = make_run(tmp_path)
    target = {"run": run, "run/eval": run / "eval", "gt folder": gt_path.parent}[out]
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert report.main(["--run", str(run), "--gt", str(gt_path), "--out", str(target), "--force"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {target}: output folder holds the input ")
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_page_says_when_mask_figures_come_from_boxes(tmp_path):
    run, gt_path = make_run(tmp_path)
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    metrics["counts"] = {"predictions": 3, "predictions_without_mask": 3}
    (run / "eval" / "metrics.json").write_text(json.dumps(metrics))
    rep = write_report(run, gt=gt_path)
    note = "mask figures from boxes: 3/3 predictions are box-only (no segmentation), each box taken as its mask"
    assert rep.notes == [f"SAM on detected boxes: {note}"]
    assert f'<p class="mask-note"><b>Note</b>: SAM on detected boxes: {note}.</p>' in (run / "report" / "index.html").read_text()


def _rows(page: str, table_id: str) -> list[list[str]]:
    body = re.search(rf'<table id="{table_id}">.*?<tbody>(.*?)</tbody>', page, re.S).group(1)
    return [[html.unescape(re.sub("<[^>]+>", "", c)) for c in re.findall(r"<td>(.*?)</td>", row)]
            for row in re.findall(r"<tr>(.*?)</tr>", body)]


def test_image_type_accuracy_is_shown_beside_the_seed_reports(tmp_path):
    """eval/metrics.json's image-level defect type: accuracy beside the seed reports' 75.0% (capsule) and 76.92%
    (wood), recall per true type, and the confusion matrix (drawn from metrics.json when eval has no plot)."""
    run, gt_path = make_run(tmp_path, image_types=True)
    (run / "pipeline.json").write_text(json.dumps({"category": "wood"}))
    rep = write_report(run, gt=gt_path)
    assert rep.image_classification["accuracy"] == 0.5 and rep.image_classification["plot"] == "plots/confusion_matrix.png"
    page = (run / "report" / "index.html").read_text()
    assert _rows(page, "image-classification") == [
        ["this run: detections, at the per-class thresholds calibrated on val", "wood", "4", "50.00%"],
        ["seed report: EfficientNet_v2_l at 512 px (best test accuracy)", "capsule", "", "75.0%"],
        ["seed report: ResNet18 with layer4 unfrozen (same category)", "wood", "", "76.92%"]]
    assert _rows(page, "image-type-recall") == [["good", "2", "50.00%"], ["hole", "2", "50.00%"]]
    plot = cv2.imread(str(run / "report" / "plots" / "confusion_matrix.png"))
    assert plot is not None and plot.shape[0] > 150
    assert page.count('src="plots/confusion_matrix.png"') == 1  # in its section, not again among the eval plots
    assert 'src="plots/pr_curve.png"' in page
    # evaluate's own plot, when the eval folder has it, is the one shown
    mark = np.zeros((30, 40, 3), np.uint8)
    mark[:, :, 2] = 255
    cv2.imwrite(str(run / "eval" / "confusion_matrix.png"), mark)
    write_report(run, gt=gt_path)
    assert (run / "report" / "plots" / "confusion_matrix.png").read_bytes() == \
        (run / "eval" / "confusion_matrix.png").read_bytes()
    assert (run / "report" / "index.html").read_text().count('src="plots/confusion_matrix.png"') == 1
