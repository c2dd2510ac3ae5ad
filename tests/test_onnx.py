"""`defect-vision export` (ONNX) and `predict --backend onnxruntime`: files, manifest, parity with torch, bad input.

Tiny random-init checkpoints in the real formats (YOLO-World yolov8n-worldv2 at 64 px, SAM vit_tiny). Tests that need
onnx/onnxruntime (the `[export]` extra) are skipped when they are absent."""
from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
from fixtures.predict_parity import copy_test_images, mask_iou, match, predict

from defect_vision.cli import main
from defect_vision.data.images import read_image
from defect_vision.data.mvtec import read_category
from defect_vision.errors import DatasetError
from defect_vision.masks import decode_rle
from defect_vision.models.random_init import save_random_detector, save_random_sam

IMGSZ = 64
FILES = ("detector.onnx", "sam_image_encoder.onnx", "sam_decoder.onnx")


def needs_onnx() -> None:
    pytest.importorskip("onnx", reason="onnx not installed (pip install 'defect-vision[export]')")
    pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install 'defect-vision[export]')")


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """2 shared cores: one intra-op thread is several times faster for these tiny torch models."""
    from defect_vision.devices import intra_op_threads

    with intra_op_threads(1):
        yield


@pytest.fixture(scope="module")
def category(synthetic_root):
    return read_category(synthetic_root, "toy_wood")


def make_run(run: Path, names: list[str], thresholds: dict | None) -> Path:
    """runs/<C> as the pipeline leaves it: yolo_world/best.pt, sam/best.pth + best.json, thresholds.json."""
    save_random_detector(run / "yolo_world" / "best.pt", names, score_bias=0.0, imgsz=IMGSZ)
    save_random_sam(run / "sam" / "best.pth", "vit_tiny")
    (run / "sam" / "best.json").write_text(json.dumps({"model_type": "vit_tiny"}))
    if thresholds is not None:
        (run / "thresholds.json").write_text(json.dumps(thresholds))
    return run


@pytest.fixture(scope="module")
def exported(category, tmp_path_factory) -> dict:
    """A run, exported by `defect-vision export --run RUN` (default --out RUN/onnx), with any subprocess recorded."""
    needs_onnx()
    run = make_run(tmp_path_factory.mktemp("runs") / "toy_wood", category.defect_types,
                   {"thresholds": {"hole": 0.3, "stain": 0.99}, "default": 0.2})
    commands, real = [], {}
    mp = pytest.MonkeyPatch()
    for name in ("run", "check_output", "check_call", "Popen"):
        real[name] = getattr(subprocess, name)

        def spy(*args, _name=name, **kwargs):
            commands.append(str(args[0] if args else kwargs.get("args")))
            return real[_name](*args, **kwargs)

        mp.setattr(subprocess, name, spy)
    try:
        rc = main(["export", "--run", str(run)])
    finally:
        mp.undo()
    assert rc == 0
    return {"run": run, "dir": run / "onnx", "commands": commands}


@pytest.fixture(scope="module")
def images(category, tmp_path_factory) -> Path:
    """4 test images: 3 defect (one grayscale in the set), 1 good, plus a 160x96 resize (SAM's resize + padding)."""
    return copy_test_images(category, tmp_path_factory.mktemp("images"), 4)


# ---------------------------------------------------------------- export

