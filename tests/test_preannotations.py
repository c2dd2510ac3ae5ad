"""Predictions back to the labelling tools (issue 20, section 2): Label Studio tasks (brush RLE by Label Studio's converter +
polygons), a CVAT "COCO 1.0" zip and a FiftyOne COCO labels file, read back by the tools' own libraries where they
install (label-studio-sdk, datumaro: the importer CVAT runs, pycocotools, fiftyone) and by our own readers."""
from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import re
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from defect_vision.detections import Detections, ImageInfo
from defect_vision.errors import ConfigError, OutputError
from defect_vision.formats.annotations import TOOLS, write_annotations
from defect_vision.formats.labelstudio_tasks import image_reference
from defect_vision.masks import decode_rle

H, W = 48, 64
NAMES, CAT_IDS = ["hole", "faulty_imprint"], [3, 7]  # category ids not 1..K on purpose


def brush_decoder():
    pytest.importorskip("label_studio_converter", reason="label-studio-converter is not installed")
    with contextlib.redirect_stdout(io.StringIO()):
        from label_studio_converter.brush import decode_rle
    return lambda rle, h, w: decode_rle(rle).reshape(h, w, 4)[:, :, 3] > 0


def _masks() -> dict[str, np.ndarray]:
    """Per image its detection masks: two components in one detection, a ring (a hole), a blob, a 1-px-wide line."""
    a = np.zeros((3, H, W), bool)
    a[0, 4:12, 3:20] = True
    a[0, 30:40, 50:60] = True  # a second component of the same detection
    a[1, 15:35, 20:42] = True
    a[1, 21:28, 27:35] = False  # a hole
    yy, xx = np.mgrid[:H, :W]
    a[2] = (yy - 38) ** 2 + (xx - 14) ** 2 <= 36
    b = np.zeros((1, H, W), bool)
    b[0, 10, 5:45] = True
    b[0, 10:30, 44] = True
    return {"a/x.png": a, "b.png": b, "c.png": np.zeros((0, H, W), bool)}


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """The images the detections are on (gray noise, H x W)."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for name in _masks():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / name), rng.integers(0, 255, (H, W, 3), dtype=np.uint8))
    return root


def detections(source: Path) -> list[Detections]:
    out = []
    for i, (name, m) in enumerate(_masks().items(), 1):
        boxes = [cv2.boundingRect(k.view(np.uint8)) for k in m]
        xyxy = [[x, y, x + w, y + h] for x, y, w, h in boxes]
        out.append(Detections(xyxy, [k % 2 for k in range(len(m))], [0.9, 0.55, 0.31][: len(m)], mask=m,
                              image=ImageInfo(i, name, H, W, source / name), class_names=NAMES, category_ids=CAT_IDS))
    return out


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def within_one_pixel(got: np.ndarray, want: np.ndarray) -> bool:
    """Every pixel where `got` differs from `want` lies on `want`'s boundary (within 1 px of an edge)."""
    k = np.ones((3, 3), np.uint8)
    edge = cv2.dilate(want.view(np.uint8), k) != cv2.erode(want.view(np.uint8), k)
    return not (np.logical_xor(got, want) & ~edge).any()


def polygon_mask(points_percent: list[list[float]], h: int, w: int) -> np.ndarray:
    ring = [c for x, y in points_percent for c in (x * w / 100, y * h / 100)]
    return mask_utils.decode(mask_utils.frPyObjects([ring], h, w)[0]).astype(bool)


def regions(task: dict, kind: str) -> list[dict]:
    return [r for r in task["predictions"][0]["result"] if r["type"] == f"{kind}labels"]


# ---------------------------------------------------------------- the files, read by the tools' own libraries

