"""Good-only anomaly maps for unknown defects (issue 21): train-anomaly, predict --anomaly, evaluate's figures."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from defect_vision.data.synthetic import make_category

pytest.importorskip("anomalib")

CLI = [sys.executable, "-m", "defect_vision"]
TINY = ["--method", "draem", "--image-size", "32", "--base-width", "4", "--epochs", "2", "--batch", "8", "--no-progress"]


def run(args, cwd):
    return subprocess.run(CLI + [str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=300, check=False)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A tiny category (64 px), converted, with a trained DRAEM model and a silent random detector."""
    w = tmp_path_factory.mktemp("anomaly")
    make_category(w / "data", "toy_an", defects=("hole", "stain"), per_defect=5, combined=0, good_train=6, good_test=3,
                  contrast=1.0, gray_every=0, size=64, seed=3)
    assert run(["convert", "--category", "toy_an", "--root", "data", "--out", "datasets", "--no-progress"], w).returncode == 0
    r = run(["train-anomaly", "--category", "toy_an", "--root", "data", "--splits", "datasets/splits/toy_an.json",
             "--out", "runs/toy_an/anomaly", *TINY], w)
    assert r.returncode == 0, r.stderr
    from defect_vision.models.random_init import save_random_detector

    save_random_detector(w / "runs/det.pt", ["hole", "stain"], score_bias=-10, imgsz=64)
    return w


def test_train_anomaly_fits_on_good_training_images_only_and_calibrates_on_val(work):
    from defect_vision.data.source import DatasetSource
    from defect_vision.training.anomaly import anomaly_images

    meta = json.loads((work / "runs/toy_an/anomaly/anomaly.json").read_text())
    split = json.loads((work / "datasets/splits/toy_an.json").read_text())
    assert (work / "runs/toy_an/anomaly/model.pt").stat().st_size > 1000
    assert json.loads((work / "runs/toy_an/anomaly/.defect-vision.json").read_text())["kind"] == "train-anomaly"
    _, train, val = anomaly_images(DatasetSource(work / "data", "toy_an"), work / "datasets/splits/toy_an.json")
    names = {r.file_name for r in train}
    assert names and all(r.is_good for r in train)
    assert not names & set(split["splits"]["val"] + split["splits"]["test"])
    assert names == {f for f in split["splits"]["train"] + split["unused_good"] if "good" in f}
    assert meta["train_images"] == len(train) and meta["val"]["images"] == len(split["splits"]["val"]) == len(val)
    assert meta["method"] == "draem" and meta["category"] == "toy_an" and meta["image_hw"] == [64, 64]
    assert meta["map_scale"] >= meta["map_threshold"] > 0 and meta["val"]["defect_images"] > 0


def test_predict_anomaly_writes_heat_maps_scores_and_unknown_detections_that_evaluate_reads(work):
    r = run(["predict", "--detector", "runs/det.pt", "--box-only", "--source", "datasets/coco/toy_an/instances_test.json",
             "--anomaly", "runs/toy_an/anomaly", "--out", "runs/pred", "--quiet"], work)
    assert r.returncode == 0, r.stderr
    pred = work / "runs/pred"
    entries = json.loads((pred / "image_ids.json").read_text())
    summary = json.loads((pred / "summary.json").read_text())
    assert entries and summary["anomaly"]["category_id"] == 3 and summary["anomaly"]["images"] == len(entries)
    for e in entries:
        heat = cv2.imread(str(pred / e["anomaly_map"]), cv2.IMREAD_UNCHANGED)
        assert heat.dtype == np.uint16 and heat.shape == (e["height"], e["width"])
        top = round(65535 * min(1.0, e["anomaly_score"] / summary["anomaly"]["map_scale"]))
        assert abs(int(heat.max()) - top) <= 1
    preds = json.loads((pred / "predictions.json").read_text())
    assert preds and {p["category_id"] for p in preds} == {3}  # the detector is silent: every box is an unknown defect
    e = run(["evaluate", "--gt", "datasets/coco/toy_an/instances_test.json", "--pred", pred / "predictions.json",
             "--out", "runs/eval", "--no-plots"], work)
    assert e.returncode == 0, e.stderr
    m = json.loads((work / "runs/eval/metrics.json").read_text())
    assert m["counts"]["predictions"] == 0  # the named figures never count the anomaly detections
    a = m["anomaly"]
    assert a["named"]["pixel_auroc"] == 0.5 and a["fusion"]["pixel_auroc"] == a["map"]["pixel_auroc"]
    assert 0.0 <= a["map"]["pixel_auroc"] <= 1.0 and a["map"]["image_auroc"] is not None
    rec = a["recall"]
    gt = json.loads((work / "datasets/coco/toy_an/instances_test.json").read_text())
    names = {c["id"]: c["name"] for c in gt["categories"]}
    assert set(rec) == {names[a["category_id"]] for a in gt["annotations"]} and all(r["named"] == 0 for r in rec.values())
    assert sum(r["instances"] for r in rec.values()) == m["counts"]["gt_instances"]
    from defect_vision.evaluation.report_anomaly import anomaly_section

    html = anomaly_section(work / "runs")  # runs/eval/metrics.json
    assert "heat map alone" in html and all(name in html for name in rec)
    assert anomaly_section(work / "runs/pred") == ""


