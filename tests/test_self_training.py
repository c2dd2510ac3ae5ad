"""Self-training on unlabelled images (`train-detector --unlabelled`, `train-sam --pseudo`, `curve --unlabelled-rest`):
the class-adaptive threshold rule, the labels + pseudo-labels dataset, the run's pseudo_labels.json, the SAM stage's
box-mask agreement, and the report section."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from defect_vision.cli import main
from defect_vision.cli.convert import main as convert_main
from defect_vision.detections import Detections, ImageInfo, encode_masks
from defect_vision.errors import ConfigError
from defect_vision.training.self_training import (
    SelfTrainConfig,
    box_mask_agreement,
    class_thresholds,
    keep_confident,
    labelled_instances,
    reference_share,
    write_pseudo_dataset,
)

TINY = ["--from-scratch", "--model-cfg", "yolov8n-worldv2.yaml", "--text-encoder", "random", "--imgsz", "64",
        "--epochs", "1", "--batch", "8", "--workers", "0", "--no-plots", "mosaic=0"]
# a random-init detector scores ~1e-5..1e-4: thresholds that small make its boxes pseudo-labels (mechanics only)
PSEUDO = ["--pseudo-conf", "0.00003", "--pseudo-floor", "0.00001"]


@pytest.fixture(autouse=True)
def _no_clip(no_clip_download):
    """Every test here fails if ultralytics' own CLIP download path is reached."""


@pytest.fixture(scope="module")
def toy(synthetic_root, tmp_path_factory) -> Path:
    """toy_wood converted into <datasets>/{coco,yolo,sam}/toy_wood."""
    ds = tmp_path_factory.mktemp("st_datasets")
    assert convert_main(["--category", "toy_wood", "--root", str(synthetic_root), "--out", str(ds), "--no-progress"]) == 0
    return ds


def _tree_hash(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        h.update(str(p.relative_to(folder)).encode())
        if p.is_file() and not p.is_symlink():
            h.update(p.read_bytes())
    return h.hexdigest()


def test_fixed_rule_is_one_threshold_and_adaptive_is_adsh():
    labelled = {"a": 10, "b": 2, "c": 1, "d": 1, "e": 3}
    scores = {"a": np.array([0.9, 0.8, 0.6, 0.4, 0.2]),  # most labelled: 3 of 5 reach 0.5 -> rho = 0.6
              "b": np.array([0.5, 0.3, 0.2, 0.1, 0.05]),  # 3rd best of 5 (ceil(0.6 x 5))
              "c": np.array([0.45]),  # ceil(0.6 x 1) = 1st
              "e": np.array([0.99, 0.98, 0.97])}  # its quantile (0.98) is above conf: capped at conf
    assert class_thresholds(scores, labelled, 0.5, "fixed") == dict.fromkeys(labelled, 0.5)
    assert reference_share(scores, labelled, 0.5) == ("a", 0.6)
    t = class_thresholds(scores, labelled, 0.5, "adaptive", floor=0.1)
    assert t == {"a": 0.5, "b": pytest.approx(0.2), "c": pytest.approx(0.45), "d": 0.5, "e": 0.5}
    # the same share of each class's detections passes
    assert [float(np.mean(scores[c] >= t[c])) for c in ("a", "b", "c")] == [0.6, 0.6, 1.0]
    assert class_thresholds(scores, labelled, 0.5, "adaptive", floor=0.25)["b"] == 0.25  # never below the floor
    none_pass = {**scores, "a": np.array([0.4, 0.3])}  # rho = 0: nothing to match, every class keeps conf
    assert class_thresholds(none_pass, labelled, 0.5, "adaptive") == dict.fromkeys(labelled, 0.5)
    with pytest.raises(ConfigError, match="pseudo_rule median"):
        class_thresholds(scores, labelled, 0.5, "median")


def test_config_checks_name_the_option():
    for kwargs, text in (({"rounds": 0}, "rounds 0: must be >= 1"), ({"rule": "x"}, "pseudo_rule x"),
                         ({"conf": 1.5}, "pseudo_conf 1.5"), ({"conf": 0.2, "floor": 0.3}, "pseudo_floor 0.3")):
        with pytest.raises(ConfigError, match=text):
            SelfTrainConfig(Path("u"), **kwargs)
    c = SelfTrainConfig("u")
    with pytest.raises(AttributeError):
        c.rounds = 2  # frozen


def test_keep_confident_and_box_mask_agreement():
    det = Detections([[0, 0, 10, 10], [0, 0, 5, 5], [2, 2, 8, 8]], [0, 1, 1], [0.4, 0.3, 0.1], class_names=["a", "b"])
    kept = keep_confident(det, {"a": 0.5, "b": 0.2})
    assert kept.class_id.tolist() == [1] and kept.score.tolist() == [0.3]
    masks = np.zeros((3, 20, 20), bool)
    masks[0, 0:10, 0:10] = True  # fills its box
    masks[1, 0:10, 0:5] = True  # half of the box [0, 0, 10, 10]
    ious = box_mask_agreement(np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]]), encode_masks(masks))
    assert ious == pytest.approx([1.0, 0.5, 0.0])  # the third mask is empty


