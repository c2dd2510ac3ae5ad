"""YOLOE detectors on the YOLO-World path: train-detector on a random-init YOLOE -seg yaml (no MobileCLIP), best.pt
in ultralytics.YOLOE, predict through the same Detector (new names through the fine-tuned projection), the three
mask sources, and YOLOE files given where only YOLO-World goes."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from defect_vision.cli.convert import main as convert_main
from defect_vision.cli.predict import main as predict_main
from defect_vision.cli.train_detector import main as train_main
from defect_vision.models.text_embeddings import random_embed

TINY = ["--from-scratch", "--model-cfg", "yoloe-11n-seg.yaml", "--text-encoder", "random", "--imgsz", "64",
        "--batch", "8", "--workers", "0", "--no-plots", "--epochs", "2"]


@pytest.fixture(autouse=True)
def no_mobileclip(monkeypatch):
    """Any path to YOLOE's own text model (MobileCLIP, a download) fails the test (ultralytics' text_model module
    cannot even be imported here: its `clip` requirement is not installed)."""
    from ultralytics.nn.tasks import YOLOEModel

    def refuse(*args, **kwargs):
        raise AssertionError("YOLOE's MobileCLIP text model was reached (a download)")

    monkeypatch.setattr(YOLOEModel, "get_text_pe", refuse)


@pytest.fixture(scope="module")
def seg_data(easy_root, tmp_path_factory) -> tuple[Path, Path]:
    """toy_easy converted with polygon labels (--task segment): (data.yaml, coco folder)."""
    out = tmp_path_factory.mktemp("seg_export")
    assert convert_main(["--category", "toy_easy", "--root", str(easy_root), "--out", str(out), "--formats", "yolo",
                         "coco", "--task", "segment", "--no-progress"]) == 0
    return out / "yolo" / "toy_easy" / "data.yaml", out / "coco" / "toy_easy"


@pytest.fixture(scope="module")
def yoloe_run(seg_data, tmp_path_factory) -> Path:
    data, coco = seg_data
    out = tmp_path_factory.mktemp("yoloe") / "run"
    assert train_main(["--category", "toy", "--data", str(data), "--coco", str(coco), "--out", str(out), *TINY]) == 0
    return out


def test_train_yoloe_seg_from_scratch_loads_in_ultralytics_yoloe(yoloe_run, seg_data):
    from ultralytics import YOLOE
    from ultralytics.nn.tasks import YOLOESegModel

    meta = json.loads((yoloe_run / "best.json").read_text())
    assert meta["family"] == "yoloe" and meta["segment"] is True and meta["text_encoder"] == "random"
    assert meta["classes"] == ["hole", "scratch", "stain"] and meta["weights"] == "random-init"
    ckpt = torch.load(yoloe_run / "best.pt", weights_only=False)
    assert ckpt["defect_vision"]["family"] == "yoloe"
    model = ckpt["model"].float()
    # the baked class embeddings are the classes' text vectors through the checkpoint's own (trained) projection
    raw = random_embed(["hole", "scratch", "stain"]).reshape(1, 3, -1)
    with torch.no_grad():
        want = model.model[-1].get_tpe(raw)
    assert torch.allclose(model.pe.float(), want, atol=2e-3)  # the checkpoint is fp16
    assert not model.model[-1].is_fused  # the text pathway is kept: not closed-set
    yoloe = YOLOE(str(yoloe_run / "best.pt"))
    assert isinstance(yoloe.model, YOLOESegModel) and yoloe.names == {0: "hole", 1: "scratch", 2: "stain"}
    image = next((seg_data[0].parent / "images" / "val").glob("*.png"))
    result = yoloe.predict(str(image), imgsz=64, conf=0.0, device="cpu", verbose=False)[0]
    assert len(result.boxes) > 0 and set(result.boxes.cls.int().tolist()) <= {0, 1, 2}
    assert result.masks is not None and result.masks.data.shape[0] == len(result.boxes)


def _predict(tmp_path, name, source, detector, *extra) -> tuple[list[dict], dict]:
    from defect_vision.models.random_init import save_random_sam

    out = tmp_path / name
    sam = tmp_path / "weights" / "sam.pth"
    if not sam.is_file():
        save_random_sam(sam, "vit_tiny")
    sam_args = [] if "detector" in extra else ["--sam", str(sam), "--model-type", "vit_tiny"]  # masks detector: no SAM
    argv = ["--source", str(source), "--detector", str(detector), "--out", str(out), "--conf", "0.0",
            "--max-det", "5", "--quiet", "--workers", "1", "--imgsz", "64", *sam_args, *extra]
    assert predict_main(argv) == 0
    return (json.loads((out / "predictions.json").read_text()), json.loads((out / "summary.json").read_text()))


def test_predict_boxes_and_a_new_name_through_the_fine_tuned_projection(yoloe_run, seg_data, tmp_path):
    """A new name whose text vector equals 'hole''s detects exactly where 'hole' does: the new vector went through
    the fine-tuned projection (reprta), as the trained ones did."""
    from defect_vision.inference.detector import Detector
    from defect_vision.inference.vocabulary import open_vocabulary

    images = seg_data[0].parent / "images" / "val"
    preds, summary = _predict(tmp_path, "boxes", images, yoloe_run / "best.pt", "--masks", "detector")
    assert preds and {p["category_id"] for p in preds} <= {1, 2, 3}
    assert summary["detector_calls"] >= 1 and summary["sam_encoder_calls"] == 0

    from defect_vision.data.images import read_image

    pixels = read_image(next(images.glob("*.png")))
    det = Detector(yoloe_run / "best.pt", torch.device("cpu"), imgsz=64)
    open_vocabulary(det, ["hole"], det.meta, random_embed)  # a known name: its checkpoint row (pe), nothing encoded
    hole = det.predict([pixels], conf=0.0, max_det=5)[0]
    renamed = Detector(yoloe_run / "best.pt", torch.device("cpu"), imgsz=64)
    encode = lambda prompts: random_embed(["hole" if p == "pit mark" else p for p in prompts])  # noqa: E731
    open_vocabulary(renamed, ["pit mark"], renamed.meta, encode)
    assert renamed.class_names == ["pit mark"] and renamed.category_ids == [4] and det.category_ids == [1]
    new = renamed.predict([pixels], conf=0.0, max_det=5)[0]
    assert len(new) == len(hole) > 0
    np.testing.assert_allclose(new.xyxy, hole.xyxy, atol=1e-3)
    np.testing.assert_allclose(new.score, hole.score, atol=1e-4)


def _mask_by_box(preds: list[dict]) -> dict[tuple, np.ndarray]:
    return {tuple(np.round(p["bbox"], 2)): mask_utils.decode(p["segmentation"]).astype(bool) for p in preds}


def test_masks_detector_sam_and_refine_through_the_same_writer(yoloe_run, seg_data, tmp_path):
    from ultralytics import YOLOE

    image = next((seg_data[0].parent / "images" / "val").glob("*.png"))
    common = ()
    det_preds, det_sum = _predict(tmp_path, "detector", image, yoloe_run / "best.pt", "--masks", "detector")
    sam_preds, sam_sum = _predict(tmp_path, "sam", image, yoloe_run / "best.pt", "--masks", "sam", *common)
    ref_preds, ref_sum = _predict(tmp_path, "refine", image, yoloe_run / "best.pt", "--masks", "refine", *common)
    assert det_sum["sam_encoder_calls"] == 0 and sam_sum["sam_encoder_calls"] == ref_sum["sam_encoder_calls"] == 1
    assert (det_sum["mode"], sam_sum["mode"], ref_sum["mode"]) == ("detector_masks", "detector+sam", "detector+sam")
    boxes = [sorted(tuple(np.round(p["bbox"], 2)) for p in ps) for ps in (det_preds, sam_preds, ref_preds)]
    assert boxes[0] == boxes[1] == boxes[2] and len(boxes[0]) > 0  # same detections, three mask sources
    # --masks detector: ultralytics' own -seg masks at the image's size (retina_masks), box for box
    result = YOLOE(str(yoloe_run / "best.pt")).predict(str(image), imgsz=64, conf=0.0, max_det=5, iou=0.5,
                                                       retina_masks=True, device="cpu", verbose=False)[0]
    # matched by box AND score: a random model gives several detections with the same box
    theirs = [([x0, y0, x1 - x0, y1 - y0], float(score), m.numpy().astype(bool)) for (x0, y0, x1, y1), score, m
              in zip(result.boxes.xyxy.tolist(), result.boxes.conf.tolist(), result.masks.data)]
    matched = 0
    for p in det_preds:
        same = [m for box, score, m in theirs
                if max(abs(a - b) for a, b in zip(box, p["bbox"])) < 0.05 and abs(score - p["score"]) <= 5.1e-6]  # scores: 5 decimals
        if same:
            assert (mask_utils.decode(p["segmentation"]).astype(bool) == same[0]).mean() > 0.999
            matched += 1
    assert matched >= 1
    # refine: SAM got the detector's mask as a prompt, so its masks differ from SAM on the box alone
    sam_masks, ref_masks = _mask_by_box(sam_preds), _mask_by_box(ref_preds)
    assert any((sam_masks[k] != ref_masks[k]).any() for k in sam_masks)


def test_masks_detector_needs_a_seg_detector_one_line(tmp_path, capsys):
    from defect_vision.models.random_init import save_random_detector, save_random_sam

    world = save_random_detector(tmp_path / "world.pt", ["hole"], imgsz=64)
    image = tmp_path / "img.png"
    import cv2

    cv2.imwrite(str(image), np.full((32, 32, 3), 128, np.uint8))
    sam = save_random_sam(tmp_path / "sam.pth", "vit_tiny")
    rc = predict_main(["--source", str(image), "--detector", str(world), "--out", str(tmp_path / "out"),
                       "--masks", "detector", "--sam", str(sam), "--model-type", "vit_tiny", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1
    assert err[0].startswith("error: ") and str(world) in err[0] and "YOLOE -seg" in err[0]
    assert not (tmp_path / "out").exists()


def test_box_labels_for_a_seg_model_and_unknown_yaml_are_one_line(easy_root, tmp_path, capsys):
    out = tmp_path / "export"
    assert convert_main(["--category", "toy_easy", "--root", str(easy_root), "--out", str(out), "--formats", "yolo",
                         "coco", "--no-progress"]) == 0
    data, coco = out / "yolo" / "toy_easy" / "data.yaml", out / "coco" / "toy_easy"
    run = tmp_path / "run"
    rc = train_main(["--category", "toy", "--data", str(data), "--coco", str(coco), "--out", str(run), *TINY])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and err[-1].startswith(f"error: {data}: box labels") and "--task segment" in err[-1]
    assert not run.exists()
    rc = train_main(["--category", "toy", "--data", str(data), "--coco", str(coco), "--out", str(run),
                     "--from-scratch", "--model-cfg", "yolov8n.yaml", "--text-encoder", "random"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and err[-1] == ("error: yolov8n.yaml: not a YOLO-World or YOLOE model yaml (no WorldDetect, "
                                   "YOLOEDetect or YOLOESegment head)")
    assert not run.exists()