def test_label_studio_brush_is_the_mask_exactly_and_polygons_within_a_pixel(source, tmp_path):
    decode = brush_decoder()
    dets = detections(source)
    files = write_annotations(dets, tmp_path, ["labelstudio"], "m-1", image_root="/data/local-files/?d=")
    assert [f.name for f in files] == ["labelstudio_tasks.json", "labelstudio_config.xml"]
    tasks = json.loads(files[0].read_text())
    assert [t["data"]["image"] for t in tasks] == ["/data/local-files/?d=a/x.png", "/data/local-files/?d=b.png",
                                                   "/data/local-files/?d=c.png"]
    checked = 0
    for task, det in zip(tasks, dets):
        pred = task["predictions"][0]
        assert pred["model_version"] == "m-1"
        assert pred.get("score") == (round(float(np.mean(det.score)), 5) if len(det) else None)
        brush = regions(task, "brush")
        assert len(brush) == len(det)
        for k, r in zip(det.order(), brush):  # regions in score order, one brush per detection
            assert (r["from_name"], r["to_name"], r["original_width"], r["original_height"], r["image_rotation"]) == \
                ("brush", "image", W, H, 0)
            assert r["value"]["brushlabels"] == [NAMES[det.class_id[k]]] and r["value"]["format"] == "rle"
            assert r["score"] == round(det.score[k], 5)
            got = decode(r["value"]["rle"], H, W)
            assert got.sum() > 0 and np.array_equal(got, det.mask[k])  # IoU 1.0
            rings = [p for p in regions(task, "polygon") if p["id"].startswith(f"d{k}p")]
            assert rings and all(p["from_name"] == "polygon" and p["value"]["closed"] for p in rings)
            union = np.any([polygon_mask(p["value"]["points"], H, W) for p in rings], axis=0)
            assert iou(union, det.mask[k]) > 0.97 and within_one_pixel(union, det.mask[k])
            checked += 1
    assert checked == 4
    assert len([p for p in regions(tasks[0], "polygon") if p["id"].startswith("d0p")]) == 2  # two components


def test_label_studio_accepts_the_config_and_every_prediction(source, tmp_path):
    pytest.importorskip("label_studio_converter", reason="label-studio-converter is not installed")
    try:
        from label_studio_sdk.label_interface import LabelInterface
    except ImportError as exc:  # the SDK installed without its optional dependencies (jsf)
        pytest.skip(f"label_studio_sdk.label_interface does not import ({exc})")
    dets = detections(source)
    tasks_path, config = write_annotations(dets, tmp_path, ["labelstudio"], "m-1")
    interface = LabelInterface(config.read_text())
    assert interface.validate() is None
    tasks = json.loads(tasks_path.read_text())
    assert [interface.validate_prediction(t["predictions"][0], return_errors=True) for t in tasks] == [[], [], []]
    bad = json.loads(json.dumps(tasks[0]["predictions"][0]))
    bad["result"][0]["value"]["brushlabels"] = ["not_a_class"]
    assert interface.validate_prediction(bad, return_errors=True)  # the validator does check labels
    assert re.findall(r'<Label value="([^"]+)"', config.read_text()) == NAMES * 2


def test_cvat_zip_is_cvat_coco_with_masks_that_datumaro_imports(source, tmp_path):
    dets = detections(source)
    (zpath,) = write_annotations(dets, tmp_path, ["cvat"], "m-1")
    with zipfile.ZipFile(zpath) as zf:
        assert zf.namelist() == ["annotations/instances_default.json"]
        doc = json.loads(zf.read("annotations/instances_default.json"))
    assert [c["id"] for c in doc["categories"]] == CAT_IDS and [c["name"] for c in doc["categories"]] == NAMES
    assert [(im["id"], im["file_name"], im["height"], im["width"]) for im in doc["images"]] == \
        [(1, "a/x.png", H, W), (2, "b.png", H, W), (3, "c.png", H, W)]
    want = [(d.image.id, CAT_IDS[d.class_id[k]], round(d.score[k], 5), d.mask[k]) for d in dets for k in range(len(d))]
    assert len(doc["annotations"]) == len(want) == 4
    for ann, (image_id, cid, score, mask) in zip(doc["annotations"], want):
        assert (ann["image_id"], ann["category_id"], ann["score"], ann["iscrowd"]) == (image_id, cid, score, 1)
        assert isinstance(ann["segmentation"]["counts"], list)  # uncompressed, as CVAT's own export writes
        got = mask_utils.decode(mask_utils.frPyObjects(ann["segmentation"], H, W)).astype(bool)
        assert np.array_equal(got, mask) and ann["area"] == mask.sum()
    # datumaro's coco_instances importer: what CVAT's "COCO 1.0" upload runs on the extracted zip
    dm = pytest.importorskip("datumaro", reason="datumaro is not installed")
    extracted = tmp_path / "extracted"
    zipfile.ZipFile(zpath).extractall(extracted)
    (extracted / "images").mkdir()  # upstream datumaro wants the folder (CVAT's fork does not)
    dataset = dm.Dataset.import_from(str(extracted), "coco_instances")
    label_names = [c.name for c in dataset.categories()[dm.AnnotationType.label]]
    read = {}
    for item in dataset:
        for a in item.annotations:
            if a.type == dm.AnnotationType.mask:
                read.setdefault(item.id, []).append((label_names[a.label], a.attributes["score"], a.image.astype(bool)))
    assert sorted(read) == ["a/x", "b"]
    for det in dets[:2]:
        item = read[Path(det.image.file_name).with_suffix("").as_posix()]
        assert len(item) == len(det)
        for k in range(len(det)):
            match = [m for name, s, m in item if name == NAMES[det.class_id[k]] and s == round(det.score[k], 5)]
            assert len(match) == 1 and np.array_equal(match[0], det.mask[k])


