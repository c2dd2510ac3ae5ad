"""Labelling tools' exports as sources (issue 20, section 1): COCO (Roboflow, CVAT "COCO 1.0", Label Studio "COCO"),
YOLO, Label Studio JSON and CVAT XML read into the one record, checked against files the tools' own libraries write
(label-studio-sdk's brush RLE, datumaro's CVAT and COCO exporters, pycocotools), with the warnings and --strict."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fixtures import tool_exports as te

from defect_vision.data.labelled import ImageFinder
from defect_vision.data.source import DatasetSource, read_dataset
from defect_vision.errors import DatasetError

SHAPE = (72, 96)


def masks_of(cat) -> dict[str, list[tuple[str, np.ndarray, bool]]]:
    return {r.file_name: [(i.category, i.full_mask(), i.box_only) for i in r.instances] for r in cat.images}


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under root with its size and mtime: what a reader must leave as it was."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("writer", [te.roboflow_coco, te.cvat_coco, te.labelstudio_coco])
def test_coco_exports_of_the_tools_read_as_they_come(tmp_path, writer, capsys):
    root = tmp_path / "export"
    drawn = writer(root, shape=SHAPE)
    before = tree(root)
    cat = read_dataset(DatasetSource(root, "parts", format="auto"))
    assert "is a coco layout" in capsys.readouterr().err
    assert sorted(r.file_name for r in cat.images) == sorted(drawn)
    assert cat.defect_types == ["hole", "scratch", "stain"]  # names from non-contiguous ids 3, 7, 11
    got = masks_of(cat)
    pairs = [(cls, m, got[name][k]) for name, defects in drawn.items() for k, (cls, m) in enumerate(defects)]
    assert pairs and all(g[0] == cls and not g[2] for cls, _, g in pairs)
    exact = writer is te.cvat_coco  # RLE: pixel-exact; polygons (pixel centres) lose the outer half pixel
    assert all((g[1] == m).all() for _, m, g in pairs) if exact else np.mean([iou(g[1], m) for _, m, g in pairs]) > 0.5
    for r in cat.images:  # an image's label: the most frequent class of its instances (ties: first by name)
        classes = [i.category for i in r.instances]
        assert r.defect_type == (min(set(classes), key=lambda c: (-classes.count(c), c)) if classes else "good")
    assert tree(root) == before  # the reader wrote nothing into the source


def test_roboflow_splits_kept_with_benchmark_split(tmp_path):
    from defect_vision.data.splits import SplitConfig, make_split

    drawn = te.roboflow_coco(tmp_path / "rf", shape=SHAPE)
    cat = read_dataset(DatasetSource(tmp_path / "rf", "rf", format="coco", benchmark_split=True))
    assert {r.file_name: r.split_hint for r in cat.images} == {
        n: {"train": "train", "valid": "val", "test": "test"}[n.split("/")[0]] for n in drawn}
    split = make_split(cat, SplitConfig(official=True))
    assert split.files["val"] == sorted(n for n in drawn if n.startswith("valid/"))
    assert split.files["test"] == sorted(n for n in drawn if n.startswith("test/"))


def test_uncompressed_rle_iscrowd_box_only_through_every_format(tmp_path, capsys):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from defect_vision.cli.convert import main as convert
    from defect_vision.coco import load_coco
    from defect_vision.training.sam_data import load_prompts

    img = tmp_path / "img"
    drawn = te.draw(img, 8, SHAPE, seed=3)
    boxed = {n for n, d in drawn.items() if d and d[0][0] == "stain"}
    ann = tmp_path / "coco.json"
    ann.write_text(json.dumps(te.coco_dict(drawn, SHAPE, mode="uncompressed", box_only=boxed)))
    out = tmp_path / "out"
    assert convert(["--format", "coco", "--root", str(img), "--annotations", str(ann), "--out", str(out),
                    "--split", "1", "1", "1", "--task", "segment", "--no-progress"]) == 0
    cat = read_dataset(DatasetSource(img, "img", format="coco", annotations=ann))
    for name, defects in drawn.items():
        rec = next(r for r in cat.images if r.file_name == name)
        assert len(rec.instances) == len(defects)
        for inst, (cls, m) in zip(rec.instances, defects):
            if name in boxed:
                assert inst.box_only and list(inst.bbox) == te.box_of(m) and inst.crop.all()
            else:
                assert not inst.box_only and (inst.full_mask() == m).all()  # uncompressed RLE, iscrowd 1: exact
    box_ids, n_box = set(), 0
    for split in ("train", "val", "test"):
        data = json.loads((out / "coco" / "img" / f"instances_{split}.json").read_text())
        boxes = [a for a in data["annotations"] if a["segmentation"] == []]
        n_box += len(boxes)
        box_ids |= {a["id"] for a in boxes}
        COCOeval(COCO(str(out / "coco" / "img" / f"instances_{split}.json")), COCO(str(out / "coco" / "img" / f"instances_{split}.json")), "bbox")  # loads
        assert len(load_coco(out / "coco" / "img" / f"instances_{split}.json").images) == len(data["images"])
        labels = {p.stem: p.read_text() for p in (out / "yolo" / "img" / "labels" / split).glob("*.txt")}
        prompts = json.loads((out / "sam" / "img" / f"prompts_{split}.json").read_text())
        flagged = [i for im in prompts["images"] for i in im["instances"] if i.get("box_only")]
        assert {i["annotation_id"] for i in flagged} == {a["id"] for a in boxes}
        assert all("mask" not in i for i in flagged)
        for im in prompts["images"]:  # segment labels leave box-only instances out
            assert len(labels[Path(im["file_name"]).stem].splitlines()) == sum(not i.get("box_only") for i in im["instances"])
        ps = load_prompts(out / "sam" / "img" / f"prompts_{split}.json")
        assert ps.num_instances == sum(len(im["instances"]) for im in prompts["images"]) - len(flagged)
    assert n_box == sum(len(drawn[n]) for n in boxed) > 0
    only_boxes = json.loads((out / "sam" / "img" / "prompts_train.json").read_text())
    for im in only_boxes["images"]:
        im["instances"] = [{**i, "box_only": True} for i in im["instances"]]
    bad = tmp_path / "prompts_train.json"
    bad.write_text(json.dumps(only_boxes))
    with pytest.raises(DatasetError, match="no instance has a mask"):
        load_prompts(bad)


def test_labelstudio_json_polygons_brush_rectangles(tmp_path):
    pytest.importorskip("label_studio_converter")
    path, drawn = te.labelstudio_tasks(tmp_path / "ls", shape=SHAPE)
    root = tmp_path / "ls"
    before = tree(root)
    cat = read_dataset(DatasetSource(root / "images", "ls", format="labelstudio", annotations=path))
    got = {f"images/{k}": v for k, v in masks_of(cat).items()}
    assert sorted(got) == sorted(drawn)
    checked = {"scratch": [], "hole": [], "stain": []}
    for name, defects in drawn.items():
        for (cls, m), (gcls, gm, box_only) in zip(defects, got[name]):
            assert gcls == cls and box_only == (cls == "stain")
            checked[cls].append(iou(gm, m))
    assert all(checked.values())
    assert min(checked["hole"]) == 1.0  # brush RLE (Label Studio's mask2rle) decodes exactly
    assert min(checked["stain"]) == 1.0 or all(v >= 0.3 for v in checked["stain"])  # the box around the mask
    assert np.mean(checked["scratch"]) > 0.5  # polygon through pixel centres
    assert tree(root) == before


def test_labelstudio_predictions_only_and_several_annotations_are_said(tmp_path, capsys):
    pytest.importorskip("label_studio_converter")
    path, _ = te.labelstudio_tasks(tmp_path / "ls", shape=SHAPE)
    tasks = json.loads(path.read_text())
    tasks[0]["predictions"] = [{"model_version": "m1", "score": 0.9, "result": tasks[0]["annotations"][0]["result"]}]
    tasks[0]["annotations"] = []
    tasks[1]["annotations"].append(tasks[1]["annotations"][0])
    path.write_text(json.dumps(tasks))
    cat = read_dataset(DatasetSource(tmp_path / "ls", "ls", format="labelstudio", annotations=path))
    err = capsys.readouterr().err
    assert "1 tasks labelled only by a model's predictions (read as labels) (first: export.json task 1)" in err
    assert "1 tasks with several annotations (the first kept) (first: export.json task 2)" in err
    assert cat.images[0].instances and cat.images[0].defect_type == "scratch"


def test_cvat_xml_polygons_masks_boxes_and_unknown_labels(tmp_path, capsys):
    path, drawn = te.cvat_xml(tmp_path / "cv", shape=SHAPE)
    text = path.read_text().replace('<box label="stain"', '<polyline label="stain" points="1,1;5,5"/><box label="stain"', 1)
    text = text.replace('<polygon label="scratch"', '<polygon label="dent"', 1)
    path.write_text(text)
    cat = read_dataset(DatasetSource(tmp_path / "cv", "cv", format="auto"))
    err = capsys.readouterr().err
    assert "is a cvat layout" in err
    assert "1 shapes of a label the XML's meta does not list (skipped) (first: annotations.xml image 0 polygon 0)" in err
    assert "1 shapes that are not regions" in err
    got = masks_of(cat)
    holes = [(m, g) for n, d in drawn.items() for (c, m), g in zip(d, got[n][-len(d):]) if c == "hole"]
    assert holes and all((g[1] == m).all() for m, g in holes)  # CVAT mask RLE: exact
    with pytest.raises(DatasetError, match=r"annotations.xml image 0 polygon 0: shapes of a label the XML's meta does "
                                           r"not list \(--strict makes this an error\)"):
        read_dataset(DatasetSource(tmp_path / "cv", "cv", format="cvat", strict=True))


def test_cvat_and_coco_written_by_datumaro(tmp_path):
    dm = pytest.importorskip("datumaro")
    from datumaro.components.annotation import Bbox, Mask, Polygon
    from datumaro.components.dataset_base import DatasetItem
    from datumaro.components.media import Image

    rng = np.random.default_rng(0)
    items, truth = [], {}
    for k in range(3):
        m = np.zeros(SHAPE, np.uint8)
        y, x = rng.integers(5, 40), rng.integers(5, 60)
        m[y : y + 9, x : x + 13] = 1
        m[y + 2, x + 20 : x + 25] = 1  # a second piece: one instance all the same
        items.append(DatasetItem(id=f"p{k}", media=Image.from_numpy(rng.integers(0, 255, (*SHAPE, 3), np.uint8)),
                                 annotations=[Mask(image=m, label=0), Polygon([2, 2, 30, 2, 30, 20, 2, 20], label=1),
                                              Bbox(60, 40, 20, 10, label=2)]))
        truth[f"p{k}"] = m.astype(bool)
    ds = dm.Dataset.from_iterable(items, categories=["hole", "scratch", "stain"])
    ds.export(str(tmp_path / "cvat"), "cvat", save_media=True)
    ds.export(str(tmp_path / "coco"), "coco_instances", save_media=True)
    sources = [DatasetSource(tmp_path / "cvat", "c", format="auto", annotations=tmp_path / "cvat" / "default.xml"),
               DatasetSource(tmp_path / "coco", "c", format="coco")]
    for source in sources:
        cat = read_dataset(source)
        assert len(cat.images) == 3 and cat.defect_types == ["hole", "scratch", "stain"]
        for r in cat.images:
            hole, scratch, stain = r.instances
            assert (hole.full_mask() == truth[Path(r.file_name).stem]).all() and hole.area == truth[Path(r.file_name).stem].sum()
            assert scratch.bbox[:2] == (2, 2) and scratch.area >= 28 * 18 and not scratch.box_only
            assert stain.box_only and stain.bbox == (60, 40, 20, 10)


@pytest.mark.parametrize("task", ["segment", "detect"])
def test_yolo_dataset_roboflow_paths_and_its_splits(tmp_path, task):
    drawn = te.yolo_dataset(tmp_path / "yo", shape=SHAPE, task=task)
    cat = read_dataset(DatasetSource(tmp_path / "yo", "yo", format="yolo", benchmark_split=True))
    assert sorted(r.file_name for r in cat.images) == sorted(drawn)
    assert {r.split_hint for r in cat.images} == {"train", "val"}
    got = masks_of(cat)
    pairs = [(m, got[n][k]) for n, d in drawn.items() for k, (_, m) in enumerate(d) if k < len(got[n])]
    assert pairs and all(g[2] == (task == "detect") for _, g in pairs)
    if task == "detect":
        assert all(g[1].sum() == np.prod([te.box_of(m)[3], te.box_of(m)[2]]) for m, g in pairs)


def test_never_guess_silently(tmp_path, capsys):
    img = tmp_path / "img"
    drawn = te.draw(img, 6, SHAPE, seed=5)
    data = te.coco_dict(drawn, SHAPE, mode="rle")
    data["annotations"][0]["category_id"] = 99  # unknown category
    data["annotations"].append({**data["annotations"][1], "id": 500, "image_id": 77})  # an image id not listed
    poly = [[-10.0, -10.0, 30.0, -10.0, 30.0, 20.0, -10.0, 20.0]]
    data["annotations"].append({"id": 501, "image_id": 2, "category_id": 7, "bbox": [0, 0, 30, 20], "segmentation": poly})
    data["annotations"].append({"id": 502, "image_id": 2, "category_id": 7, "bbox": [0, 0, 0, 0],
                                "segmentation": [[500.0, 500, 510, 500, 510, 510]]})  # wholly outside: no pixel
    data["images"].append({"id": 9, "file_name": "gone.png", "height": SHAPE[0], "width": SHAPE[1]})
    ann = tmp_path / "a.json"
    ann.write_text(json.dumps(data))
    cat = read_dataset(DatasetSource(img, "x", format="coco", annotations=ann))
    err = capsys.readouterr().err.splitlines()
    assert "warning: 1 annotations of an unknown category id (skipped) (first: a.json annotation 1)" in err
    assert "warning: 1 annotations of an image id the file does not list (skipped) (first: a.json annotation 500)" in err
    assert any(e.startswith("warning: 1 shapes reaching outside their image (clipped) (first: a.json annotation 501")
               for e in err)
    assert any(e.startswith("warning: 1 shapes with no pixel inside their image (dropped) (first: a.json annotation 502")
               for e in err)
    assert any(e.startswith(f"warning: {ann}: 1 of 7 images it lists are not on disk") for e in err)
    clipped = [i for r in cat.images for i in r.instances if i.bbox[:2] == (0, 0) and i.bbox[2] >= 30]
    assert clipped and clipped[0].bbox == (0, 0, 30, 20) and clipped[0].area == 600
    bad = tmp_path / "strict.json"
    for first, needle in ((1, "unknown category id"), (500, "image id the file does not list")):
        one = json.loads(ann.read_text())
        one["annotations"] = [a for a in one["annotations"] if a["id"] in (first, 501)]
        one["annotations"][0]["category_id"] = 99 if first == 1 else 3
        bad.write_text(json.dumps(one))
        with pytest.raises(DatasetError, match=rf"^strict.json annotation {first}: annotations of an? {needle} "
                                               r"\(--strict makes this an error\)$"):
            read_dataset(DatasetSource(img, "x", format="coco", annotations=bad, strict=True))
    one["annotations"] = [a for a in one["annotations"] if a["id"] == 501]
    bad.write_text(json.dumps(one))
    with pytest.raises(DatasetError, match=r"strict.json: 1 of 7 images it lists are not on disk .*strict"):
        read_dataset(DatasetSource(img, "x", format="coco", annotations=bad, strict=True))
    one["images"] = one["images"][:6]
    bad.write_text(json.dumps(one))
    with pytest.raises(DatasetError, match=r"^strict.json annotation 501 \(img_001.png\): shapes reaching outside "
                                           r"their image \(--strict makes this an error\)$"):
        read_dataset(DatasetSource(img, "x", format="coco", annotations=bad, strict=True))


def test_size_mismatch_and_bad_shapes_are_one_line_errors(tmp_path):
    img = tmp_path / "img"
    drawn = te.draw(img, 3, SHAPE, seed=2)
    data = te.coco_dict(drawn, SHAPE)
    data["images"][0]["width"] = 10
    ann = tmp_path / "a.json"
    ann.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=rf"img_000.png: image is {SHAPE[1]}x{SHAPE[0]} but the labels were drawn "
                                           rf"on 10x{SHAPE[0]}"):
        read_dataset(DatasetSource(img, "x", format="coco", annotations=ann))
    data = te.coco_dict(drawn, SHAPE, mode="rle")
    data["annotations"][0]["segmentation"]["size"] = [5, 5]
    ann.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=r"a.json annotation 1 \(img_000.png\): bad rle \(ValueError: RLE of size 5x5"):
        read_dataset(DatasetSource(img, "x", format="coco", annotations=ann))


def test_image_names_from_the_tools_resolve_under_root(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("a/b/x.png", "y.png", "a/1a2b3c4d-z.png"):
        (tmp_path / name).write_bytes(b"")
    f = ImageFinder(tmp_path)
    assert f.find("/data/upload/3/1a2b3c4d-x.png") == tmp_path / "a/b/x.png"  # upload prefix missing on disk
    assert f.find("/data/local-files/?d=dataset/a/b/x.png") == tmp_path / "a/b/x.png"
    assert f.find("images/y.png") == tmp_path / "y.png"
    assert f.find("http://host/bucket/a/1a2b3c4d-z.png") == tmp_path / "a/1a2b3c4d-z.png"
    assert f.find("/data/upload/3/nothing.png") is None
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "x.png").write_bytes(b"")
    with pytest.raises(DatasetError, match="2 images of that name"):
        ImageFinder(tmp_path).find("other/x.png")


def _export(kind: str, root: Path) -> list[str]:
    """Write one tool's export under root; the convert arguments that read it."""
    if kind == "roboflow_coco":
        te.roboflow_coco(root, shape=SHAPE)
        return ["--format", "coco", "--benchmark-split"]  # Roboflow's own train/valid/test
    if kind == "cvat_coco":
        te.cvat_coco(root, shape=SHAPE)
        return ["--format", "coco", "--annotations", str(root / "annotations" / "instances_default.json")]
    if kind == "labelstudio_coco":
        te.labelstudio_coco(root, shape=SHAPE)
        return ["--format", "coco", "--annotations", str(root / "result.json")]
    if kind == "labelstudio":
        path, _ = te.labelstudio_tasks(root, shape=SHAPE)
        return ["--format", "labelstudio", "--annotations", str(path)]
    if kind == "cvat":
        path, _ = te.cvat_xml(root, shape=SHAPE)
        return ["--format", "cvat", "--annotations", str(path)]
    te.yolo_dataset(root, shape=SHAPE)
    return ["--format", "yolo", "--benchmark-split"]  # its own train/val