def test_export_writes_three_onnx_files_and_a_manifest(exported, category, capsys):
    import onnx

    d, run = exported["dir"], exported["run"]
    assert sorted(p.name for p in d.iterdir()) == sorted([*FILES, "manifest.json", "thresholds.json", ".defect-vision.json"])
    assert json.loads((d / ".defect-vision.json").read_text())["kind"] == "export"
    m = json.loads((d / "manifest.json").read_text())
    assert m["format"] == "defect-vision-onnx" and m["version"] == 1 and m["opset"] == 17
    det, sam = m["detector"], m["sam"]
    assert det["class_names"] == category.defect_types and det["imgsz"] == IMGSZ and det["stride"] == 32
    assert det["file"] == "detector.onnx" and det["input"] == "images" and not det["end2end"]
    assert sam["model_type"] == "vit_tiny" and sam["image_size"] == 256
    assert sam["embedding_shape"] == [256, 32, 32] and sam["low_res_size"] == [128, 128]
    assert sam["pixel_mean"] == pytest.approx([123.675, 116.28, 103.53]) and sam["box_labels"] == [2, 3]
    assert json.loads((d / m["thresholds"]).read_text()) == json.loads((run / "thresholds.json").read_text())
    for name in FILES:
        model = onnx.load(str(d / name), load_external_data=False)
        assert {o.domain: o.version for o in model.opset_import}.get("", None) == 17
    # ultralytics' metadata names the classes inside detector.onnx too ("baked in")
    meta = {p.key: p.value for p in onnx.load(str(d / "detector.onnx")).metadata_props}
    assert all(n in meta["names"] for n in category.defect_types)
    # nothing was pip-installed (ultralytics' exporter auto-installs onnxslim/onnxruntime when asked to simplify)
    assert not [c for c in exported["commands"] if "pip" in c or "install" in c], exported["commands"]