def test_fiftyone_labels_load_with_their_scores_and_masks(source, tmp_path):
    dets = detections(source)
    (path,) = write_annotations(dets, tmp_path, ["fiftyone"], "m-1")
    doc = json.loads(path.read_text())
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(path))
        results = coco.loadRes([{k: v for k, v in a.items() if k != "id"} for a in doc["annotations"]])
    flat = [(d, k) for d in dets for k in range(len(d))]
    assert len(results.anns) == len(flat) == 4
    for ann, (det, k) in zip(results.loadAnns(results.getAnnIds()), flat):
        assert ann["score"] == round(det.score[k], 5) and ann["image_id"] == det.image.id
        assert np.array_equal(results.annToMask(ann).astype(bool), det.mask[k])
    try:
        import fiftyone.utils.coco as fouc
    except ImportError:
        return  # fiftyone is not installed here (its parser was checked by hand: docs/notes/annotations.md)
    _, classes, _, _, anns = fouc.load_coco_detection_annotations(str(path))
    for det in dets[:2]:
        objs = anns[det.image.id]
        assert len(objs) == len(det)
        for obj, k in zip(objs, range(len(det))):
            d = obj.to_detection((W, H), classes, load_segmentation=True)  # the mask within its box
            x, y, w, h = cv2.boundingRect(det.mask[k].view(np.uint8))
            assert d.label == NAMES[det.class_id[k]] and d.confidence == round(det.score[k], 5)
            assert np.array_equal(d.mask.astype(bool), det.mask[k][y : y + h, x : x + w])


def test_image_references_take_a_folder_or_url_prefix():
    assert image_reference("a/x.png") == "a/x.png"
    assert image_reference("a b/x.png", "/data/local-files/?d=") == "/data/local-files/?d=a%20b/x.png"
    assert image_reference("a b/x.png", "/data/local-files/?d=wood/") == "/data/local-files/?d=wood/a%20b/x.png"
    assert image_reference("a/x.png", "/mnt/images") == "/mnt/images/a/x.png"
    assert image_reference("a/x.png", "https://host/imgs") == "https://host/imgs/a/x.png"


# ---------------------------------------------------------------- bad input

