"""The library's stages as plain Python functions over typed configs, chained as the README shows (small models)."""
from __future__ import annotations

import json

import pytest

import defect_vision as dv


@pytest.mark.slow
def test_every_stage_from_python(easy_root, tmp_path, one_thread):
    ds, run = tmp_path / "datasets", tmp_path / "runs" / "toy_easy"
    exported = dv.convert(dv.DatasetSource(easy_root, "toy_easy"), ds, config=dv.ConvertConfig(progress=False))
    assert set(exported.outputs) == {"coco", "yolo", "voc", "sam"} and exported.split_created
    det = dv.finetune_detector(dv.DetectorTrainConfig(
        "toy_easy", ds / "yolo/toy_easy/data.yaml", ds / "coco/toy_easy", run / "yolo_world", from_scratch=True,
        model_cfg="yolov8n-worldv2.yaml", text_encoder="random", embedding_cache=None, epochs=1, imgsz=64, batch=8,
        workers=0, plots=False, device="cpu"))
    assert det["classes"] == ["hole", "scratch", "stain"] and det["epochs"] == 1
    sam = dv.finetune_sam(dv.SamTrainConfig(ds / "sam/toy_easy", run / "sam", model_type="vit_tiny", from_scratch=True,
                                            epochs=1, device="cpu", quiet=True))
    assert sam["model_type"] == "vit_tiny" and len(sam["history"]) == 2  # epoch 0 (start model) + 1
    predictor = dv.DefectPredictor.from_run(run, conf=0.0, device="cpu")
    gt_test = ds / "coco/toy_easy/instances_test.json"
    summary = dv.predict_run(predictor, gt_test, run / "predict", dv.RunOptions(progress=False))
    n_test = len(json.loads(gt_test.read_text())["images"])
    assert summary.images == n_test and (run / "predict" / "predictions.json").is_file()
    metrics = dv.evaluate(gt_test, run / "predict" / "predictions.json", out=run / "eval")
    m = metrics.to_dict()
    assert m["counts"]["images"] == n_test and m["counts"]["predictions"] == sum(summary.detections.values())
    assert 0.0 <= m["pixel"]["auroc"] <= 1.0 and (run / "eval" / "metrics.json").is_file()
    assert metrics.summary_line().startswith(f"evaluated {n_test} images")
    # the one record round-trips through COCO
    data = dv.load_coco(gt_test)
    back = tmp_path / "roundtrip.json"
    dv.save_coco(data, back)
    again = dv.load_coco(back, image_root=data.image_root)
    assert [im.file_name for im in again.images] == [im.file_name for im in data.images]
    for image_id, gt in data.detections.items():
        assert (again.detections[image_id].masks == gt.masks).all()
        assert again.detections[image_id].category_id.tolist() == gt.category_id.tolist()
