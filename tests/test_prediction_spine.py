"""The prediction spine (issue 18): one detector and one segmenter interface for every backend, one per-batch step,
configs never changed once made, one thresholds rule for every backend, library errors naming fields and the CLI
flags, and the API refusing an empty array in one line."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import write_instances

from defect_vision.cli.predict import main
from defect_vision.data.images import read_image
from defect_vision.data.mvtec import read_category
from defect_vision.detections import ImageInfo
from defect_vision.errors import ConfigError, DatasetError
from defect_vision.inference.config import PredictConfig
from defect_vision.inference.predictor import DefectPredictor
from defect_vision.models.random_init import save_random_detector, save_random_sam

PICKS = ["test/combined/000.png", "test/good/000.png", "test/hole/000.png"]


@pytest.fixture(scope="module")
def category(synthetic_root):
    return read_category(synthetic_root, "toy_wood")


@pytest.fixture(scope="module")
def run(category, tmp_path_factory) -> Path:
    """A run folder: detector (scores ~0.5 everywhere), vit_tiny SAM, no thresholds.json yet."""
    root = tmp_path_factory.mktemp("runs") / "toy_wood"
    save_random_detector(root / "yolo_world" / "best.pt", category.defect_types, score_bias=0.0, imgsz=64)
    save_random_sam(root / "sam" / "best.pth", "vit_tiny")
    (root / "sam" / "best.json").write_text(json.dumps({"model_type": "vit_tiny"}))
    return root


@pytest.fixture(scope="module")
def images(category, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("images")
    for f in PICKS:
        (d / f.replace("/", "_")).write_bytes((category.root / f).read_bytes())
    return d


@pytest.fixture(scope="module")
def gt_json(category, tmp_path_factory) -> Path:
    """instances_test.json of PICKS (the converters' format)."""
    return write_instances(category, PICKS, tmp_path_factory.mktemp("gt") / "instances_test.json")


def predict(args: list[str], out: Path) -> tuple[list, dict]:
    assert main([*args, "--out", str(out), "--quiet", "--max-det", "3"]) == 0
    return json.loads((out / "predictions.json").read_text()), json.loads((out / "summary.json").read_text())


def thresholds_file(path: Path, per_class: dict, default: float, calibrated: bool) -> Path:
    stats = {n: {"f1": 0.0, "precision": 0.0, "recall": 0.0, "gt": 0, "predictions": 0, "calibrated": calibrated}
             for n in per_class}
    path.write_text(json.dumps({"thresholds": per_class, "default": default, "stats": stats}))
    return path


# ---------------------------------------------------------------- item 10: one thresholds rule

def test_an_uncalibrated_thresholds_json_never_beats_an_explicit_conf(run, images, category, tmp_path):
    """The demo's thresholds.json that calibrated nothing (0.25 everywhere) used to win over --conf 0.01."""
    th = thresholds_file(run / "thresholds.json", {n: 0.25 for n in category.defect_types}, 0.25, calibrated=False)
    try:
        preds, summary = predict(["--run", str(run), "--source", str(images), "--conf", "0.6"], tmp_path / "a")
        assert summary["thresholds"] == {"source": "conf", "default": 0.6, "per_class": {}}
        assert all(p["score"] >= 0.6 for p in preds)
        _, summary = predict(["--run", str(run), "--source", str(images)], tmp_path / "b")
        assert summary["thresholds"] == {"source": "conf", "default": 0.25, "per_class": {}}  # nothing calibrated
    finally:
        th.unlink()


def test_the_rule_named_thresholds_then_conf_then_the_runs_calibrated_file(run, images, category, tmp_path):
    names = category.defect_types
    th = thresholds_file(run / "thresholds.json", {names[0]: 0.99}, 0.2, calibrated=True)
    mine = thresholds_file(tmp_path / "mine.json", {names[1]: 0.7}, None, calibrated=True)
    try:
        _, implied = predict(["--run", str(run), "--source", str(images)], tmp_path / "implied")
        assert implied["thresholds"] == {"source": "run", "default": 0.2, "per_class": {names[0]: 0.99}}
        assert names[0] not in implied["detections_per_class"] and implied["detections"] > 0
        _, conf = predict(["--run", str(run), "--source", str(images), "--conf", "0.3"], tmp_path / "conf")
        assert conf["thresholds"] == {"source": "conf", "default": 0.3, "per_class": {}}
        _, named = predict(["--run", str(run), "--source", str(images), "--conf", "0.3", "--thresholds", str(mine)],
                           tmp_path / "named")  # its classes its value, the others --conf (it has no default)
        assert named["thresholds"] == {"source": "thresholds", "default": 0.3, "per_class": {names[1]: 0.7}}
        api = DefectPredictor.from_run(run, conf=0.3)  # the API follows the same rule
        assert api.thresholds.describe(api.class_names) == conf["thresholds"]
        assert DefectPredictor.from_run(run).thresholds.describe(names) == implied["thresholds"]
    finally:
        th.unlink()


# ---------------------------------------------------------------- configs never change; errors name fields or flags

def test_configs_are_never_changed_and_from_run_derives_its_own(run):
    given = PredictConfig(conf=0.4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        given.conf = 0.5  # type: ignore[misc]
    p = DefectPredictor.from_run(run, given, max_det=7)
    assert given == PredictConfig(conf=0.4) and given.max_det == 100 and given.run_thresholds is None
    assert (p.config.conf, p.config.max_det) == (0.4, 7)
    with pytest.raises(TypeError, match="unknown option 'confidence'"):
        DefectPredictor.from_run(run, confidence=0.3)


def test_the_library_names_fields_and_the_cli_names_flags(run, images, tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"^conf 1.5: must be within \[0, 1\]$"):
        PredictConfig(conf=1.5)
    with pytest.raises(ConfigError, match=r"^max_det 0: must be >= 1$"):
        PredictConfig(max_det=0)
    with pytest.raises(ConfigError, match=r"^sam: required unless box_only or masks detector$"):
        from defect_vision.inference.run import predict_files

        predict_files(run / "yolo_world" / "best.pt", None, PredictConfig(), images, tmp_path / "x")
    for args, line in [(["--conf", "1.5"], "error: --conf 1.5: must be within [0, 1]"),
                       (["--max-det", "0"], "error: --max-det 0: must be >= 1"),
                       (["--sam-batch", "0"], "error: --sam-batch 0: must be >= 1"),
                       (["--batch", "0"], "error: --batch 0: must be >= 1"),
                       (["--detector", str(run / "yolo_world" / "best.pt")], "error: --sam: required unless --box-only or --masks detector"),
                       (["--sam", str(run / "sam" / "best.pth")], "error: --detector: required unless --gt-boxes gives the boxes")]:
        rc = main(["--source", str(images), "--out", str(tmp_path / "o"), "--quiet", *args])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and err == line and not (tmp_path / "o").exists()


# ---------------------------------------------------------------- one interface per role, one per-batch step

def test_every_backend_implements_the_two_interfaces():
    from defect_vision.inference.detector import Detector
    from defect_vision.inference.gt_boxes import GtBoxes
    from defect_vision.inference.interfaces import BoxDetector, BoxMasks, BoxSegmenter
    from defect_vision.inference.onnx_backend import OnnxDetector, OnnxSegmenter
    from defect_vision.inference.segmenter import Segmenter

    assert all(issubclass(c, BoxDetector) for c in (Detector, OnnxDetector, GtBoxes))
    assert all(issubclass(c, BoxSegmenter) for c in (Segmenter, OnnxSegmenter, BoxMasks))
    for c in (Detector, GtBoxes):
        assert c.predict is not BoxDetector.predict
    for c in (Segmenter, OnnxSegmenter, BoxMasks):
        assert c.segment_batch is not BoxSegmenter.segment_batch


def test_ground_truth_boxes_are_just_another_detector(run, gt_json, category):
    from defect_vision.coco import load_coco
    from defect_vision.inference.gt_boxes import GtBoxes

    gt = load_coco(gt_json, masks=False)
    predictor = DefectPredictor.from_run(run, box_only=True)
    infos = [ImageInfo(im.id, im.file_name, path=im.path) for im in gt.images]
    with_gt = predictor.with_detector(GtBoxes.match(gt_json, infos, same_json=True))
    pixels = [read_image(im.path) for im in gt.images]
    dets = with_gt.run_batch(pixels, infos)
    assert len(dets) == 3 and sum(len(d) for d in dets) == sum(len(gt.detections[i.id]) for i in infos) > 0
    for d, info, px in zip(dets, infos, pixels):
        np.testing.assert_array_equal(d.xyxy, gt.detections[info.id].xyxy)
        assert (d.image.id, d.image.height, d.image.width) == (info.id, *px.shape[:2])  # stamped by run_batch
        assert np.all(d.score == 1.0) and len(d.rle) == len(d)
    assert predictor.detector is not with_gt.detector and predictor.class_names == category.defect_types


def test_box_masks_are_the_boxes_pixel_centres_inside(run):
    from defect_vision.inference.interfaces import BoxMasks
    from defect_vision.inference.writers import box_rles

    boxes = np.array([[0.4, 1.6, 5.5, 4.4], [2, 2, 2, 3], [-3, -3, 100, 100]], np.float32)
    image = np.zeros((5, 8, 3), np.uint8)
    crops, iou = BoxMasks().segment_batch([image], [boxes])[0]
    assert [c.rle() for c in crops] == box_rles(boxes, 5, 8) and iou.tolist() == [1.0, 1.0, 1.0]
    assert [int(c.full().sum()) for c in crops] == [5 * 2, 0, 40]  # columns 0-4, rows 2-3


# ---------------------------------------------------------------- item 15: the API and an empty array

def test_an_empty_array_is_one_line_in_the_api(run):
    predictor = DefectPredictor.from_run(run, box_only=True)
    for shape in [(0, 5, 3), (4, 0, 3), (0, 0, 3)]:
        with pytest.raises(DatasetError, match=rf"^image 1: an empty {shape[0]}x{shape[1]} array \(no pixels to predict\)$"):
            predictor(np.zeros(shape, np.uint8))
    assert len(predictor(np.zeros((32, 48, 3), np.uint8)).class_names) == len(predictor.class_names)


def test_ground_truth_boxes_with_an_unknown_class_name_say_so(gt_json, run, images, tmp_path, capsys):
    """Ground-truth boxes cannot embed a new name: an unknown --classes name is the class filter's one line."""
    rc = main(["--source", str(gt_json), "--gt-boxes", str(gt_json), "--box-only", "--classes", "hole", "bogus",
               "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: --classes: unknown class name(s) bogus (known: ") and "\n" not in err


def test_predict_refuses_an_empty_array_too(run):
    predictor = DefectPredictor.from_run(run, box_only=True)
    with pytest.raises(DatasetError, match=r"^image 1: an empty 0x5 array"):
        predictor.predict([np.zeros((0, 5, 3), np.uint8)])