@pytest.fixture
def without_label_studio(monkeypatch):
    """label-studio-converter as if it were not installed."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "label_studio_converter" else real(name, *a))


def test_bad_tools_and_places_are_one_line_errors(source, tmp_path):
    from defect_vision.inference.run import RunOptions

    dets = detections(source)
    with pytest.raises(ConfigError, match=r"^annotations 'labelme': unknown labelling tool \(one of labelstudio, "
                                          r"cvat, fiftyone\)$"):
        write_annotations(dets, tmp_path, ["labelme"], "m")
    with pytest.raises(ConfigError) as err:
        RunOptions(annotations=("cvat", "labelme"))
    assert err.value.flag_message().startswith("--annotations 'labelme': unknown labelling tool")
    (tmp_path / "cvat_annotations.zip").mkdir()
    with pytest.raises(OutputError, match="cvat_annotations.zip: is a folder, not a file"):
        write_annotations(dets, tmp_path, ["fiftyone", "cvat"], "m")
    assert not (tmp_path / "fiftyone_results.json").exists()  # checked before anything is written
    victim = tmp_path / "inputs" / "fiftyone_results.json"  # an input that has the output's name
    victim.parent.mkdir()
    victim.write_text("[]")
    images = [Detections.empty(image=ImageInfo(9, victim.name, H, W, victim), rle=[], class_names=NAMES)]
    with pytest.raises(OutputError, match="is one of the input images"):
        write_annotations(images, victim.parent, ["fiftyone"], "m")
    assert victim.read_text() == "[]"


def test_a_missing_label_studio_converter_is_said_when_the_options_are_made(without_label_studio):
    from defect_vision.inference.run import RunOptions

    with pytest.raises(ConfigError, match=r"^annotations labelstudio: needs label-studio-converter \(pip install "
                                          r"'defect-vision\[labelling\]'\)$"):
        RunOptions(annotations=("labelstudio",))
    assert RunOptions(annotations=("cvat", "fiftyone")).annotations == ("cvat", "fiftyone")  # those need nothing


def test_tools_are_the_cli_choices():
    from defect_vision.cli.predict import ANNOTATION_TOOLS

    assert ANNOTATION_TOOLS == TOOLS


# ---------------------------------------------------------------- round trips through our own readers

def _read(source: Path, fmt: str, annotations: Path):
    reader = {"labelstudio": "labelstudio", "coco": "coco_json"}[fmt]
    if importlib.util.find_spec(f"defect_vision.data.{reader}") is None:
        pytest.skip(f"defect_vision.data.{reader} (the {fmt} reader) is not there yet")
    from defect_vision.data.source import DatasetSource, read_dataset

    cat = read_dataset(DatasetSource(source, "toy", format=fmt, annotations=annotations, min_area=1))
    return {r.file_name: [(i.category, i.full_mask()) for i in r.instances] for r in cat.images}


def _assert_same(read: dict, dets: list[Detections], exact: bool) -> None:
    assert sorted(read) == ["a/x.png", "b.png", "c.png"]
    for det in dets:
        got = read[det.image.file_name]
        assert len(got) == len(det)
        for k in range(len(det)):
            name = NAMES[det.class_id[k]]
            best = max((iou(m, det.mask[k]) for c, m in got if c == name), default=0.0)
            assert best == 1.0 if exact else best > 0.97, (det.image.file_name, k, best)


def test_our_readers_read_back_the_same_masks(source, tmp_path):
    pytest.importorskip("label_studio_converter", reason="label-studio-converter is not installed")
    dets = detections(source)
    tasks_path, _, zpath, fo_path = write_annotations(dets, tmp_path, TOOLS, "m-1")
    tasks = json.loads(tasks_path.read_text())
    for kind, exact in (("brush", True), ("polygon", False)):
        # a person accepting the pre-annotations: Label Studio exports them as the annotation (only one kind kept)
        export = [{"id": i, "data": t["data"], "annotations": [{"result": regions(t, kind)}], "predictions": []}
                  for i, t in enumerate(tasks, 1)]
        path = tmp_path / f"export_{kind}.json"
        path.write_text(json.dumps(export))
        read = _read(source, "labelstudio", path)
        if kind == "polygon":  # one instance per ring: the union of a detection's rings is its mask
            for det in dets:
                got = read[det.image.file_name]
                merged = []
                for k in det.order():
                    n = len([p for p in regions(tasks[det.image.id - 1], "polygon") if p["id"].startswith(f"d{k}p")])
                    merged.append((NAMES[det.class_id[k]], np.any([m for _, m in got[:n]], axis=0)))
                    got = got[n:]
                read[det.image.file_name] = merged
        _assert_same(read, dets, exact)
    zipfile.ZipFile(zpath).extractall(tmp_path / "cvat")
    _assert_same(_read(source, "coco", tmp_path / "cvat" / "annotations" / "instances_default.json"), dets, True)
    _assert_same(_read(source, "coco", fo_path), dets, True)


# ---------------------------------------------------------------- from a real prediction run

PICKS = ["test/combined/000.png", "test/good/000.png", "test/hole/000.png"]


@pytest.fixture(scope="module")
def run(synthetic_root, tmp_path_factory) -> tuple[Path, Path]:
    """(run folder with a random-init detector scoring ~0.5 everywhere and a vit_tiny SAM, a folder of 3 images)."""
    from defect_vision.data.mvtec import read_category
    from defect_vision.models.random_init import save_random_detector, save_random_sam

    category = read_category(synthetic_root, "toy_wood")
    root = tmp_path_factory.mktemp("runs") / "toy_wood"
    save_random_detector(root / "yolo_world" / "best.pt", category.defect_types, score_bias=0.0, imgsz=64)
    save_random_sam(root / "sam" / "best.pth", "vit_tiny")
    (root / "sam" / "best.json").write_text(json.dumps({"model_type": "vit_tiny"}))
    images = tmp_path_factory.mktemp("to_label")
    for f in PICKS:
        (images / f.replace("/", "_")).write_bytes((category.root / f).read_bytes())
    return root, images


def predict_cli(args: list[str]) -> tuple[int, str, str]:
    from defect_vision.cli.predict import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(args)
    return rc, out.getvalue(), err.getvalue()


def predict_argv(run: tuple[Path, Path], out: Path, *extra: str) -> list[str]:
    folder, images = run
    return ["--run", str(folder), "--source", str(images), "--out", str(out), "--quiet", "--conf", "0.01",
            "--max-det", "3", "--annotations", "labelstudio", "cvat", "--annotations", "fiftyone",
            "--image-root-url", "/data/local-files/?d=batch7/", *extra]


@pytest.fixture(scope="module")
def predicted(run, tmp_path_factory) -> tuple[Path, str]:
    """(predict folder, stdout) of the local engine with every tool's pre-annotations."""
    brush_decoder()
    out = tmp_path_factory.mktemp("local") / "predict"
    rc, stdout, stderr = predict_cli(predict_argv(run, out, "--workers", "1", "--threads", "1"))  # as one Ray actor
    assert rc == 0, stderr
    return out, stdout