def test_without_anomaly_the_run_and_its_metrics_are_as_before(work):
    r = run(["predict", "--detector", "runs/det.pt", "--box-only", "--source", "datasets/coco/toy_an/instances_test.json",
             "--out", "runs/plain", "--quiet"], work)
    assert r.returncode == 0, r.stderr
    entries = json.loads((work / "runs/plain/image_ids.json").read_text())
    assert entries and all("anomaly_map" not in e for e in entries)
    assert not (work / "runs/plain/anomaly_maps").exists()
    assert "anomaly" not in json.loads((work / "runs/plain/summary.json").read_text())
    from defect_vision.evaluation.metrics import EvalConfig, evaluate

    m = evaluate(work / "datasets/coco/toy_an/instances_test.json", work / "runs/plain/predictions.json", EvalConfig(plots=False))
    assert "anomaly" not in m.to_dict() and m.counts["images"] == len(entries)


def test_the_named_detections_and_their_figures_are_the_plain_runs(work):
    from defect_vision.evaluation.metrics import EvalConfig, evaluate
    from defect_vision.models.random_init import save_random_detector

    save_random_detector(work / "runs/det_on.pt", ["hole", "stain"], score_bias=0.0, imgsz=64)  # detects everywhere
    base = ["predict", "--detector", "runs/det_on.pt", "--box-only", "--max-det", "3", "--source",
            "datasets/coco/toy_an/instances_test.json", "--quiet", "--force"]
    assert run([*base, "--out", "runs/on_plain"], work).returncode == 0
    r = run([*base, "--out", "runs/on_anomaly", "--anomaly", "runs/toy_an/anomaly"], work)
    assert r.returncode == 0, r.stderr
    plain = json.loads((work / "runs/on_plain/predictions.json").read_text())
    fused = json.loads((work / "runs/on_anomaly/predictions.json").read_text())
    assert plain and [p for p in fused if p["category_id"] != 3] == plain
    gt = work / "datasets/coco/toy_an/instances_test.json"
    a = evaluate(gt, work / "runs/on_plain/predictions.json", EvalConfig(plots=False)).to_dict()
    b = evaluate(gt, work / "runs/on_anomaly/predictions.json", EvalConfig(plots=False)).to_dict()
    assert a["counts"]["predictions"] == len(plain) and "anomaly" in b
    assert {k: v for k, v in a.items() if k != "inputs"} == {k: v for k, v in b.items() if k not in ("inputs", "anomaly")}
    assert b["anomaly"]["named"]["pixel_auroc"] == pytest.approx(a["pixel"]["auroc"], abs=0.02)  # at 1/256 steps


