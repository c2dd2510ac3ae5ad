"""`defect-vision export` of a SAM 2 / 2.1 run and `predict --backend onnxruntime|openvino` on it: the encoder (the
embedding and the two high-resolution maps) and the box decoder as ONNX, the family's square-resize transform in the
manifest, masks equal to the torch backend's (mask IoU >= 0.99 per box), the encoder once per image with boxes, bad
input in one line.

A random-init sam2.1_test run (256 px Hiera) with a tiny random YOLO-World detector (64 px)."""
from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from fixtures.predict_parity import mask_iou

from defect_vision.cli import main
from defect_vision.data.images import read_image
from defect_vision.data.mvtec import read_category
from defect_vision.masks import decode_rle
from defect_vision.models.random_init import save_random_detector, save_random_sam

PICKS = ["test/hole/000.png", "test/good/000.png", "test/stain/002.png", "test/hole/001.png"]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """2 shared cores: one intra-op thread is several times faster for these tiny torch models."""
    from defect_vision.devices import intra_op_threads

    with intra_op_threads(1):
        yield


@pytest.fixture(scope="module")
def category(synthetic_root):
    return read_category(synthetic_root, "toy_wood")


@pytest.fixture(scope="module")
def exported(category, tmp_path_factory) -> dict:
    """runs/<C> with a sam2.1_test best.pth (best.json names the type), exported by `defect-vision export --run`."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    run = tmp_path_factory.mktemp("runs") / "toy_wood"
    save_random_detector(run / "yolo_world" / "best.pt", category.defect_types, score_bias=0.0, imgsz=64)
    save_random_sam(run / "sam" / "best.pth", "sam2.1_test", seed=1)
    (run / "sam" / "best.json").write_text(json.dumps({"model_type": "sam2.1_test"}))
    start = time.perf_counter()
    assert main(["export", "--run", str(run)]) == 0
    return {"run": run, "dir": run / "onnx", "seconds": time.perf_counter() - start}





def backends() -> list[str]:
    return ["onnxruntime"] + (["openvino"] if importlib.util.find_spec("openvino") else [])


def test_export_writes_the_sam2_encoder_with_its_three_maps_and_the_box_decoder(exported):
    import onnx

    d = exported["dir"]
    m = json.loads((d / "manifest.json").read_text())
    sam = m["sam"]
    assert sam["family"] == "sam2" and sam["model_type"] == "sam2.1_test" and sam["image_size"] == 256
    assert sam["embedding_shape"] == [256, 16, 16] and sam["high_res_shapes"] == [[32, 64, 64], [64, 32, 32]]
    assert sam["low_res_size"] == [64, 64] and sam["box_labels"] == [2, 3]
    assert sam["pixel_mean"] == pytest.approx([0.485, 0.456, 0.406]) and sam["pixel_std"] == pytest.approx([0.229, 0.224, 0.225])
    assert sam["input_transform"].startswith("square resize")  # not SAM's longest side + pad
    names = {}
    for key in ("encoder", "decoder"):
        graph = onnx.load(str(d / sam[key])).graph
        names[key] = ([i.name for i in graph.input], [o.name for o in graph.output])
    maps = ["image_embeddings", "high_res_feats_0", "high_res_feats_1"]
    assert names["encoder"] == (["image"], maps)
    assert names["decoder"] == ([*maps, "point_coords", "point_labels"], ["low_res_masks", "iou_predictions"])
    assert exported["seconds"] < 60  # detector + SAM 2 test config (measured here: ~10 s on 2 shared cores)


def test_predict_on_gt_boxes_matches_the_torch_backend_and_runs_the_encoder_once_per_image(exported, category, tmp_path):
    """predict --gt-boxes (3 images with boxes, one good image): per box mask IoU >= 0.99 and SAM 2's IoU within 1e-4
    of torch's on onnxruntime and OpenVINO; the encoder once per image with boxes (none for the good one)."""
    from conftest import write_instances

    gt = write_instances(category, PICKS, tmp_path / "instances_test.json")
    run, d = exported["run"], exported["dir"]

    def predict(*extra: str, out: Path) -> tuple[list[dict], dict]:
        assert main(["predict", "--source", str(gt), "--gt-boxes", str(gt), "--sam", str(run / "sam" / "best.pth"),
                     *extra, "--out", str(out), "--quiet"]) == 0
        return json.loads((out / "predictions.json").read_text()), json.loads((out / "summary.json").read_text())

    ref, ref_summary = predict(out=tmp_path / "torch")
    n_boxes = len(json.loads(gt.read_text())["annotations"])
    assert len(ref) == n_boxes >= 4 and ref_summary["sam_encoder_calls"] == 3
    for backend in backends():
        got, summary = predict("--backend", backend, "--onnx", str(d), out=tmp_path / backend)
        assert summary["config"]["backend"] == backend and len(got) == n_boxes
        assert summary["sam_encoder_calls"] == summary["sam_decoder_calls"] == 3, backend
        for a, b in zip(ref, got):
            assert (a["image_id"], a["bbox"]) == (b["image_id"], b["bbox"])
            assert mask_iou(a["segmentation"], b["segmentation"]) >= 0.99, backend
        assert sum(int(decode_rle(a["segmentation"]).sum()) for a in ref) > 0