def test_pseudo_dataset_is_labels_plus_pseudo_labels_and_leaves_the_export_alone(toy, tmp_path):
    data_yaml = toy / "yolo" / "toy_wood" / "data.yaml"
    before = _tree_hash(toy / "yolo" / "toy_wood")
    labelled = labelled_instances(data_yaml)
    train_labels = sorted((toy / "yolo" / "toy_wood" / "labels" / "train").glob("*.txt"))
    lines = sum(len(p.read_text().splitlines()) for p in train_labels)
    assert sum(labelled.values()) == lines > 0 and list(labelled) == ["combined", "crack", "hole", "scratch", "stain"]
    test_images = sorted((toy / "yolo" / "toy_wood" / "images" / "test").iterdir())[:2]
    pseudo = [Detections([[10, 20, 110, 60]], [2], [0.9], image=ImageInfo(1, "a", 256, 256, test_images[0]),
                         class_names=list(labelled)),
              Detections([[0, 0, 128, 256], [5, 5, 15, 25]], [0, 4], [0.8, 0.7],
                         image=ImageInfo(2, "b", 256, 256, test_images[1]), class_names=list(labelled))]
    out = write_pseudo_dataset(data_yaml, tmp_path / "yolo", pseudo)
    data = yaml.safe_load(out.read_text())
    assert data["names"] == dict(enumerate(labelled)) and data["train"] == "images/train"
    assert Path(data["val"]) == (toy / "yolo" / "toy_wood" / "images" / "val").resolve()
    images = sorted(p.name for p in (tmp_path / "yolo" / "images" / "train").iterdir())
    assert len(images) == len(train_labels) + 2
    first = (tmp_path / "yolo" / "labels" / "train" / f"pseudo_00000_{test_images[0].stem}.txt").read_text()
    assert first == "2 0.234375 0.156250 0.390625 0.156250\n"
    second = (tmp_path / "yolo" / "labels" / "train" / f"pseudo_00001_{test_images[1].stem}.txt").read_text()
    assert second.splitlines()[1] == "4 0.039062 0.058594 0.039062 0.078125"
    assert (tmp_path / "yolo" / "images" / "train" / f"pseudo_00001_{test_images[1].name}").resolve() == \
        test_images[1].resolve()
    assert labelled_instances(out) == {**labelled, "combined": labelled["combined"] + 1, "hole": labelled["hole"] + 1,
                                       "stain": labelled["stain"] + 1}
    assert _tree_hash(toy / "yolo" / "toy_wood") == before