def test_bad_input_is_one_line(work, tmp_path):
    other = run(["predict", "--detector", "runs/det.pt", "--box-only", "--source", "datasets/coco/toy_an/instances_test.json",
                 "--anomaly", "datasets", "--out", "runs/bad1", "--quiet"], work)
    assert other.returncode == 2 and other.stderr.strip().count("\n") == 0 and "anomaly.json" in other.stderr
    assert not (work / "runs/bad1").exists()
    # another category: the same model folder under a json that names another category
    coco = json.loads((work / "datasets/coco/toy_an/instances_test.json").read_text())
    coco["info"]["category"] = "bottle"
    (tmp_path / "other.json").write_text(json.dumps(coco))
    cat = run(["predict", "--detector", "runs/det.pt", "--box-only", "--source", tmp_path / "other.json",
               "--anomaly", "runs/toy_an/anomaly", "--out", "runs/bad2", "--quiet"], work)
    assert cat.returncode == 2 and "category 'toy_an'" in cat.stderr and "'bottle'" in cat.stderr
    assert cat.stderr.strip().count("\n") == 0 and not (work / "runs/bad2").exists()
    # another image size
    cv2.imwrite(str(tmp_path / "big.png"), np.zeros((80, 96, 3), np.uint8))
    size = run(["predict", "--detector", "runs/det.pt", "--box-only", "--source", tmp_path / "big.png",
                "--anomaly", "runs/toy_an/anomaly", "--out", "runs/bad3", "--quiet"], work)
    assert size.returncode == 2 and "80x96" in size.stderr and "64x64" in size.stderr
    assert not (work / "runs/bad3").exists()
    # a category without good training images
    make_category(tmp_path / "data", "nogood", defects=("hole",), per_defect=4, combined=0, good_train=0, good_test=0,
                  size=32, gray_every=0)
    none = run(["train-anomaly", "--category", "nogood", "--root", tmp_path / "data", "--out", tmp_path / "m", *TINY], work)
    assert none.returncode == 2 and "no good training image" in none.stderr and none.stderr.strip().count("\n") == 0
    assert not (tmp_path / "m").exists()


def test_unknown_regions_skip_what_named_boxes_cover():
    from defect_vision.detections import Detections, ImageInfo
    from defect_vision.inference.anomaly import unknown_regions, with_anomalies

    raw = np.zeros((40, 40), np.float32)
    raw[2:8, 2:8] = 0.9  # covered by the named box
    raw[20:30, 25:35] = 0.6  # free: an unknown defect
    raw[35:37, 0:2] = 0.9  # 4 pixels: too small
    boxes, scores = unknown_regions(raw, 0.5, 1.2, np.array([[0, 0, 10, 10]]))
    assert boxes.tolist() == [[25, 20, 35, 30]] and scores == pytest.approx([0.5])
    det = Detections([[0, 0, 10, 10]], [1], [0.8], image=ImageInfo(1, "a.png", 40, 40), class_names=["a", "b"],
                     data={"x": np.array([7])})
    out = with_anomalies(det, boxes, scores)
    assert out.names == ["b", "anomaly"] and out.category_id.tolist() == [2, 3] and out.data["x"].tolist() == [7, 0]


def test_padim_and_patchcore_build_offline_on_a_random_backbone(tmp_path):
    import torch
    import torchvision

    from defect_vision.models.anomaly import (
        AnomalyMeta,
        build_model,
        load_model,
        raw_maps,
        save_model,
        to_input,
    )

    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pth")
    ims = [np.random.default_rng(i).integers(0, 255, (40, 50, 3), dtype=np.uint8) for i in range(2)]
    for method in ("padim", "patchcore"):
        meta = AnomalyMeta(method, "x", 32, backbone="resnet18")
        model = build_model(meta, tmp_path / "r18.pth")
        model.train()
        model(to_input(ims, meta, "cpu"))
        model.fit() if method == "padim" else model.subsample_embedding(0.5)
        save_model(tmp_path, model.eval(), meta)
        _, loaded = load_model(tmp_path)
        a, b = raw_maps(model, ims, meta, "cpu"), raw_maps(loaded, ims, meta, "cpu")
        assert a[0].shape == (40, 50) and np.allclose(a[0], b[0], atol=1e-5) and float(a[0].std()) > 0