@pytest.mark.parametrize("kind", ["roboflow_coco", "cvat_coco", "labelstudio_coco", "labelstudio", "cvat", "yolo"])
def test_each_tool_export_converts_trains_and_predicts(kind, tmp_path, one_thread):
    """`defect-vision convert` of each tool's export (as users run it), then the detector and SAM fine-tunes from
    scratch (one epoch) and predict + evaluate on its test split: the whole loop on every source."""
    import defect_vision as dv
    from defect_vision.cli import main

    root, ds, run = tmp_path / "export", tmp_path / "datasets", tmp_path / "runs" / "parts"
    args = _export(kind, root)
    assert main(["convert", "--root", str(root), "--category", "parts", "--out", str(ds), "--task", "segment",
                 "--no-progress", *args]) == 0
    classes = [c["name"] for c in json.loads((ds / "coco/parts/instances_train.json").read_text())["categories"]]
    assert classes == ["hole", "scratch", "stain"]
    if "--benchmark-split" in args:  # the export's own held-out images only (YOLO: its val, shared with test)
        val = json.loads((ds / "coco/parts/instances_val.json").read_text())["images"]
        test = json.loads((ds / "coco/parts/instances_test.json").read_text())["images"]
        assert val and test and all(im["file_name"].startswith("valid/") for im in val + (test if kind == "yolo" else []))
    det = dv.finetune_detector(dv.DetectorTrainConfig(
        "parts", ds / "yolo/parts/data.yaml", ds / "coco/parts", run / "yolo_world", from_scratch=True,
        model_cfg="yolov8n-worldv2.yaml", text_encoder="random", embedding_cache=None, epochs=1, imgsz=64, batch=8,
        workers=0, plots=False, device="cpu"))
    assert det["classes"] == classes
    sam = dv.finetune_sam(dv.SamTrainConfig(ds / "sam/parts", run / "sam", model_type="vit_tiny", from_scratch=True,
                                            epochs=1, device="cpu", quiet=True))
    assert sam["model_type"] == "vit_tiny"
    predictor = dv.DefectPredictor.from_run(run, conf=0.0, device="cpu")
    gt_test = ds / "coco/parts/instances_test.json"
    n_test = len(json.loads(gt_test.read_text())["images"])
    summary = dv.predict_run(predictor, gt_test, run / "predict", dv.RunOptions(progress=False))
    assert n_test > 0 and summary.images == n_test
    metrics = dv.evaluate(gt_test, run / "predict" / "predictions.json", out=run / "eval").to_dict()
    assert metrics["counts"]["images"] == n_test