def _train(toy: Path, out: Path, *extra: str) -> list[str]:
    return ["train-detector", "--category", "toy_wood", "--data", str(toy / "yolo" / "toy_wood" / "data.yaml"),
            "--coco", str(toy / "coco" / "toy_wood"), "--out", str(out), *TINY, *extra]


def test_bad_self_training_input_is_one_line_and_writes_nothing(toy, tmp_path, capsys):
    out = tmp_path / "run"
    unlabelled = toy / "yolo" / "toy_wood" / "images" / "test"
    assert main(_train(toy, out, "--unlabelled", str(unlabelled), "--rounds", "0")) == 2
    assert capsys.readouterr().err.strip() == "error: --rounds 0: must be >= 1"
    assert main(_train(toy, out, "--unlabelled", str(toy / "yolo" / "toy_wood" / "images" / "val"))) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "are validation images" in err and len(err.splitlines()) == 1
    assert main(_train(toy, out, "--unlabelled", str(tmp_path / "nothing"))) == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert main(_train(toy, out, "--unlabelled", str(unlabelled), "--resume")) == 2
    assert capsys.readouterr().err.startswith("error: --resume: not with --unlabelled (")
    assert not out.exists()


def test_a_round_without_pseudo_labels_keeps_its_teacher(toy, tmp_path, capsys):
    out = tmp_path / "run"
    unlabelled = toy / "yolo" / "toy_wood" / "images" / "test"
    assert main(_train(toy, out, "--unlabelled", str(unlabelled), "--pseudo-rule", "fixed", "--no-progress")) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith(f"self-training (fixed): {out / 'pseudo_labels.json'}: round 0: labels only, val mAP50 ")
    assert last.endswith("(none: not trained)")
    record = json.loads((out / "pseudo_labels.json").read_text())
    r1 = record["rounds"][1]  # a random-init detector scores < 0.05 (the default floor): nothing passes 0.5
    assert r1["trained"] is False and r1["model"] == r1["teacher"] == "rounds/round_0/best.pt"
    assert r1["images_used"] == 0 and r1["thresholds"] == dict.fromkeys(record["labelled_per_class"], 0.5)
    assert not (out / "rounds" / "round_1").exists()
    assert (out / "best.pt").read_bytes() == (out / "rounds" / "round_0" / "best.pt").read_bytes()


@pytest.fixture(scope="module")
def self_trained(toy, tmp_path_factory) -> Path:
    """A 2-round self-training run (random-init detector, tiny thresholds) on the test images as unlabelled."""
    out = tmp_path_factory.mktemp("st_run") / "yolo_world"
    unlabelled = toy / "yolo" / "toy_wood" / "images" / "test"
    assert main(_train(toy, out, "--unlabelled", str(unlabelled), "--rounds", "2", "--no-progress", *PSEUDO)) == 0
    return out