def test_predict_writes_the_runs_predictions_for_every_tool(predicted):
    decode = brush_decoder()
    out, stdout = predicted
    assert f"pre-annotations: labelstudio_tasks.json, labelstudio_config.xml, cvat_annotations.zip, " \
           f"fiftyone_results.json -> {out}" in stdout
    preds = json.loads((out / "predictions.json").read_text())
    entries = json.loads((out / "image_ids.json").read_text())
    assert len(preds) > 0 and len(entries) == 3
    by_image = {e["id"]: [p for p in preds if p["image_id"] == e["id"]] for e in entries}
    # Label Studio: one task per image, brush regions decode to the run's RLE masks exactly, in the run's order
    tasks = json.loads((out / "labelstudio_tasks.json").read_text())
    assert [t["data"]["image"] for t in tasks] == [f"/data/local-files/?d=batch7/{e['file_name']}" for e in entries]
    version = tasks[0]["predictions"][0]["model_version"]
    assert re.fullmatch(r"toy_wood/best\.pt:[0-9a-f]{12}", version)
    checked = 0
    for task, e in zip(tasks, entries):
        brush = regions(task, "brush")
        assert len(brush) == len(by_image[e["id"]])
        for r, p in zip(brush, by_image[e["id"]]):
            want = decode_rle(p["segmentation"])
            assert r["score"] == p["score"] and np.array_equal(decode(r["value"]["rle"], e["height"], e["width"]), want)
            checked += 1
    assert checked == len(preds)
    # CVAT and FiftyOne: the same masks, categories and scores
    with zipfile.ZipFile(out / "cvat_annotations.zip") as zf:
        cvat = json.loads(zf.read("annotations/instances_default.json"))
    fo = json.loads((out / "fiftyone_results.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    for doc in (cvat, fo):
        assert {str(c["id"]): c["name"] for c in doc["categories"]} == summary["categories"]
        assert [im["file_name"] for im in doc["images"]] == [e["file_name"] for e in entries]
        assert len(doc["annotations"]) == len(preds)
        for ann, p in zip(doc["annotations"], sorted(preds, key=lambda q: q["image_id"])):
            assert (ann["image_id"], ann["category_id"], ann["score"], ann["bbox"]) == \
                (p["image_id"], p["category_id"], p["score"], p["bbox"])
            want = decode_rle(p["segmentation"])
            assert want.any() and np.array_equal(decode_rle(ann["segmentation"]), want)
    assert [a["segmentation"] for a in fo["annotations"]] == \
        [p["segmentation"] for p in sorted(preds, key=lambda q: q["image_id"])]  # the run's RLEs as they are


def test_a_missing_library_stops_predict_before_any_prediction(run, tmp_path, without_label_studio):
    folder, images = run
    rc, _, stderr = predict_cli(["--run", str(folder), "--source", str(images), "--out", str(tmp_path / "p"), "--quiet",
                                 "--annotations", "labelstudio"])
    assert rc == 2 and stderr.strip().splitlines()[-1] == \
        "error: --annotations labelstudio: needs label-studio-converter (pip install 'defect-vision[labelling]')"
    assert not (tmp_path / "p").exists()


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.*")
def test_the_ray_engine_writes_the_same_files(run, predicted, tmp_path):
    """Both engines read the pre-annotations back from their predictions.json and image_ids.json: same bytes."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'defect-vision[distributed]')")
    pytest.importorskip("ray.data", reason="Ray Data is not installed")
    import logging

    local, _ = predicted
    out = tmp_path / "ray"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    try:
        rc, stdout, stderr = predict_cli(predict_argv(run, out, "--engine", "ray", "--num-workers", "1",
                                                      "--shard-size", "2"))
    finally:
        ray.shutdown()
    assert rc == 0, stderr
    assert "pre-annotations: labelstudio_tasks.json" in stdout
    files = ["labelstudio_tasks.json", "labelstudio_config.xml", "cvat_annotations.zip", "fiftyone_results.json"]
    assert (out / "predictions.json").read_bytes() == (local / "predictions.json").read_bytes()
    for name in files:
        assert (out / name).stat().st_size > 0 and (out / name).read_bytes() == (local / name).read_bytes(), name


def test_box_only_detections_are_boxes_for_cvat_and_fiftyone(source, tmp_path):
    """A --box-only run's results have no segmentation: read back (has_mask False) they are written as boxes."""
    from defect_vision.coco import box_rle

    det = Detections([[4, 6, 20, 30]], [1], [0.7], rle=[box_rle([4, 6, 16, 24], H, W)],
                     data={"has_mask": np.array([False])}, image=ImageInfo(1, "b.png", H, W, source / "b.png"),
                     class_names=NAMES, category_ids=CAT_IDS)
    zpath, fo_path = write_annotations([det], tmp_path, ["cvat", "fiftyone"], "m")
    with zipfile.ZipFile(zpath) as zf:
        (cvat,) = json.loads(zf.read("annotations/instances_default.json"))["annotations"]
    (fo,) = json.loads(fo_path.read_text())["annotations"]
    for ann in (cvat, fo):
        assert (ann["segmentation"], ann["bbox"], ann["iscrowd"], ann["category_id"]) == \
            ([], [4.0, 6.0, 16.0, 24.0], 0, 7)


def test_a_runs_vocabulary_includes_anomaly_and_box_only_entries_read_back(source, tmp_path):
    """predict --anomaly adds `anomaly` (id after the largest) to predictions.json: the read-back knows it."""
    from defect_vision.inference.run import result_vocabulary
    from defect_vision.inference.run_files import write_run_annotations
    from defect_vision.masks import encode_rle

    names, ids = result_vocabulary(NAMES, CAT_IDS, None, anomaly=True)
    assert (names, ids) == ([*NAMES, "anomaly"], [*CAT_IDS, 8])
    assert result_vocabulary(NAMES, None, None, anomaly=True) == ([*NAMES, "anomaly"], None)
    mask = _masks()["b.png"][0]
    entries = [{"id": 1, "file_name": "b.png", "path": str(source / "b.png"), "height": H, "width": W},
               {"id": 2, "file_name": "c.png", "path": str(source / "c.png"), "height": H, "width": W},
               {"id": 3, "file_name": "broken.png", "path": str(source / "broken.png"), "skipped": "unreadable"}]
    preds = [{"image_id": 1, "category_id": 8, "bbox": [5.0, 10.0, 40.0, 20.0], "score": 0.8,
              "segmentation": encode_rle(mask)},
             {"image_id": 1, "category_id": 3, "bbox": [1.0, 2.0, 3.0, 4.0], "score": 0.5}]  # box-only
    (tmp_path / "image_ids.json").write_text(json.dumps(entries))
    (tmp_path / "predictions.json").write_text(json.dumps(preds))
    (zpath,) = write_run_annotations(tmp_path, names, ids, ("cvat",), "m")
    with zipfile.ZipFile(zpath) as zf:
        doc = json.loads(zf.read("annotations/instances_default.json"))
    assert [im["file_name"] for im in doc["images"]] == ["b.png", "c.png"]  # the skipped image is not listed
    assert {c["id"]: c["name"] for c in doc["categories"]}[8] == "anomaly"
    anomaly, box = doc["annotations"]
    assert (anomaly["category_id"], anomaly["score"], box["category_id"], box["segmentation"]) == (8, 0.8, 3, [])
    assert np.array_equal(mask_utils.decode(mask_utils.frPyObjects(anomaly["segmentation"], H, W)).astype(bool), mask)
    assert write_run_annotations(tmp_path, names, ids, (), "m") == []
