"""YOLOE beyond predict (issue 19, Detectors): `defect-vision export` of a YOLOE -seg detector (boxes only, classes
baked in) run by onnxruntime / OpenVINO with torch parity; `openvocab` and `curve` on YOLOE naming the family; the
pipeline's side-by-side mask sources (sam | detector | refine) in the report.

Random-init YOLOE-11n-seg checkpoints at 64 px (no MobileCLIP: random text vectors), SAM vit_tiny."""
from __future__ import annotations

import io
import json
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
from fixtures.predict_parity import copy_test_images, mask_iou, match, predict

from defect_vision.cli import main
from defect_vision.data.mvtec import read_category
from defect_vision.models.random_init import save_random_sam, save_random_yoloe

IMGSZ = 64
NAMES = ["crack", "hole", "scratch"]


@pytest.fixture(autouse=True)
def no_mobileclip(monkeypatch):
    """Any path to YOLOE's own text model (MobileCLIP, a download) fails the test."""
    from ultralytics.nn.tasks import YOLOEModel

    def refuse(*args, **kwargs):
        raise AssertionError("YOLOE's MobileCLIP text model was reached (a download)")

    monkeypatch.setattr(YOLOEModel, "get_text_pe", refuse)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    from defect_vision.devices import intra_op_threads

    with intra_op_threads(1):
        yield


def needs(module: str) -> None:
    pytest.importorskip(module, reason=f"{module} not installed")


@pytest.fixture(scope="module")
def category(synthetic_root):
    return read_category(synthetic_root, "toy_wood")


@pytest.fixture(scope="module")
def yoloe_export(tmp_path_factory) -> dict:
    """A run with a random YOLOE-11n-seg detector and SAM vit_tiny, exported by `defect-vision export --run`."""
    needs("onnx")
    needs("onnxruntime")
    run = tmp_path_factory.mktemp("runs") / "toy"
    save_random_yoloe(run / "yolo_world" / "best.pt", NAMES, imgsz=IMGSZ)
    save_random_sam(run / "sam" / "best.pth", "vit_tiny")
    (run / "sam" / "best.json").write_text(json.dumps({"model_type": "vit_tiny"}))
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["export", "--run", str(run)]) == 0
    return {"run": run, "dir": run / "onnx", "stdout": out.getvalue()}


@pytest.fixture(scope="module")
def images(category, tmp_path_factory) -> Path:
    """3 test images and a 160x96 resize (SAM's resize + padding)."""
    return copy_test_images(category, tmp_path_factory.mktemp("images"), 3)


# ---------------------------------------------------------------- 1. export + exported backends

def test_export_of_a_yoloe_seg_detector_holds_its_boxes_and_classes(yoloe_export):
    """The -seg detector is exported as its boxes (output0: 4 + classes channels, no prototypes), its classes fused
    in; the manifest names the family and says the detector's masks are torch-only."""
    import onnx
    import onnxruntime as ort
    import torch

    from defect_vision.inference.detector import Detector

    d, run = yoloe_export["dir"], yoloe_export["run"]
    m = json.loads((d / "manifest.json").read_text())["detector"]
    assert m["class_names"] == NAMES and m["imgsz"] == IMGSZ and m["family"] == "yoloe" and m["family_name"] == "YOLOE"
    assert m["segment"] is True and m["mask_sources"] == ["sam"]
    assert m["torch_only"] == ["--masks detector", "--masks refine"]
    assert yoloe_export["stdout"].startswith("exported YOLOE -seg, boxes only detector (3 classes: crack, hole, scratch")
    model = onnx.load(str(d / "detector.onnx"))
    assert [o.name for o in model.graph.output] == ["output0"]
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["task"] == "detect" and all(n in meta["names"] for n in NAMES)
    # the same raw predictions as the torch -seg model's box + class channels, at another size (dynamic)
    det = Detector(run / "yolo_world" / "best.pt", torch.device("cpu"), imgsz=128)
    assert det.segment  # the checkpoint itself is still the -seg model (the export worked on a copy)
    x = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        raw = det.model(x)[0][0].numpy()
    assert raw.shape == (2, 4 + len(NAMES) + 32, 16 * 16 + 8 * 8 + 4 * 4)  # + 32 mask coefficients in torch
    got = ort.InferenceSession(str(d / "detector.onnx"), providers=["CPUExecutionProvider"]).run(None, {"images": x.numpy()})
    assert len(got) == 1 and got[0].shape == (2, 4 + len(NAMES), raw.shape[2])
    assert np.abs(got[0] - raw[:, : 4 + len(NAMES)]).max() < 1e-3
    assert got[0][:, 4:].max() > 0.01  # the bias at 0: it detects something


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_exported_yoloe_predicts_as_torch(yoloe_export, images, tmp_path, backend):
    """predict --backend onnxruntime|openvino on the YOLOE export: the torch backend's boxes, classes and scores, and
    SAM's masks at IoU >= 0.99 per instance."""
    needs(backend)
    run = yoloe_export["run"]
    common = ["--run", str(run), "--source", str(images), "--conf", "0.01", "--max-det", "5", "--batch", "2"]
    ref, ref_summary = predict(common, tmp_path / "torch")
    got, summary = predict([*common, "--backend", backend], tmp_path / backend)
    assert summary["config"]["backend"] == backend and summary["config"]["onnx"] == str(run / "onnx")
    assert len(got) == len(ref) == 4 * 5 and summary["detections_per_class"] == ref_summary["detections_per_class"]
    for a, b in match(ref, got):
        assert abs(a["score"] - b["score"]) < 1e-4 and np.abs(np.subtract(a["bbox"], b["bbox"])).max() <= 1.0
        assert mask_iou(a["segmentation"], b["segmentation"]) >= 0.99
    for name in ("images", "images_with_detections", "sam_encoder_calls", "sam_decoder_calls", "detector_calls"):
        assert summary[name] == ref_summary[name], name