def test_self_training_run_writes_rounds_pseudo_labels_and_best_pt(toy, self_trained, capsys):
    out = self_trained
    record = json.loads((out / "pseudo_labels.json").read_text())
    n_unlabelled = len(list((toy / "yolo" / "toy_wood" / "images" / "test").iterdir()))
    assert record["unlabelled_images"] == n_unlabelled and record["settings"]["rule"] == "adaptive"
    assert record["labelled_per_class"] == labelled_instances(toy / "yolo" / "toy_wood" / "data.yaml")
    assert [r["round"] for r in record["rounds"]] == [0, 1, 2]
    for r in record["rounds"][1:]:
        assert r["teacher"] == f"rounds/round_{r['round'] - 1}/best.pt" and r["model"] == f"rounds/round_{r['round']}/best.pt"
        assert all(t <= 0.00003 for t in r["thresholds"].values())
        labels = sorted((out / "data" / f"round_{r['round']}" / "yolo" / "labels" / "train").glob("pseudo_*.txt"))
        assert len(labels) == r["images_used"] == len(r["images"]) and r["images_seen"] == n_unlabelled
        counted = dict.fromkeys(record["labelled_per_class"], 0)
        for p in labels:
            for line in p.read_text().splitlines():
                counted[list(counted)[int(line.split()[0])]] += 1
        assert counted == r["pseudo_per_class"] and sum(counted.values()) > 0
        for im in r["images"]:  # every kept box reached its class's threshold
            assert all(s >= r["thresholds"][c] for c, s in zip(im["classes"], im["scores"]))
        data = yaml.safe_load((out / "data" / f"round_{r['round']}" / "yolo" / "data.yaml").read_text())
        assert Path(data["path"]) == (out / "data" / f"round_{r['round']}" / "yolo").resolve()  # the final folder
    assert (out / "best.pt").read_bytes() == (out / "rounds" / "round_2" / "best.pt").read_bytes()
    meta = json.loads((out / "best.json").read_text())
    assert [r["round"] for r in meta["self_training"]["rounds"]] == [0, 1, 2]
    assert "images" not in meta["self_training"]["rounds"][1] and meta["classes"] == list(record["labelled_per_class"])
    assert meta["data"] == str((out / "data" / "round_2" / "yolo" / "data.yaml").resolve())
    from ultralytics import YOLOWorld

    assert list(YOLOWorld(str(out / "best.pt")).names.values()) == meta["classes"]


def test_sam_stage_takes_pseudo_boxes_where_mask_and_box_agree(toy, self_trained, tmp_path, capsys, one_thread):
    prompts = toy / "sam" / "toy_wood"
    record = json.loads((self_trained / "pseudo_labels.json").read_text())
    offered = sum(record["rounds"][-1]["pseudo_per_class"].values())
    base = ["train-sam", "--category", "toy_wood", "--prompts", str(prompts), "--model-type", "vit_tiny",
            "--from-scratch", "--epochs", "0", "--quiet", "--device", "cpu", "--cache-dir", str(tmp_path / "cache")]
    # --epochs 0: the start model validated, no training (what is measured here is the data it would train on)
    assert main([*base, "--out", str(tmp_path / "bad"), "--pseudo", str(self_trained), "--pseudo-agreement", "2"]) == 2
    assert capsys.readouterr().err.strip() == "error: --pseudo-agreement 2.0: must be within [0, 1]"
    assert not (tmp_path / "bad").exists()
    assert main([*base, "--out", str(tmp_path / "sam"), "--pseudo", str(tmp_path / "none")]) == 2
    assert capsys.readouterr().err.strip() == (f"error: {tmp_path / 'none'}: no such file (train-detector --unlabelled "
                                               "writes pseudo_labels.json in its run folder)")
    assert not (tmp_path / "sam").exists()

    out = tmp_path / "sam"
    assert main([*base, "--out", str(out), "--pseudo", str(self_trained / "pseudo_labels.json"),
                 "--pseudo-agreement", "0"]) == 0  # agreement 0: every pseudo box is taken
    meta = json.loads((out / "best.json").read_text())
    plain = json.loads((prompts / "prompts_train.json").read_text())
    n_plain = sum(len(im["instances"]) for im in plain["images"])
    assert meta["pseudo"]["offered_per_class"] == record["rounds"][-1]["pseudo_per_class"]
    assert meta["pseudo"]["instances"] == offered > 0
    assert meta["data"]["train_instances"] == n_plain + offered and meta["data"]["prompts"] == str(prompts)
    assert not list(tmp_path.glob(".sam.pseudo-*"))  # the temporary prompts are gone

    strict = tmp_path / "sam_strict"
    assert main([*base, "--out", str(strict), "--pseudo", str(self_trained), "--pseudo-agreement", "1"]) == 0
    kept = json.loads((strict / "best.json").read_text())["pseudo"]
    assert sum(kept["kept_per_class"].values()) == kept["instances"] < offered  # random SAM masks rarely fit a box


