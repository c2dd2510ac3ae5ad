"""`defect-vision select`: the three terms and the ranking (units), the command on a run folder with tiny random-init
models (files, links, near-duplicates, bad input), and the active-learning curve (`curve --strategy`) with its
report section."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from defect_vision.detections import Detections, ImageInfo, encode_masks
from defect_vision.errors import ConfigError
from defect_vision.inference.selection import (
    Candidate,
    SelectConfig,
    box_mask_iou,
    closeness,
    dhash,
    rank,
    rarity,
    score_image,
    uncertainty,
)
from defect_vision.thresholds import ClassThresholds

NAMES = ["crack", "hole", "scratch"]


def dets(boxes, classes, scores, masks) -> Detections:
    return Detections(np.array(boxes, float), classes, scores, rle=encode_masks(np.array(masks, bool)),
                      image=ImageInfo(7, "a.png", 40, 40), class_names=NAMES)


def box_mask(x0, y0, x1, y1, size=40) -> np.ndarray:
    m = np.zeros((size, size), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_uncertainty_is_a_tent_around_each_threshold_and_closeness_caps_at_one():
    s = np.array([0.0, 0.125, 0.25, 0.625, 1.0, 0.01])
    assert uncertainty(s, np.full(6, 0.25)).tolist() == pytest.approx([0, 0.5, 1, 0.5, 0, 0.04])
    assert uncertainty([0.2, 0.5, 0.8], [0.5] * 3).tolist() == pytest.approx([0.4, 1.0, 0.4])
    assert closeness([0.1, 0.25, 0.9], [0.25] * 3).tolist() == pytest.approx([0.4, 1.0, 1.0])


def test_box_mask_iou_uses_the_masks_tight_box_and_an_empty_mask_is_zero():
    d = dets([[0, 0, 20, 20], [0, 0, 20, 20], [10, 10, 30, 30]], [0, 1, 2], [0.5] * 3,
             [box_mask(0, 0, 20, 20), box_mask(0, 0, 10, 20), np.zeros((40, 40))])
    assert box_mask_iou(d).tolist() == pytest.approx([1.0, 0.5, 0.0])


def test_rarity_is_one_over_sqrt_count_scaled_to_the_rarest_class():
    assert rarity({"crack": 1, "hole": 4, "scratch": 0}, NAMES).tolist() == pytest.approx([1.0, 0.5, 1.0])
    assert rarity({"crack": 4, "hole": 16, "scratch": 9}, NAMES).tolist() == pytest.approx([1.0, 0.5, 4 / 6])
    assert rarity(None, NAMES).tolist() == [0, 0, 0]


def test_score_adds_the_weighted_terms_and_the_reason_names_the_largest():
    th = ClassThresholds({2: 0.25}, 0.5)
    counts = {"crack": 1, "hole": 9, "scratch": 9}
    rare = rarity(counts, NAMES)
    # scratch 0.24 at threshold 0.25 (uncertain 0.96), its mask = its box; hole 0.9 with a mask half its box
    d = dets([[0, 0, 20, 20], [20, 20, 40, 40]], [2, 1], [0.24, 0.9], [box_mask(0, 0, 20, 20), box_mask(20, 20, 30, 40)])
    c = score_image(d, "a", th, rare, counts, (1.0, 1.0, 1.0))
    assert c.terms == pytest.approx({"uncertainty": 0.96, "disagreement": 0.5, "rarity": 1 / 3}, abs=1e-4)
    assert c.score == pytest.approx(0.96 + 0.5 + 1 / 3, abs=1e-3)
    assert c.reason == "uncertain: scratch 0.24 near threshold 0.25"
    assert (c.detections, c.shown) == (2, 1)
    assert score_image(d, "a", th, rare, counts, (0.1, 1.0, 1.0)).reason == "mask/box disagree (IoU 0.50): hole 0.90"
    crack = dets([[0, 0, 20, 20]], [0], [0.9], [box_mask(0, 0, 20, 20)])
    assert score_image(crack, "b", th, rare, counts, (0.1, 1.0, 1.0)).reason == "rare class: crack (1 label)"
    empty = Detections.empty(image=ImageInfo(8, "c.png", 40, 40), class_names=NAMES, rle=[])
    assert score_image(empty, "c", th, rare, counts, (1, 1, 1)).score == 0.0


def test_rank_takes_the_best_skips_near_duplicates_and_shuffles_only_ties():
    cands = [Candidate(ImageInfo(i, f"{i}.png"), str(i), s, {}, "", 0, 0) for i, s in enumerate([0.2, 0.9, 0.9, 0.5, 0])]
    hashes = {"0": 0b1, "1": 0xFF00, "2": 0xFF01, "3": 0b10, "4": 0xF}  # 2 is 1 bit from 1
    picked = rank(cands, 3, 1, lambda c: hashes[c.name])
    assert [c.name for c in picked] in (["1", "3", "0"], ["2", "3", "0"])
    twin = next(c for c in cands if c.name in ("1", "2") and not c.selected)
    assert twin.near_duplicate_of in ("1", "2") and twin.near_duplicate_of != twin.name
    ties = [Candidate(ImageInfo(i, f"{i}.png"), str(i), 0.0, {}, "", 0, 0) for i in range(20)]
    orders = {tuple(c.name for c in rank(ties, 5, seed=s)) for s in (0, 1)}
    assert len(orders) == 2 and tuple(c.name for c in rank(ties, 5, seed=0)) in orders
    assert [c.name for c in rank(ties, 5, seed=0)] == [c.name for c in rank(ties, 5, seed=0)]


def test_dhash_is_equal_for_a_copy_and_far_for_another_image():
    rng = np.random.default_rng(0)
    a, b = (rng.integers(0, 255, (64, 64), dtype=np.uint8) for _ in range(2))
    assert dhash(a) == dhash(a.copy()) and (dhash(a) ^ dhash(b)).bit_count() > 16


def test_the_commands_light_constants_match_the_library():
    """cli/select.py repeats TOOLS and KIND so that --help imports nothing heavy; they must not drift."""
    from defect_vision.cli import select as cli
    from defect_vision.formats.annotations import TOOLS
    from defect_vision.inference.selection_run import KIND

    assert cli.TOOLS == TOOLS and cli.KIND == KIND
    assert cli.tools_of(None) == TOOLS and cli.tools_of(["cvat", "cvat"]) == ("cvat",) and cli.tools_of(["none"]) == ()


def test_config_refuses_bad_values():
    for kwargs, field in (({"budget": 0}, "budget"), ({"budget": 1, "weights": (0, 0, 0)}, "weights"),
                          ({"budget": 1, "conf_floor": 2.0}, "conf_floor")):
        with pytest.raises(ConfigError) as err:
            SelectConfig(**kwargs)
        assert field in str(err.value)


# ------------------------------------------------------------------ the command on a run folder
IMGSZ = 64


@pytest.fixture(scope="module")
def run(tmp_path_factory, synthetic_root) -> Path:
    """runs/<C>: a random detector that detects everywhere (scores ~0.5), vit_tiny SAM, a calibrated thresholds.json,
    and the data.yaml it was 'trained' on (train: 3 crack images, 1 hole, 1 stain, none of the others)."""
    from defect_vision.data.mvtec import read_category
    from defect_vision.models.random_init import save_random_detector, save_random_sam
    from defect_vision.thresholds import ThresholdsFile

    names = read_category(synthetic_root, "toy_wood").defect_types
    root = tmp_path_factory.mktemp("select_run") / "toy_wood"
    save_random_detector(root / "yolo_world" / "best.pt", names, score_bias=0.0, imgsz=IMGSZ)
    save_random_sam(root / "sam" / "best.pth", "vit_tiny")
    (root / "sam" / "best.json").write_text(json.dumps({"model_type": "vit_tiny"}))
    ThresholdsFile({n: 0.5 for n in names}, 0.5).save(root / "thresholds.json", {n: {"calibrated": True} for n in names})
    data = root.parent / "yolo"
    for i, cls in enumerate(["crack", "crack", "crack", "hole", "stain"]):
        (data / "images" / "train").mkdir(parents=True, exist_ok=True)
        shutil.copy(synthetic_root / "toy_wood" / "train" / "good" / "000.png", data / "images" / "train" / f"{i}.png")
        (data / "labels" / "train").mkdir(parents=True, exist_ok=True)
        (data / "labels" / "train" / f"{i}.txt").write_text(f"{names.index(cls)} 0.5 0.5 0.2 0.2\n")
    (data / "images" / "val").mkdir(parents=True)
    (data / "data.yaml").write_text(json.dumps({"path": str(data), "train": "images/train", "val": "images/val",
                                                "names": dict(enumerate(names))}))
    (root / "yolo_world" / "best.json").write_text(json.dumps({"data": str(data / "data.yaml")}))
    return root


@pytest.fixture(scope="module")
def unlabelled(tmp_path_factory, synthetic_root) -> Path:
    """5 test images and an exact copy of one of them (a near-duplicate)."""
    folder = tmp_path_factory.mktemp("unlabelled") / "line"
    src = synthetic_root / "toy_wood" / "test"
    for rel in ("hole/000.png", "scratch/001.png", "stain/002.png", "crack/003.png", "good/000.png"):
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src / rel, folder / rel)
    shutil.copy(src / "hole/000.png", folder / "hole" / "000_again.png")
    return folder


def read_csv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def annotations_available() -> bool:
    try:
        from defect_vision.formats.annotations import write_annotations  # noqa: F401
    except ImportError:
        return False
    return True


def test_select_writes_the_top_n_ranked_with_reasons_links_and_summary(run, unlabelled, tmp_path, capsys):
    from defect_vision.cli import main
    from defect_vision.inference.selection import uncertainty as tent

    out = tmp_path / "to_label"
    tools = [] if annotations_available() else ["--annotations", "none"]
    assert main(["select", "--run", str(run), "--source", str(unlabelled), "--budget", "3", "--out", str(out),
                 "--no-progress", "--max-det", "2", "--workers", "1", *tools]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("selected 3 of 6 images") and str(out) in line
    rows, every = read_csv(out / "selection.csv"), read_csv(out / "candidates.csv")
    assert len(rows) == 3 and len(every) == 6
    assert [r["rank"] for r in rows] == ["1", "2", "3"]
    scores = [float(r["score"]) for r in rows]
    assert scores == sorted(scores, reverse=True) and scores[0] > 0
    assert min(scores) >= max(float(r["score"]) for r in every if r["selected"] == "0" and not r["near_duplicate_of"])
    for r in rows:  # score = sum of the terms (weights 1), each in [0, 1]
        terms = [float(r[k]) for k in ("uncertainty", "disagreement", "rarity")]
        assert all(0 <= t <= 1 for t in terms) and float(r["score"]) == pytest.approx(sum(terms), abs=2e-4)
        assert r["reason"].split(":")[0] in ("uncertain", "mask/box disagree (IoU 0.00)", "rare class") or \
            r["reason"].startswith(("uncertain: ", "mask/box disagree (IoU ", "rare class: "))
    # the uncertainty term from predictions.json's own scores and the 0.5 thresholds
    preds, ids = (json.loads((out / "predictions" / f).read_text()) for f in ("predictions.json", "image_ids.json"))
    assert preds, "the random detector found nothing"
    by_name = {e["file_name"]: e["id"] for e in ids}
    for r in every:
        s = [p["score"] for p in preds if p["image_id"] == by_name[r["image"]]]
        assert float(r["uncertainty"]) == pytest.approx(max(tent(np.array(s), 0.5)) if s else 0.0, abs=1e-4)
        assert int(r["detections"]) == len(s)
    # the exact copy is never picked beside its twin
    picked = {r["image"] for r in rows}
    assert not {"hole/000.png", "hole/000_again.png"} <= picked
    twins = [r for r in every if r["near_duplicate_of"]]
    assert all(r["selected"] == "0" and r["image"] in ("hole/000.png", "hole/000_again.png") for r in twins)
    # images/: links to the sources, named as the prediction run names them
    links = sorted((out / "images").iterdir())
    assert len(links) == 3 and all(p.is_symlink() for p in links)
    assert {p.resolve() for p in links} == {(unlabelled / r["image"]).resolve() for r in rows}
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["selected"], summary["candidates"], summary["budget"]) == (3, 6, 3)
    assert summary["labelled_counts"]["crack"] == 3 and summary["labelled_counts"]["hole"] == 1
    assert summary["thresholds"]["source"] == "run" and summary["config"]["conf_floor"] == 0.25
    assert [im["image"] for im in summary["images"]] == [r["image"] for r in rows]
    if tools:
        assert summary["annotations"] == []
    else:  # the pre-annotations name the images as images/ holds them, one task per picked image
        import zipfile

        assert {"labelstudio_tasks.json", "cvat_annotations.zip", "fiftyone_results.json"} <= set(summary["annotations"])
        tasks = json.loads((out / "labelstudio_tasks.json").read_text())
        assert sorted(t["data"]["image"] for t in tasks) == sorted(p.name for p in links)
        with zipfile.ZipFile(out / "cvat_annotations.zip") as z:
            cvat = json.loads(z.read("annotations/instances_default.json"))
        assert sorted(im["file_name"] for im in cvat["images"]) == sorted(p.name for p in links)
        shown = sum(int(r["shown"]) for r in rows)
        assert len(cvat["annotations"]) == shown and shown > 0  # the detections at the thresholds only


def test_select_copies_with_copy_and_rarity_follows_the_labelled_counts(run, unlabelled, tmp_path):
    from defect_vision.cli import main

    out = tmp_path / "copies"
    assert main(["select", "--run", str(run), "--source", str(unlabelled), "--budget", "2", "--out", str(out),
                 "--no-progress", "--max-det", "2", "--workers", "1", "--annotations", "none", "--copy",
                 "--weights", "0", "0", "1"]) == 0
    files = sorted((out / "images").iterdir())
    assert len(files) == 2 and not any(p.is_symlink() for p in files) and all(p.stat().st_size > 0 for p in files)
    rows = read_csv(out / "selection.csv")
    assert all(r["reason"].startswith("rare class: ") for r in rows)
    assert not any(r["reason"].startswith("rare class: crack") for r in rows)  # crack has 3 labels, the most


@pytest.mark.parametrize("case", ["no detector", "missing source", "empty source", "budget 0", "out over source"])
def test_select_bad_input_is_one_line_and_writes_nothing(run, unlabelled, tmp_path, capsys, case):
    from defect_vision.cli import main

    out, source, budget, the_run = tmp_path / "out", unlabelled, "2", run
    if case == "no detector":
        the_run = tmp_path / "bare"
        (the_run / "sam").mkdir(parents=True)
    elif case == "missing source":
        source = tmp_path / "nowhere"
    elif case == "empty source":
        source = tmp_path / "empty"
        source.mkdir()
    elif case == "budget 0":
        budget = "0"
    else:
        out = unlabelled / "picked"
    before = sorted(p.name for p in tmp_path.iterdir())
    rc = main(["select", "--run", str(the_run), "--source", str(source), "--budget", budget, "--out", str(out),
               "--no-progress", "--annotations", "none"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: ")
    expected = {"no detector": "the run has no detector", "missing source": "no such file or folder",
                "empty source": "no images", "budget 0": "--budget 0: must be >= 1",
                "out over source": "output folder lies inside the input"}[case]
    assert expected in err[0]
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == before


# ------------------------------------------------------------------ the active-learning curve and its report section
@pytest.fixture(scope="module")
def toy(synthetic_root, tmp_path_factory) -> Path:
    from defect_vision.cli.convert import main as convert_main

    ds = tmp_path_factory.mktemp("select_curve_datasets")
    assert convert_main(["--category", "toy_wood", "--root", str(synthetic_root), "--out", str(ds), "--no-progress"]) == 0
    return ds


def test_labelled_counts_of_a_coco_json_are_the_images_showing_each_class(toy, run):
    from defect_vision.cli.select import labelled_counts
    from defect_vision.experiments.subsets import classes_of, image_classes
    from defect_vision.experiments.subsets import labelled_counts as subset_counts

    coco = toy / "coco" / "toy_wood" / "instances_train.json"
    images = image_classes(coco)
    expected = subset_counts(images, list(images), classes_of(coco.parent))
    assert labelled_counts(coco, Path("unused")) == expected and sum(expected.values()) > 0
    # from the run's data.yaml: one per label file showing the class
    assert labelled_counts(None, run / "yolo_world" / "best.json") == {"combined": 0, "crack": 3, "hole": 1,
                                                                        "scratch": 0, "stain": 1}


@pytest.mark.slow  # 3 fine-tunes + a selection: ~20 s alone, 40 s on the shared machine
def test_selection_curve_adds_select_and_random_labels_and_reports(toy, tmp_path, capsys, no_clip_download):
    from defect_vision.cli import main
    from defect_vision.evaluation.report_selection import selection_section
    from defect_vision.experiments.subsets import image_classes

    runs = tmp_path / "runs"
    assert selection_section(runs / "toy_wood") == ""
    assert main(["curve", "--category", "toy_wood", "--datasets", str(toy), "--runs", str(runs), "--fast",
                 "--epochs", "1", "--strategy", "select", "random", "--start", "1", "--step", "2", "--rounds", "1",
                 "--seeds", "0"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("selection curve: ")
    out = runs / "toy_wood" / "selection_curve"
    results = json.loads((out / "results.json").read_text())
    assert [(r["strategy"], r["round"]) for r in results["runs"]] == [("start", 0), ("select", 1), ("random", 1)]
    train = image_classes(toy / "coco" / "toy_wood" / "instances_train.json")
    start = json.loads((out / "data" / "start_s0" / "manifest.json").read_text())["train_images"]
    for r in results["runs"][1:]:
        assert len(r["added"]) == 2 and not set(r["added"]) & set(start) and all(train[f] for f in r["added"])
        assert r["labels"] == results["runs"][0]["labels"] + 2
        manifest = json.loads((out / "data" / f"{r['strategy']}_r1_s0" / "manifest.json").read_text())
        assert sorted(manifest["train_images"]) == sorted(start + r["added"])
        assert r["detector_box_ap50"] is not None and r["end_to_end_mask_iou"] is not None
    from defect_vision.coco import load_coco

    paths = {Path(im.path).resolve(): im.file_name
             for im in load_coco(toy / "coco" / "toy_wood" / "instances_train.json", masks=False).images}
    ranked = read_csv(out / "select" / "select_r1_s0" / "selection.csv")
    assert [paths[Path(x["path"]).resolve()] for x in ranked] == results["runs"][1]["added"]  # select's own top 2
    assert set(results["summary"]) == {"select", "random"}
    assert [p["labels"] for p in results["summary"]["select"]["detector_box_ap50"]] == [
        results["runs"][0]["labels"], results["runs"][0]["labels"] + 2]
    assert (out / "selection_curve.png").stat().st_size > 0
    page = selection_section(runs / "toy_wood")
    assert '<table id="selection-curve">' in page and "data:image/png;base64," in page
    assert page.count("<tr><td>select</td>") == 3 and page.count("<tr><td>random</td>") == 3