def test_export_bad_input_is_one_line_and_writes_nothing(exported, tmp_path, capsys):
    run = exported["run"]
    broken = tmp_path / "broken"
    shutil.copytree(run / "yolo_world", broken / "yolo_world")  # no sam/
    cases = [
        (["--run", str(broken), "--out", str(tmp_path / "o1")], f"{broken / 'sam' / 'best.pth'}: missing"),
        (["--detector", str(run / "sam" / "best.pth"), "--sam", str(run / "sam" / "best.pth"), "--out", str(tmp_path / "o2")],
         "this is a SAM checkpoint"),
        (["--run", str(run), "--thresholds", str(run / "sam" / "best.json"), "--out", str(tmp_path / "o3")],
         f"{run / 'sam' / 'best.json'}: expected"),
        (["--run", str(run), "--opset", "40", "--out", str(tmp_path / "o4")], "--opset 40"),
        (["--detector", str(run / "yolo_world" / "best.pt"), "--out", str(tmp_path / "o5")], "--sam: required"),
    ]
    for argv, expected in cases:
        assert main(["export", *argv]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and expected in err and "\n" not in err, err
    assert not [p for p in tmp_path.iterdir() if p.name != "broken"]  # no output folder, no temporary left


def test_missing_optional_packages_are_one_line_errors(images, monkeypatch, tmp_path, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("onnx", "onnxruntime") else real(name, *a))
    run = make_run(tmp_path / "run", ["hole"], None)
    assert main(["export", "--run", str(run)]) == 2
    assert "ONNX export needs the onnx package, which is not installed (pip install 'defect-vision[export]')" in capsys.readouterr().err
    assert main(["predict", "--run", str(run), "--backend", "onnxruntime", "--source", str(images), "--out", str(tmp_path / "p")]) == 2
    assert "--backend onnxruntime needs the onnxruntime package" in capsys.readouterr().err
    assert not (run / "onnx").exists() and not (tmp_path / "p").exists()


# ---------------------------------------------------------------- parity

def test_onnxruntime_backend_writes_the_same_outputs_as_torch(exported, images, tmp_path):
    run = exported["run"]
    common = ["--run", str(run), "--source", str(images), "--conf", "0.01", "--max-det", "5", "--batch", "2"]
    ref, ref_summary = predict(common, tmp_path / "torch")
    got, summary = predict([*common, "--backend", "onnxruntime", "--workers", "2", "--threads", "2"],  # --onnx: RUN/onnx
                           tmp_path / "ort")
    assert summary["config"]["backend"] == "onnxruntime" and summary["config"]["onnx"] == str(run / "onnx")
    assert summary["parallel"] == {"batch": 2, "workers": 2, "torch_threads_per_worker": 1}  # sessions run at once
    assert summary["device"] == "cpu" and summary["config"]["run_thresholds"] == str(run / "thresholds.json")
    assert len(got) == len(ref) == 5 * 5 and summary["detections_per_class"] == ref_summary["detections_per_class"]
    assert summary["thresholds"] == ref_summary["thresholds"] and summary["thresholds"]["source"] == "conf"  # --conf wins
    for a, b in match(ref, got):
        assert abs(a["score"] - b["score"]) < 1e-4 and np.abs(np.subtract(a["bbox"], b["bbox"])).max() <= 1.0
        assert mask_iou(a["segmentation"], b["segmentation"]) >= 0.99
    for name in ("images", "images_with_detections", "sam_encoder_calls", "sam_decoder_calls", "detector_calls"):
        assert summary[name] == ref_summary[name], name
    ids = {e["id"]: e["mask"] for e in json.loads((tmp_path / "ort" / "image_ids.json").read_text())}
    for image_id, mask in ids.items():
        a = cv2.imread(str(tmp_path / "torch" / mask), cv2.IMREAD_UNCHANGED)
        b = cv2.imread(str(tmp_path / "ort" / mask), cv2.IMREAD_UNCHANGED)
        assert a.shape == b.shape and (a > 0).sum() > 0 and np.array_equal(a > 0, b > 0)


@pytest.fixture(scope="module")
def predictors(exported):
    from defect_vision import DefectPredictor, PredictConfig

    run = exported["run"]
    torch_p = DefectPredictor.from_run(run, PredictConfig(conf=0.01, max_det=5, device="cpu"))
    onnx_p = DefectPredictor.from_run(run, PredictConfig(conf=0.01, max_det=5), backend="onnxruntime")
    return torch_p, onnx_p


def test_sam_on_ground_truth_boxes_matches_torch(predictors, category):
    """Real defect boxes (small, anywhere), square and non-square images: mask IoU >= 0.99 per instance."""
    torch_p, onnx_p = predictors
    recs = [r for r in category.images if r.instances][:4]
    ious, n_pixels = [], 0
    for k, r in enumerate(recs):
        pixels, gt = read_image(r.path), r.to_detections(category.defect_types)
        if k == 3:  # 200x120: SAM resizes the longest side and pads the bottom
            sx, sy = 200 / pixels.shape[1], 120 / pixels.shape[0]
            pixels = np.ascontiguousarray(cv2.resize(pixels, (200, 120)))
            gt.xyxy = gt.xyxy * np.array([sx, sy, sx, sy])
        a = torch_p.segment(pixels, gt[np.arange(len(gt))])
        b = onnx_p.segment(pixels, gt[np.arange(len(gt))])
        assert len(a.rle) == len(b.rle) == len(gt) and a.rle[0]["size"] == list(pixels.shape[:2])
        ious += [mask_iou(x, y) for x, y in zip(a.rle, b.rle)]
        n_pixels += sum(int(decode_rle(x).sum()) for x in a.rle)
        assert np.abs(a.data["sam_iou"] - b.data["sam_iou"]).max() < 1e-4
    assert n_pixels > 0 and min(ious) >= 0.99, ious


def test_detector_boxes_and_their_masks_match_torch_at_another_size(exported, images):
    """The export is dynamic: at imgsz 128 (exported at 64) the raw outputs agree, and with --iou 1.0 (no
    suppression: ties among a random model's equal scores cannot change the set) every candidate box is within
    1 px with the same class and score; SAM's masks of 40 of them agree at IoU >= 0.99."""
    import torch
    from scipy.optimize import linear_sum_assignment

    from defect_vision import DefectPredictor, PredictConfig

    run = exported["run"]
    cfg = dict(conf=0.01, iou=1.0, max_det=400, imgsz=128)
    torch_p = DefectPredictor.from_run(run, PredictConfig(**cfg, device="cpu"))
    onnx_p = DefectPredictor.from_run(run, PredictConfig(**cfg, backend="onnxruntime"))
    pixels = [read_image(p) for p in sorted(images.iterdir())]
    x = torch_p.detector.preprocess(pixels)
    with torch.inference_mode():
        raw = torch_p.detector.model(x)[0].numpy()
    assert raw.shape == (len(pixels), 4 + len(onnx_p.class_names), 16 * 16 + 8 * 8 + 4 * 4)
    assert np.abs(onnx_p.detector.model(x).numpy() - raw).max() < 1e-3
    for k, (a, b) in enumerate(zip(torch_p.detect(pixels), onnx_p.detect(pixels))):
        assert len(a) == len(b) > 100
        # pair the two sets (one to one, least total box difference; another class is 1000 px away)
        cost = np.abs(a.xyxy[:, None] - b.xyxy[None]).max(2) + 1000.0 * (a.class_id[:, None] != b.class_id[None])
        ka, kb = linear_sum_assignment(cost)
        assert np.array_equal(a.class_id[ka], b.class_id[kb]) and np.abs(a.score[ka] - b.score[kb]).max() < 1e-4
        assert cost[ka, kb].max() <= 1.0
        if k == 0:
            pick = ka[np.unique(np.round(a.xyxy[ka]), axis=0, return_index=True)[1][:40]]
            assert len(np.unique(np.round(a.xyxy[pick]), axis=0)) == len(pick) > 20  # varied boxes
            ma, mb = torch_p.segment(pixels[0], a[pick]), onnx_p.segment(pixels[0], a[pick])
            assert min(mask_iou(x, y) for x, y in zip(ma.rle, mb.rle)) >= 0.99


def test_encoder_once_per_image_with_boxes_none_without_and_chunked_masks(predictors, category):
    from defect_vision.detections import Detections

    _, onnx_p = predictors
    seg = onnx_p.segmenter
    runs = {"encoder": 0, "decoder": 0}
    for name in runs:
        sess = getattr(seg, name)
        real = sess.run

        def counting(*args, _name=name, _real=real, **kwargs):
            runs[_name] += 1
            return _real(*args, **kwargs)

        sess.run = counting
    rec = next(r for r in category.images if len(r.instances) >= 2)
    pixels, gt = read_image(rec.path), rec.to_detections(category.defect_types)
    before = seg.encoder_calls
    empty = onnx_p.segment(pixels, Detections.empty(class_names=category.defect_types))
    assert empty.rle == [] and runs == {"encoder": 0, "decoder": 0} and seg.encoder_calls == before
    one = onnx_p.segment(pixels, gt[np.arange(len(gt))]).rle
    assert runs == {"encoder": 1, "decoder": 1} and seg.encoder_calls == before + 1
    chunks, seg.budget = seg.upsample_chunks, 5 * pixels.shape[0] * pixels.shape[1]  # one box per chunk
    try:
        many = onnx_p.segment(pixels, gt[np.arange(len(gt))]).rle
    finally:
        from defect_vision.inference.segmenter import MASK_BUDGET_BYTES

        seg.budget = MASK_BUDGET_BYTES
    assert seg.upsample_chunks - chunks == len(gt) >= 2 and runs == {"encoder": 2, "decoder": 2}
    assert [r["counts"] for r in many] == [r["counts"] for r in one]


def test_torch_backend_ignores_onnx(exported, images, tmp_path):
    preds, summary = predict(["--run", str(exported["run"]), "--source", str(images), "--onnx", str(tmp_path / "nowhere"),
                              "--box-only"], tmp_path / "out")
    assert summary["config"]["backend"] == "torch" and summary["config"]["onnx"] is None


# ---------------------------------------------------------------- bad input for predict --backend onnxruntime

def _copy_export(exported, dest: Path, file_hashes: bool = True) -> Path:
    """A copy of the export; without `file_hashes`, as an export that lists no sha256 of its ONNX files (so a test
    can reach the checks behind that one with files it altered)."""
    shutil.copytree(exported["dir"], dest)
    if not file_hashes:
        manifest = json.loads((dest / "manifest.json").read_text())
        del manifest["files_sha256"]
        (dest / "manifest.json").write_text(json.dumps(manifest))
    return dest


def test_an_onnx_file_of_another_export_is_refused_in_one_line(exported, images, tmp_path, capsys):
    """Issue 18, item 9: a detector.onnx copied in from another checkpoint's export was used silently."""
    import onnx
    from onnx import numpy_helper

    d = _copy_export(exported, tmp_path / "mixed")
    model = onnx.load(str(d / "detector.onnx"))
    weight = next(t for t in model.graph.initializer if numpy_helper.to_array(t).size > 100)
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * 1.01, weight.name))  # other weights
    onnx.save(model, str(d / "detector.onnx"))
    manifest = json.loads((d / "manifest.json").read_text())
    assert set(manifest["files_sha256"]) == {"detector.onnx", "sam_image_encoder.onnx", "sam_decoder.onnx"}
    for backend in ("onnxruntime", "openvino"):
        if backend == "openvino" and importlib.util.find_spec("openvino") is None:
            continue
        out = tmp_path / f"out_{backend}"
        assert main(["predict", "--source", str(images), "--backend", backend, "--onnx", str(d), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert err == (f"error: {d / 'detector.onnx'}: not the file this export wrote (sha256 differs from "
                       f"{d / 'manifest.json'}); an ONNX file copied from another export? re-run defect-vision export")
        assert not out.exists()


def test_onnx_folder_of_another_run_is_refused(exported, category, images, tmp_path, capsys):
    other = make_run(tmp_path / "other", ["dent", "scratch"], None)
    d = exported["dir"]
    argv = ["predict", "--source", str(images), "--backend", "onnxruntime", "--out", str(tmp_path / "out")]
    assert main([*argv, "--run", str(other), "--onnx", str(d)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {d / 'manifest.json'}: exported from another detector than {other / 'yolo_world' / 'best.pt'}")
    assert f"classes {', '.join(category.defect_types)} vs dent, scratch" in err and "\n" not in err
    # same models, the run recalibrated after the export: its export is stale
    recal = tmp_path / "recal"
    shutil.copytree(exported["run"], recal)
    (recal / "thresholds.json").write_text(json.dumps({"thresholds": {"hole": 0.5}, "default": 0.2}))
    assert main([*argv, "--run", str(recal)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: {recal / 'onnx' / 'thresholds.json'}: thresholds differ from {recal / 'thresholds.json'} "
                   "(an ONNX folder of another run, or older than the calibration: re-run defect-vision export)")
    assert not (tmp_path / "out").exists()
    # a thresholds file the user names just applies, on every backend (defect_vision.thresholds' rule)
    mine = tmp_path / "mine.json"
    mine.write_text(json.dumps({"thresholds": {"hole": 0.5}, "default": 0.2}))
    assert main([*argv, "--run", str(exported["run"]), "--thresholds", str(mine), "--quiet"]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["thresholds"] == {"source": "thresholds", "default": 0.2, "per_class": {"hole": 0.5}}


def expect_one_line_errors(cases: list[tuple[Path, str]], backend: str, images: Path, tmp_path: Path, capsys) -> None:
    """predict with each (export folder, expected error start): exit 2, that one line, no output folder."""
    for folder, expected in cases:
        out = tmp_path / f"out_{folder.name}"
        assert main(["predict", "--source", str(images), "--backend", backend, "--onnx", str(folder),
                     "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: {expected}") and "\n" not in err, err
        assert not out.exists()


def test_missing_file_bad_opset_and_foreign_folder_are_one_line_errors(exported, images, tmp_path, capsys):
    import onnx

    missing = _copy_export(exported, tmp_path / "missing")
    (missing / "sam_decoder.onnx").unlink()
    too_new = _copy_export(exported, tmp_path / "too_new", file_hashes=False)
    model = onnx.load(str(too_new / "detector.onnx"))
    model.opset_import[0].version = 40
    onnx.save(model, str(too_new / "detector.onnx"))
    swapped = _copy_export(exported, tmp_path / "swapped", file_hashes=False)
    shutil.copy(swapped / "sam_image_encoder.onnx", swapped / "sam_decoder.onnx")
    cases = [
        (missing, f"{missing / 'sam_decoder.onnx'}: missing (listed in the export's manifest.json"),
        (too_new, f"{too_new / 'detector.onnx'}: opset 40 is newer than onnxruntime"),
        (swapped, f"{swapped / 'sam_decoder.onnx'}: inputs image, expected image_embeddings, point_coords, point_labels"),
        (tmp_path / "nowhere", f"{tmp_path / 'nowhere'}: no such ONNX export folder"),
        (images, f"{images / 'manifest.json'}: missing"),
    ]
    expect_one_line_errors(cases, "onnxruntime", images, tmp_path, capsys)


def test_onnx_folder_alone_is_enough(exported, images, tmp_path):
    """Deployment: only the export folder (no run, no checkpoints); its thresholds apply unless --conf is given
    (the same rule as a run's thresholds on the torch backend)."""
    d = _copy_export(exported, tmp_path / "deploy")
    preds, summary = predict(["--source", str(images), "--backend", "onnxruntime", "--onnx", str(d)], tmp_path / "out")
    assert summary["thresholds"] == {"source": "run", "default": 0.2, "per_class": {"hole": 0.3, "stain": 0.99}}
    assert "stain" not in summary["detections_per_class"]
    assert len(preds) > 0 and summary["sam_encoder_calls"] == summary["images_with_detections"]
    high, high_summary = predict(["--source", str(images), "--backend", "onnxruntime", "--onnx", str(d), "--conf", "0.9"],
                                 tmp_path / "out_conf")  # scores here are ~0.5: the export's 0.2/0.3 would keep them
    assert high_summary["thresholds"] == {"source": "conf", "default": 0.9, "per_class": {}} and len(high) == 0
    with pytest.raises(DatasetError, match="model_type vit_b: the export .* holds a vit_tiny SAM"):
        from defect_vision import DefectPredictor, PredictConfig

        DefectPredictor(None, None, PredictConfig(backend="onnxruntime", onnx=d, model_type="vit_b"))
    with pytest.raises(DatasetError, match="classes dent: not in the ONNX export's vocabulary, which is baked in"):
        DefectPredictor(None, None, PredictConfig(backend="onnxruntime", onnx=d, classes=["hole", "dent"]))
    only_hole = DefectPredictor(None, None, PredictConfig(backend="onnxruntime", onnx=d, classes=["hole"], conf=0.01))
    assert set(only_hole(read_image(next(images.iterdir()))).names) == {"hole"}


# ---------------------------------------------------------------- OpenVINO: the same export, another CPU runtime

def needs_openvino() -> None:
    pytest.importorskip("openvino", reason="openvino not installed (pip install 'defect-vision[openvino]')")


def test_openvino_backend_writes_the_same_outputs_as_torch(exported, images, tmp_path):
    needs_openvino()
    run = exported["run"]
    common = ["--run", str(run), "--source", str(images), "--conf", "0.01", "--max-det", "5", "--batch", "2"]
    ref, ref_summary = predict(common, tmp_path / "torch")
    got, summary = predict([*common, "--backend", "openvino", "--workers", "2", "--threads", "2"], tmp_path / "ov")
    assert summary["config"]["backend"] == "openvino" and summary["config"]["onnx"] == str(run / "onnx")
    assert summary["autocast"] is None
    assert summary["parallel"] == {"batch": 2, "workers": 2, "torch_threads_per_worker": 1}  # 2 streams x 1 thread
    assert len(got) == len(ref) == 5 * 5 and summary["detections_per_class"] == ref_summary["detections_per_class"]
    for a, b in match(ref, got):
        assert abs(a["score"] - b["score"]) < 1e-4 and np.abs(np.subtract(a["bbox"], b["bbox"])).max() <= 1.0
        assert mask_iou(a["segmentation"], b["segmentation"]) >= 0.99
    for name in ("images", "images_with_detections", "sam_encoder_calls", "sam_decoder_calls", "detector_calls"):
        assert summary[name] == ref_summary[name], name


def test_openvino_sam_on_ground_truth_boxes_and_fp32_unless_bf16_is_asked(exported, category):
    """fp32 by default (OpenVINO's own default is bf16 on CPUs that have it); bf16 only when asked, where native."""
    needs_openvino()
    from defect_vision import DefectPredictor, PredictConfig
    from defect_vision.devices import cpu_bf16_native

    run = exported["run"]
    torch_p = DefectPredictor.from_run(run, PredictConfig(device="cpu"))
    ov_p = DefectPredictor.from_run(run, PredictConfig(threads=2, workers=2), backend="openvino")
    encoder = ov_p.segmenter.encoder.compiled
    assert str(encoder.get_property("INFERENCE_PRECISION_HINT")) == "<Type: 'float32'>"
    assert encoder.get_property("NUM_STREAMS") == 2 and encoder.get_property("INFERENCE_NUM_THREADS") == 2
    ort_p = DefectPredictor.from_run(run, PredictConfig(threads=2, workers=2), backend="onnxruntime")
    assert ort_p.segmenter.encoder.get_session_options().intra_op_num_threads == 1  # one thread per worker's call
    recs = [r for r in category.images if r.instances][:3]
    ious = []
    for r in recs:
        pixels, gt = read_image(r.path), r.to_detections(category.defect_types)
        a, b = torch_p.segment(pixels, gt[np.arange(len(gt))]), ov_p.segment(pixels, gt[np.arange(len(gt))])
        ious += [mask_iou(x, y) for x, y in zip(a.rle, b.rle)]
        assert np.abs(a.data["sam_iou"] - b.data["sam_iou"]).max() < 1e-4
    assert len(ious) >= 3 and min(ious) >= 0.99, ious
    if cpu_bf16_native():
        bf = DefectPredictor.from_run(run, PredictConfig(precision="bf16"), backend="openvino")
        assert str(bf.segmenter.encoder.compiled.get_property("INFERENCE_PRECISION_HINT")) == "<Type: 'bfloat16'>"
        assert str(bf.segmenter.decoder.compiled.get_property("INFERENCE_PRECISION_HINT")) == "<Type: 'float32'>"
        pixels, gt = read_image(recs[0].path), recs[0].to_detections(category.defect_types)
        assert len(bf.segment(pixels, gt[np.arange(len(gt))]).rle) == len(gt)
    else:
        with pytest.raises(DatasetError, match="precision bf16: half precision needs"):
            DefectPredictor.from_run(run, PredictConfig(precision="bf16"), backend="openvino")


def test_openvino_bad_input_and_missing_package_are_one_line_errors(exported, images, tmp_path, capsys, monkeypatch):
    needs_openvino()
    broken = _copy_export(exported, tmp_path / "broken", file_hashes=False)
    (broken / "sam_image_encoder.onnx").write_bytes(b"not a model at all")
    swapped = _copy_export(exported, tmp_path / "swapped", file_hashes=False)
    shutil.copy(swapped / "sam_image_encoder.onnx", swapped / "sam_decoder.onnx")
    cases = [
        (broken, f"{broken / 'sam_image_encoder.onnx'}: openvino "),
        (swapped, f"{swapped / 'sam_decoder.onnx'}: inputs image, expected image_embeddings, point_coords, point_labels"),
    ]
    expect_one_line_errors(cases, "openvino", images, tmp_path, capsys)
    assert main(["predict", "--source", str(images), "--backend", "openvino", "--onnx", str(broken),
                 "--out", str(tmp_path / "again")]) == 2
    assert "cannot load it: " in capsys.readouterr().err and not (tmp_path / "again").exists()
    import importlib.util

    import torch

    from defect_vision import PredictConfig
    from defect_vision.inference.onnx_backend import load_onnx_models

    with pytest.raises(DatasetError, match=r"^precision bf16: the onnxruntime backend runs the export in fp32 \(bf16 on the CPU: backend openvino"):
        load_onnx_models(PredictConfig(backend="onnxruntime", onnx=exported["dir"], precision="bf16"), None, None,
                         torch.device("cpu"), torch.bfloat16)

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a))
    assert main(["predict", "--source", str(images), "--backend", "openvino", "--onnx", str(exported["dir"]),
                 "--out", str(tmp_path / "p")]) == 2
    assert ("--backend openvino needs the openvino package, which is not installed "
            "(pip install 'defect-vision[openvino]')") in capsys.readouterr().err
    assert not (tmp_path / "p").exists()