def test_exported_yoloe_refuses_detector_masks_in_one_line(yoloe_export, images, tmp_path, capsys):
    run = yoloe_export["run"]
    for masks in ("detector", "refine"):
        out = tmp_path / masks
        rc = main(["predict", "--run", str(run), "--source", str(images), "--backend", "onnxruntime",
                   "--masks", masks, "--out", str(out), "--quiet"])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc != 0 and len(err) == 1 and err[0].startswith(f"error: --masks {masks}: the torch backend only")
        assert not out.exists()


# ---------------------------------------------------------------- 2. openvocab and curve on YOLOE

YOLOE_FAST = ["--fast", "--model-cfg", "yoloe-11n-seg.yaml", "--epochs", "1"]


@pytest.fixture(scope="module")
def seg_datasets(easy_root, tmp_path_factory) -> Path:
    """toy_easy converted into <datasets>/{coco,yolo,sam}/toy_easy with polygon labels (a -seg model trains masks)."""
    ds = tmp_path_factory.mktemp("seg_datasets")
    assert main(["convert", "--category", "toy_easy", "--root", str(easy_root), "--out", str(ds), "--task", "segment",
                 "--no-progress"]) == 0
    return ds


@pytest.fixture(scope="module")
def experiments(seg_datasets, tmp_path_factory) -> dict:
    """openvocab (hole held out, no 'seen' run) and curve (k = 1, one seed) on a random-init YOLOE-11n-seg, in one
    run folder, and its report."""
    runs = tmp_path_factory.mktemp("exp_runs")
    common = ["--category", "toy_easy", "--datasets", str(seg_datasets), "--runs", str(runs), *YOLOE_FAST]
    lines = {}
    for name, extra in (("openvocab", ["--classes", "hole", "--no-seen"]),
                        ("curve", ["--shots", "1", "--seeds", "0", "--sam-epochs", "1"])):
        out = io.StringIO()
        with redirect_stdout(out):
            assert main([name, *common, *extra]) == 0
        lines[name] = out.getvalue().strip().splitlines()[-1]
    run = runs / "toy_easy"
    assert main(["report", "--run", str(run)]) == 0
    return {"run": run, "lines": lines}


WANT_DETECTOR = {"family": "yoloe", "name": "YOLOE", "segment": True, "label": "YOLOE -seg",
                 "start": "yoloe-11n-seg.yaml", "weights": "random-init"}