def test_library_masks_match_torch_on_a_non_square_image_in_both_runtimes(exported, category):
    """The square resize of a 200x120 image and boxes of 1 and several: masks at IoU >= 0.99, SAM 2's IoU within 1e-4."""
    from defect_vision import DefectPredictor, PredictConfig
    from defect_vision.inference.onnx_sam2 import OnnxSam2Segmenter

    run = exported["run"]
    rec = next(r for r in category.images if len(r.instances) >= 2)
    pixels, gt = read_image(rec.path), rec.to_detections(category.defect_types)
    sx, sy = 200 / pixels.shape[1], 120 / pixels.shape[0]
    pixels = np.ascontiguousarray(cv2.resize(pixels, (200, 120)))
    gt.xyxy = gt.xyxy * np.array([sx, sy, sx, sy])
    torch_p = DefectPredictor.from_run(run, PredictConfig(device="cpu"))
    for backend in backends():
        onnx_p = DefectPredictor.from_run(run, PredictConfig(), backend=backend)
        assert isinstance(onnx_p.segmenter, OnnxSam2Segmenter)
        for keep in (np.arange(1), np.arange(len(gt))):
            a, b = torch_p.segment(pixels, gt[keep]), onnx_p.segment(pixels, gt[keep])
            assert len(a.rle) == len(b.rle) == len(keep) and b.rle[0]["size"] == [120, 200]
            assert min(mask_iou(x, y) for x, y in zip(a.rle, b.rle)) >= 0.99, backend
            assert np.abs(a.data["sam_iou"] - b.data["sam_iou"]).max() < 1e-4, backend
            assert sum(int(decode_rle(x).sum()) for x in a.rle) > 0


def test_encoder_once_per_image_with_boxes_none_without_and_chunked_masks(exported, category):
    from defect_vision import DefectPredictor, PredictConfig
    from defect_vision.detections import Detections

    onnx_p = DefectPredictor.from_run(exported["run"], PredictConfig(), backend="onnxruntime")
    seg = onnx_p.segmenter
    runs = {"encoder": 0, "decoder": 0}
    for name in runs:
        real = getattr(seg, name).run

        def counting(*args, _name=name, _real=real, **kwargs):
            runs[_name] += 1
            return _real(*args, **kwargs)

        getattr(seg, name).run = counting
    rec = next(r for r in category.images if len(r.instances) >= 2)
    pixels, gt = read_image(rec.path), rec.to_detections(category.defect_types)
    empty = onnx_p.segment(pixels, Detections.empty(class_names=category.defect_types))
    assert empty.rle == [] and runs == {"encoder": 0, "decoder": 0} and seg.encoder_calls == 0
    one = onnx_p.segment(pixels, gt[np.arange(len(gt))]).rle
    assert runs == {"encoder": 1, "decoder": 1} and (seg.encoder_calls, seg.decoder_calls) == (1, 1)
    chunks, seg.budget = seg.upsample_chunks, 5 * pixels.shape[0] * pixels.shape[1]  # one box per chunk
    many = onnx_p.segment(pixels, gt[np.arange(len(gt))]).rle
    assert seg.upsample_chunks - chunks == len(gt) >= 2 and runs == {"encoder": 2, "decoder": 2}
    assert [r["counts"] for r in many] == [r["counts"] for r in one]


def test_a_sam2_export_with_a_vit_model_type_is_one_line_and_writes_nothing(exported, category, tmp_path, capsys):
    d = exported["dir"]
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "a.png"), cv2.imread(str(category.images[0].path)))
    for backend in backends():
        out = tmp_path / f"out_{backend}"
        assert main(["predict", "--source", str(images), "--backend", backend, "--onnx", str(d), "--model-type", "vit_b",
                     "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert err == f"error: --model-type vit_b: the export {d} holds a sam2.1_test SAM", err
        assert not out.exists()
    # exporting the SAM 2 checkpoint as a vit_b: one line naming the file, nothing written
    run = exported["run"]
    out = tmp_path / "onnx_vit"
    assert main(["export", "--run", str(run), "--model-type", "vit_b", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: {run / 'sam' / 'best.pth'}: a sam2.1_test checkpoint, not of the sam family of "
                   "--model-type vit_b; try --model-type sam2.1_test"), err
    assert not out.exists()