def test_pipeline_switches_add_the_stages_and_leave_the_plain_plan_alone(tmp_path):
    from dataclasses import replace

    from defect_vision.cli.pipeline import PipelineConfig, plan

    (tmp_path / "toy" / "test").mkdir(parents=True)
    plain = PipelineConfig("toy", root=tmp_path, datasets=tmp_path / "ds", runs=tmp_path / "runs", from_scratch=True)
    both = replace(plain, anomaly=True, anomaly_args=["--epochs", "3"], classify=True, classify_args=["--epochs", "2"])
    before, after = plan(plain).stages, plan(both).stages
    assert before and [s.name for s in before] == [s.name for s in after if s.name not in ("anomaly", "classify")]
    named = {s.name: s.argv for s in after}
    assert named["anomaly"][:2] == ["train-anomaly", "--category"] and named["anomaly"][-2:] == ["--epochs", "3"]
    assert named["classify"][0] == "classify" and str(tmp_path / "runs/toy/classify") in named["classify"]
    plain_predict = {s.name: s.argv for s in before}["predict"]
    assert named["predict"] == [*plain_predict, "--anomaly", str(tmp_path / "runs/toy/anomaly")]
    assert "--anomaly" not in {s.name: s.argv for s in after}["predict_val"]


def test_train_anomaly_takes_every_reader_option_convert_takes(tmp_path):
    """The pipeline hands its reader options to convert and to train-anomaly alike: a labelling tool's export
    (--format labelstudio --annotations ...) reaches train-anomaly's DatasetSource as it reaches convert's."""
    from dataclasses import replace

    from defect_vision.cli import convert, train_anomaly
    from defect_vision.cli.pipeline import PipelineConfig, plan

    (tmp_path / "ls").mkdir()
    reader = ["--format", "labelstudio", "--annotations", str(tmp_path / "export.json"), "--strict", "--min-area", "3"]
    config = replace(PipelineConfig("parts", root=tmp_path / "ls", datasets=tmp_path / "ds", runs=tmp_path / "runs",
                                    from_scratch=True, anomaly=True), reader_args=reader)
    stages = {s.name: s.argv for s in plan(config).stages}
    ours = train_anomaly.config_from_args(train_anomaly.build_parser("x").parse_args(stages["anomaly"][1:])).source
    theirs = convert.build_parser("x").parse_args(stages["convert"][1:])
    assert (ours.format, ours.annotations, ours.strict, ours.min_area) == ("labelstudio", tmp_path / "export.json", True, 3)
    assert (theirs.layout, theirs.annotations, theirs.strict, theirs.min_area) == ("labelstudio", tmp_path / "export.json", True, 3)


@pytest.mark.slow
def test_the_ray_engine_carries_heat_maps_scores_and_unknown_detections(work):
    pytest.importorskip("ray.data", reason="Ray Data is not installed (pip install 'defect-vision[distributed]')")
    common = ["predict", "--detector", "runs/det.pt", "--box-only", "--source", "datasets/coco/toy_an/instances_test.json",
              "--anomaly", "runs/toy_an/anomaly", "--quiet", "--force"]
    local = run([*common, "--out", "runs/local"], work)
    ray = run([*common, "--out", "runs/ray", "--engine", "ray", "--num-workers", "1"], work)
    assert local.returncode == 0 and ray.returncode == 0, ray.stderr
    a, b = (json.loads((work / f"runs/{k}/image_ids.json").read_text()) for k in ("local", "ray"))
    assert a and a == b and all("anomaly_map" in e for e in a)
    assert json.loads((work / "runs/local/predictions.json").read_text()) == json.loads((work / "runs/ray/predictions.json").read_text())
    for e in a:  # the same numbers up to float rounding across thread counts (1 of 65535)
        x, y = (cv2.imread(str(work / f"runs/{k}" / e["anomaly_map"]), cv2.IMREAD_UNCHANGED).astype(int) for k in ("local", "ray"))
        assert x.shape == y.shape and np.abs(x - y).max() <= 1
    ray_anomaly = json.loads((work / "runs/ray/summary.json").read_text())["anomaly"]
    assert ray_anomaly["category_id"] == 3 and ray_anomaly["map_scale"] > 0