def test_openvocab_runs_on_yoloe_and_says_so(experiments):
    import torch
    from ultralytics.nn.tasks import YOLOESegModel

    run = experiments["run"]
    results = json.loads((run / "openvocab" / "results.json").read_text())
    assert results["detector"] == WANT_DETECTOR and results["settings"]["model"] == "yoloe-11n-seg.yaml"
    row = results["rows"][0]
    assert row["class"] == "hole" and set(row["trained_classes"]) == {"scratch", "stain"}
    for who in ("zero_shot", "unseen"):  # measured (a number), not skipped
        assert isinstance(row[who]["ap50"], float) and 0.0 <= row[who]["ap50"] <= 1.0, row
    # every model of the experiment is a YOLOE -seg one: the start model and the fine-tune without hole
    for ckpt in (run / "openvocab" / "zero_shot" / "base.pt", run / "openvocab" / "models" / "without_hole" / "best.pt"):
        assert isinstance(torch.load(ckpt, weights_only=False)["model"], YOLOESegModel), ckpt
    assert "; YOLOE -seg, random-init weights," in experiments["lines"]["openvocab"]
    page = (run / "report" / "index.html").read_text()
    assert "<b id=openvocab-detector>YOLOE -seg</b>" in page
    assert "(leave-one-defect-out, YOLOE -seg)</h2>" in page


def test_curve_runs_on_yoloe_and_says_so(experiments):
    run = experiments["run"]
    results = json.loads((run / "curve" / "results.json").read_text())
    assert results["detector"] == WANT_DETECTOR
    assert [(r["k"], r["seed"]) for r in results["runs"]] == [(0, None), (1, 0)]
    assert all(isinstance(r["detector_box_ap50"], float) for r in results["runs"])
    assert (run / "curve" / "models" / "k1_s0" / "yolo_world" / "best.pt").is_file()
    assert "; YOLOE -seg, random-init weights," in experiments["lines"]["curve"]
    page = (run / "report" / "index.html").read_text()
    assert "<b id=curve-detector>YOLOE -seg</b>" in page and "few-shot learning curve, YOLOE -seg)</h2>" in page


def test_report_of_results_without_a_family_says_yolo_world():
    """results.json written before the family was recorded: only YOLO-World ran then."""
    from defect_vision.evaluation.html_report import curve_summary, openvocab_summary

    assert openvocab_summary({"rows": []})["detector"] == "YOLO-World"
    assert curve_summary({"summary": {}})["detector"] == "YOLO-World"
    assert curve_summary({"summary": {}, "detector": WANT_DETECTOR})["detector"] == "YOLOE -seg"


# ---------------------------------------------------------------- 3. mask sources side by side (pipeline + report)

def test_pipeline_with_a_yoloe_seg_detector_compares_the_mask_sources(easy_root, tmp_path):
    """A -seg YOLOE pipeline converts polygon labels, predicts the test split with --masks sam, detector and refine
    (the same detections), evaluates each and the report shows them side by side with their seconds per image."""
    from defect_vision.cli.pipeline import PipelineConfig, run_pipeline
    from defect_vision.run_folder import RunFolder

    ran = []

    def runner(argv, log):  # each stage in this process (the stage processes would each import torch again)
        ran.append(argv)
        return main(argv)

    cfg = PipelineConfig("toy_easy", easy_root, tmp_path / "ds", tmp_path / "runs", tmp_path / "none",
                         from_scratch=True, yolo_cfg="yoloe-11n-seg.yaml", yolo_epochs=1, sam_epochs=1, imgsz=IMGSZ,
                         batch=8, device="cpu", calibrate=False, conf=1e-4)
    summary = run_pipeline(cfg, runner)
    rf = RunFolder(tmp_path / "runs" / "toy_easy")
    assert summary["mask_sources"] == ["sam", "detector", "refine"]
    assert ran[0][ran[0].index("--task") + 1] == "segment"  # a -seg detector trains on polygons
    assert list(summary["seconds"])[-5:] == ["predict_masks_detector", "evaluate_masks_detector",
                                             "predict_masks_refine", "evaluate_masks_refine", "report"]
    preds = {s: json.loads((rf.predict_masks(s) / "predictions.json").read_text()) for s in ("sam", "detector", "refine")}
    boxes = {s: sorted((p["image_id"], tuple(np.round(p["bbox"], 2))) for p in v) for s, v in preds.items()}
    assert boxes["sam"] == boxes["detector"] == boxes["refine"] and boxes["sam"]  # the same detections
    summaries = {s: json.loads((rf.predict_masks(s) / "summary.json").read_text()) for s in ("sam", "detector", "refine")}
    assert summaries["detector"]["sam_encoder_calls"] == 0 and summaries["refine"]["sam_encoder_calls"] > 0
    assert summaries["detector"]["config"]["masks"] == "detector" and summaries["refine"]["config"]["masks"] == "refine"

    report = json.loads((rf.stage("report") / "report.json").read_text())
    rows = {r["source"]: r for r in report["mask_sources"]}
    assert list(rows) == ["sam", "detector", "refine"]
    for source, row in rows.items():
        metrics = json.loads((rf.eval_masks(source) / "metrics.json").read_text())
        assert row["mask_iou_instance"] == pytest.approx(metrics["mask_iou"]["mean_instance"])
        assert row["segm_AP"] == pytest.approx(metrics["coco"]["segm"]["AP"])
        assert row["pixel_auroc"] == pytest.approx(metrics["pixel"]["auroc"])
        s = summaries[source]
        assert row["seconds_per_image"] == pytest.approx(s["timings_s"]["wall"] / s["images"]) and row["seconds_per_image"] > 0
        assert row["sam_encoder_calls"] == s["sam_encoder_calls"]
    page = (rf.stage("report") / "index.html").read_text()
    assert '<table id="mask-sources">' in page and "the detector&#x27;s own masks, no SAM (--masks detector)" in page


