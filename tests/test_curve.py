"""Few-shot learning curve (`defect-vision curve`): nested, seeded subsets shared by both stages, the runs and the
summary (smallest k within 90 % of "all"), and the report's curve table."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from defect_vision.cli.convert import main as convert_main
from defect_vision.experiments.curve import CurveConfig, runs_of, summarize
from defect_vision.experiments.subsets import few_shot, image_classes, labelled_counts


@pytest.fixture(autouse=True)
def _no_clip(no_clip_download):
    """Every test here fails if ultralytics' own CLIP download path is reached."""


@pytest.fixture(scope="module")
def toy(synthetic_root, tmp_path_factory) -> Path:
    """toy_wood (5 classes incl. images with several defects) converted into <datasets>/{coco,yolo,sam}/toy_wood."""
    ds = tmp_path_factory.mktemp("curve_datasets")
    assert convert_main(["--category", "toy_wood", "--root", str(synthetic_root), "--out", str(ds), "--no-progress"]) == 0
    return ds


def test_subsets_are_nested_seeded_and_keep_the_good_images(toy):
    images = image_classes(toy / "coco" / "toy_wood" / "instances_train.json")
    classes = sorted({c for cls in images.values() for c in cls})
    good = {f for f, cls in images.items() if not cls}
    available = labelled_counts(images, list(images), classes)
    assert good and min(available.values()) >= 1 and max(available.values()) >= 3
    for seed in (0, 1, 2):
        subsets = [set(few_shot(images, classes, k, seed)) for k in (1, 2, 5, 10)]
        assert all(a <= b for a, b in zip(subsets, subsets[1:]))  # nested in k
        assert set(few_shot(images, classes, "all", seed)) == set(images)
        for k, subset in zip((1, 2, 5, 10), subsets):
            assert good <= subset
            counts = labelled_counts(images, sorted(subset), classes)
            assert all(counts[c] >= min(k, available[c]) for c in classes)  # k per class (more when images share)
        assert few_shot(images, classes, 2, seed) == few_shot(images, classes, 2, seed)  # seeded
    assert len({frozenset(few_shot(images, classes, 1, s)) for s in (0, 1, 2)}) > 1  # seeds draw other images


def test_runs_and_smallest_k_within_target():
    config = CurveConfig("c", None, Path("x"), None, None, shots=[1, 2, 5, 10, "all"], seeds=[0, 1, 2])
    assert runs_of(config) == [(1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2), (5, 0), (5, 1), (5, 2), (10, 0),
                               ("all", 0)]
    runs = [{"k": k, "detector_box_ap50": v, "sam_gt_box_mask_iou": 0.5, "end_to_end_mask_iou": None}
            for k, v in ((0, 0.1), (1, 0.2), (1, 0.4), (2, 0.85), (2, 0.95), (5, 0.95), ("all", 1.0))]
    summary, smallest = summarize(runs, [1, 2, 5, "all"], 0.9)
    by_k = {p["k"]: p for p in summary["detector_box_ap50"]}
    assert by_k[1]["mean"] == pytest.approx(0.3) and (by_k[1]["min"], by_k[1]["max"], by_k[1]["n"]) == (0.2, 0.4, 2)
    assert smallest["detector_box_ap50"] == 2  # mean 0.9 >= 0.9 x 1.0
    assert smallest["sam_gt_box_mask_iou"] == 0  # zero-shot already there
    assert smallest["end_to_end_mask_iou"] is None  # no "all" value to compare with


def test_curve_fast_runs_both_stages_on_the_same_subsets_and_reports(toy, tmp_path, capsys):
    from defect_vision.cli import main

    runs = tmp_path / "runs"
    assert main(["curve", "--category", "toy_wood", "--datasets", str(toy), "--runs", str(runs), "--fast",
                 "--epochs", "1", "--shots", "1", "all", "--seeds", "0", "1"]) == 0
    assert "smallest k within 90% of all" in capsys.readouterr().out.strip().splitlines()[-1]
    out = runs / "toy_wood" / "curve"
    results = json.loads((out / "results.json").read_text())
    assert [(r["k"], r["seed"]) for r in results["runs"]] == [(0, None), (1, 0), (1, 1), ("all", 0)]
    manifests = {n: json.loads((out / "data" / n / "manifest.json").read_text()) for n in ("k1_s0", "k1_s1", "kall_s0")}
    assert set(manifests["k1_s0"]["train_images"]) < set(manifests["kall_s0"]["train_images"])
    for name, m in manifests.items():
        sam = json.loads((out / "data" / name / "sam" / "prompts_train.json").read_text())
        assert sorted(im["file_name"] for im in sam["images"]) == sorted(m["train_images"])  # both stages, same images
        links = {p.name for p in (out / "data" / name / "yolo" / "images" / "train").iterdir()}
        assert links == {f.replace("/", "_") for f in m["train_images"]}
        assert json.loads((out / "models" / name / "sam" / "best.json").read_text())["data"]["train_images"] > 0
        assert (out / "models" / name / "yolo_world" / "best.pt").is_file()
    for r in results["runs"]:
        assert set(r) >= {"detector_box_ap50", "sam_gt_box_mask_iou", "end_to_end_mask_iou", "labelled_per_class"}
        assert r["sam_gt_box_mask_iou"] is not None
    assert [p["k"] for p in results["summary"]["detector_box_ap50"]] == [0, 1, "all"]
    assert results["summary"]["detector_box_ap50"][1]["n"] == 2
    assert set(results["smallest_k"]) == {"detector_box_ap50", "sam_gt_box_mask_iou", "end_to_end_mask_iou"}
    assert results["weights"] == "random-init" and (out / "curve.png").stat().st_size > 0
    cache = list((out / "sam_embeddings").iterdir())
    assert len(cache) == 1  # every run shares one frozen SAM encoder: one embedding cache

    assert main(["report", "--run", str(runs / "toy_wood")]) == 0
    page = (runs / "toy_wood" / "report" / "index.html").read_text()
    assert '<table id="curve">' in page and 'src="plots/curve.png"' in page and "k = all" in page
    report = json.loads((runs / "toy_wood" / "report" / "report.json").read_text())
    assert report["curve"]["smallest_k"] == results["smallest_k"]