def test_report_section_shows_rounds_and_the_measured_curve(self_trained, tmp_path):
    from defect_vision.evaluation.report_self_training import (
        self_training_section,
        unlabelled_curve_plot,
    )

    run = tmp_path / "runs" / "toy_wood"
    assert self_training_section(run) == ""
    (run / "yolo_world").mkdir(parents=True)
    (run / "yolo_world" / "pseudo_labels.json").write_text((self_trained / "pseudo_labels.json").read_text())
    html = self_training_section(run)
    record = json.loads((self_trained / "pseudo_labels.json").read_text())
    r1 = record["rounds"][1]
    assert '<table id="pseudo-labels">' in html and "round 2" in html and "unlabelled-curve" not in html
    assert f"{r1['thresholds']['hole']:.3f} / {r1['pseudo_per_class']['hole']}" in html
    assert f"<td>{r1['reference_class']}: {r1['reference_share']:.2f}</td>" in html

    pts = lambda *m: [{"k": k, "mean": v, "min": v, "max": v, "n": 1} for k, v in zip((0, 1), m)]
    results = {"category": "toy_wood", "protocol": "p", "seeds": [0], "weights": "random-init",
               "summary": {v: {"detector_box_ap50": pts(0.0, a), "end_to_end_mask_iou": pts(0.0, a / 2)}
                           for v, a in (("labels", 0.5), ("adaptive", 0.6), ("fixed", 0.4))}}
    stage = run / "curve_unlabelled"
    stage.mkdir()
    (stage / "results.json").write_text(json.dumps(results))
    unlabelled_curve_plot(results, stage / "unlabelled_curve.png")
    html = self_training_section(run)
    assert '<table id="unlabelled-curve">' in html and "data:image/png;base64," in html
    assert "+ unlabelled, adaptive thresholds</td><td>detector box AP50</td><td>0.000</td><td>0.600</td>" in html


@pytest.mark.slow
def test_curve_unlabelled_rest_compares_labels_alone_with_both_rules(toy, tmp_path, capsys):
    runs = tmp_path / "runs"
    assert main(["curve", "--category", "toy_wood", "--datasets", str(toy), "--runs", str(runs), "--fast",
                 "--epochs", "1", "--shots", "1", "--seeds", "0", "--unlabelled-rest", *PSEUDO]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("unlabelled curve: ")
    out = runs / "toy_wood" / "curve_unlabelled"
    results = json.loads((out / "results.json").read_text())
    assert results["variants"] == ["labels", "adaptive", "fixed"]
    assert [(r["variant"], r["k"]) for r in results["runs"]] == [
        ("labels", 0), ("adaptive", 0), ("fixed", 0), ("labels", 1), ("adaptive", 1), ("fixed", 1)]
    manifest = json.loads((out / "data" / "k1_s0" / "manifest.json").read_text())
    unlabelled = sorted(p.name for p in (out / "data" / "k1_s0" / "unlabelled").iterdir())
    train = json.loads((toy / "coco" / "toy_wood" / "instances_train.json").read_text())
    rest = sorted(im["file_name"].replace("/", "_") for im in train["images"]
                  if im["file_name"] not in set(manifest["train_images"]))
    assert unlabelled == rest and rest  # the rest of train, labels hidden
    for r in results["runs"][4:]:
        assert r["unlabelled_images"] == len(rest) and sum(r["pseudo_per_class"].values()) > 0
        st = json.loads((out / "models" / "k1_s0" / f"self_{r['variant']}" / "pseudo_labels.json").read_text())
        assert st["rounds"][0]["model"].endswith("/models/k1_s0/yolo_world/best.pt")  # round 0: the baseline's model
        assert st["settings"]["rule"] == r["variant"]
    assert set(results["summary"]) == {"labels", "adaptive", "fixed"}
    assert (out / "unlabelled_curve.png").stat().st_size > 0