def test_pipeline_plans_mask_sources_only_for_a_seg_detector_and_drops_stale_ones(tmp_path):
    from defect_vision.cli.pipeline import PipelineConfig, plan, run_pipeline

    (tmp_path / "mvtec" / "toy" / "test").mkdir(parents=True)
    common = {"root": tmp_path / "mvtec", "datasets": tmp_path / "ds", "runs": tmp_path / "runs",
              "weights": tmp_path / "none", "from_scratch": True}
    seg = plan(PipelineConfig("toy", yolo_cfg="yoloe-11n-seg.yaml", **common))
    assert seg.mask_sources == ["sam", "detector", "refine"]
    det_only = plan(PipelineConfig("toy", yolo_cfg="yoloe-11n.yaml", **common))
    world = plan(PipelineConfig("toy", yolo_cfg="yolov8n-worldv2.yaml", **common))
    for p in (det_only, world):
        assert p.mask_sources == ["sam"] and not [s for s in p.stages if "masks" in s.name]
        assert "--task" not in p.stages[0].argv
    # a YOLO-World run over a folder where a YOLOE -seg run was: its mask-source folders go (the report reads them)
    run = tmp_path / "runs" / "toy"
    for name in ("predict_masks_detector", "eval_masks_refine"):
        (run / name).mkdir(parents=True)

    def runner(argv, log):
        if argv[0] == "convert":
            for f in ("coco/toy/instances_val.json", "coco/toy/instances_test.json", "yolo/toy/data.yaml"):
                (tmp_path / "ds" / f).parent.mkdir(parents=True, exist_ok=True)
                (tmp_path / "ds" / f).write_text("{}")
        return 0

    run_pipeline(PipelineConfig("toy", yolo_cfg="yolov8n-worldv2.yaml", **common), runner)
    assert not (run / "predict_masks_detector").exists() and not (run / "eval_masks_refine").exists()


def test_pipeline_with_an_official_yoloe_gives_train_detector_its_mobileclip_file(tmp_path):
    """The official-weights pipeline reads the detector's family from the checkpoint: a YOLOE start model gets its own
    MobileCLIP file as --clip (never CLIP ViT-B-32), and a missing one is named in one line."""
    from defect_vision.cli.pipeline import PipelineConfig, plan
    from defect_vision.errors import DatasetError

    w = tmp_path / "w"
    yoloe = save_random_yoloe(w / "yoloe-11n-seg.pt", NAMES, imgsz=IMGSZ)
    (w / "sam_vit_b_01ec64.pth").write_bytes(b"x")
    (tmp_path / "mvtec" / "toy" / "test").mkdir(parents=True)
    config = PipelineConfig("toy", tmp_path / "mvtec", tmp_path / "ds", tmp_path / "runs", w, yolo_model=yoloe)
    with pytest.raises(DatasetError, match=r"mobileclip_blt\.ts: official weights missing"):
        plan(config)
    (w / "mobileclip_blt.ts").write_bytes(b"x")
    det = next(s for s in plan(config).stages if s.name == "yolo_world").argv
    assert det[det.index("--clip") + 1] == str(w / "mobileclip_blt.ts") and det[det.index("--model") + 1] == str(yoloe)
