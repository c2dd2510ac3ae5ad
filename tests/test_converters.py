"""The exporters end to end on the synthetic category: one split for every format, masks reproduced,
tight boxes, negatives, pycocotools / ultralytics load the outputs, YOLO and VOC boxes round-trip."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from defect_vision.cli.convert import main as convert_main

to_all = partial(convert_main, prog="mvtec_to_all.py")
to_coco, to_yolo, to_voc, to_sam = (partial(convert_main, prog=f"mvtec_to_{f}.py", fmt=f) for f in ("coco", "yolo", "voc", "sam"))
from defect_vision.data.images import read_mask
from defect_vision.data.mvtec import iter_image_paths, read_category
from defect_vision.data.splits import SPLITS, load_split
from defect_vision.data.synthetic import make_category
from defect_vision.formats.sam_prompts import to_sam_prompts
from defect_vision.formats.voc import parse_voc_boxes
from defect_vision.masks import decode_rle

REPO = Path(__file__).resolve().parents[1]
SUMMARY = re.compile(
    r"^(?P<label>[a-z+]+) (?P<cat>\w+): (?P<n>\d+) images \(train (?P<train>\d+), val (?P<val>\d+), test (?P<test>\d+)\), "
    r"(?P<inst>\d+) instances \((?P<per>[^)]*)\), (?P<specks>\d+) specks dropped, [\d.]+ s$"
)


def export_all(root: Path, category: str, out: Path, *extra: str) -> str:
    """Run mvtec_to_all with --min-area 1 (nothing dropped: masks must be reproduced); return its summary line."""
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = to_all(["--category", category, "--root", str(root), "--out", str(out), "--min-area", "1",
                                "--splits", str(out / "splits" / f"{category}.json"), "--no-progress", *extra])
    assert rc == 0
    return buf.getvalue().strip().splitlines()[-1]


# ---- checks shared with test_converters_real.py -------------------------------------------------------


def load_coco(out: Path, category: str) -> dict[str, COCO]:
    return {s: COCO(str(out / "coco" / category / f"instances_{s}.json")) for s in SPLITS}


def check_split_partition(root: Path, category: str, cocos: dict[str, COCO]) -> None:
    """Every defect image in exactly one split; ids = rank of file_name over the whole category."""
    all_files = sorted(p.relative_to(root / category).as_posix() for _, p in iter_image_paths(root / category))
    names = [img["file_name"] for c in cocos.values() for img in c.dataset["images"]]
    assert len(names) == len(set(names))
    defects = {f for f in all_files if not f.split("/")[1] == "good"}
    assert defects <= set(names)
    for c in cocos.values():
        for img in c.dataset["images"]:
            assert img["id"] == all_files.index(img["file_name"]) + 1
            assert c.dataset["info"]["image_root"] == str((root / category).resolve())
    ann_ids = sorted(a["id"] for c in cocos.values() for a in c.dataset["annotations"])
    assert ann_ids == list(range(1, len(ann_ids) + 1))


def check_masks_boxes_and_negatives(root: Path, category: str, cocos: dict[str, COCO], sam_dir: Path) -> None:
    """Polygon union IoU >= 0.99 and RLE union exact vs the ground truth; tight boxes; good images empty."""
    for split, coco in cocos.items():
        prompts = json.loads((sam_dir / f"prompts_{split}.json").read_text())
        sam_by_id = {img["id"]: img for img in prompts["images"]}
        assert set(sam_by_id) == set(coco.getImgIds())
        for img in coco.dataset["images"]:
            anns = coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))
            sam = sam_by_id[img["id"]]
            if img["is_good"]:
                assert img["defect_type"] == "good" and anns == [] and sam["instances"] == []
                continue
            gt = read_mask(root / category / "ground_truth" / img["defect_type"] / f"{Path(img['file_name']).stem}_mask.png")
            assert gt.shape == (img["height"], img["width"])
            poly_union = np.zeros_like(gt)
            rle_union = np.zeros_like(gt)
            for ann, inst in zip(anns, sam["instances"], strict=True):
                assert coco.cats[ann["category_id"]]["name"] == img["defect_type"] or img["defect_type"] == "combined"
                poly_union |= coco.annToMask(ann).astype(bool)
                m = decode_rle(inst["mask"])
                rle_union |= m
                ys, xs = np.nonzero(m)
                tight = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
                assert ann["bbox"] == tight and ann["area"] == int(m.sum())
                assert inst["annotation_id"] == ann["id"] and inst["category_id"] == ann["category_id"]
                x, y, w, h = tight
                assert inst["box"] == [x, y, x + w, y + h]
                assert len(inst["points"]) == len(inst["point_labels"]) and inst["point_labels"][0] == 1
                for (px, py), label in zip(inst["points"], inst["point_labels"]):
                    assert x <= px < x + w and y <= py < y + h
                    assert gt[int(py), int(px)] == bool(label)  # positives on the defect, negatives off it
            assert np.array_equal(rle_union, gt)
            assert (poly_union & gt).sum() / (poly_union | gt).sum() >= 0.99


def yolo_boxes(label_file: Path, width: int, height: int) -> list[tuple[int, list[float]]]:
    """(class, xywh pixel box) per line: boxes from detect lines, polygon bounds from segment lines."""
    out = []
    for line in label_file.read_text().splitlines():
        cls, *v = line.split()
        v = np.asarray(v, float)
        if len(v) == 4:
            cx, cy, w, h = v * [width, height, width, height]
            box = [cx - w / 2, cy - h / 2, w, h]
        else:
            pts = v.reshape(-1, 2) * [width, height]
            box = [*pts.min(0), *(pts.max(0) - pts.min(0))]
        out.append((int(cls), box))
    return out


def check_yolo(out: Path, category: str, cocos: dict[str, COCO]) -> None:
    """Images linked under unique names to the right files; labels round-trip to the COCO boxes (+-1 px)."""
    data = yaml.safe_load((out / "yolo" / category / "data.yaml").read_text())
    assert data["path"] == str((out / "yolo" / category).resolve())
    assert data["names"] == {c["id"] - 1: c["name"] for c in cocos["train"].dataset["categories"]}
    root = Path(cocos["train"].dataset["info"]["image_root"])
    for split, coco in cocos.items():
        assert data[split] == f"images/{split}"
        images = sorted((out / "yolo" / category / "images" / split).iterdir())
        assert len(images) == len(coco.dataset["images"])
        for img in coco.dataset["images"]:
            name = img["file_name"].replace("/", "_")
            image = out / "yolo" / category / "images" / split / name
            assert image.resolve() == (root / img["file_name"]).resolve()
            got = yolo_boxes(out / "yolo" / category / "labels" / split / f"{Path(name).stem}.txt", img["width"], img["height"])
            want = [(a["category_id"] - 1, a["bbox"]) for a in coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))]
            assert [c for c, _ in got] == [c for c, _ in want]
            for (_, g), (_, w) in zip(got, want):
                assert np.allclose(g, w, atol=1.0), (img["file_name"], g, w)


def check_voc(out: Path, category: str, cocos: dict[str, COCO]) -> None:
    voc = out / "voc" / category
    for split, coco in cocos.items():
        stems = (voc / "ImageSets" / "Main" / f"{split}.txt").read_text().split()
        assert stems == [img["file_name"].rsplit(".", 1)[0].replace("/", "_") for img in coco.dataset["images"]]
        for stem, img in zip(stems, coco.dataset["images"]):
            got = parse_voc_boxes((voc / "Annotations" / f"{stem}.xml").read_text())
            want = [(coco.cats[a["category_id"]]["name"], tuple(a["bbox"])) for a in coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))]
            assert got == want


def check_export(root: Path, category: str, out: Path) -> None:
    cocos = load_coco(out, category)
    check_split_partition(root, category, cocos)
    check_masks_boxes_and_negatives(root, category, cocos, out / "sam" / category)
    check_yolo(out, category, cocos)
    check_voc(out, category, cocos)


# ---- the synthetic category ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(synthetic_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("exported")
    line = export_all(synthetic_root, "toy_wood", out, "--task", "segment", "--negative-points", "3",
                      "--positive-points", "2", "--seed", "5")
    return out, line


def test_all_formats_agree_reproduce_the_masks_and_round_trip(synthetic_root, exported):
    out, _ = exported
    check_export(synthetic_root, "toy_wood", out)


def test_summary_line_counts_images_instances_and_specks(synthetic_root, exported):
    out, line = exported
    m = SUMMARY.match(line)
    assert m, line
    cocos = load_coco(out, "toy_wood")
    assert m["label"] == "coco+yolo+voc+sam" and m["cat"] == "toy_wood"
    assert [int(m[s]) for s in SPLITS] == [len(cocos[s].dataset["images"]) for s in SPLITS]
    assert int(m["n"]) == sum(int(m[s]) for s in SPLITS)
    assert int(m["inst"]) == sum(len(c.dataset["annotations"]) for c in cocos.values()) > 0
    per = dict(item.rsplit(" ", 1) for item in m["per"].split(", "))
    assert list(per) == ["combined", "crack", "hole", "scratch", "stain"]
    assert sum(map(int, per.values())) == int(m["inst"]) and m["specks"] == "0"


def test_coco_json_follows_the_contract(exported):
    out, _ = exported
    data = json.loads((out / "coco" / "toy_wood" / "instances_train.json").read_text())
    assert data["info"]["category"] == "toy_wood" and data["info"]["split"] == "train" and data["info"]["seed"] == 5
    assert data["categories"][0] == {"id": 1, "name": "combined", "prompt": "combined", "supercategory": "toy_wood"}
    ann = data["annotations"][0]
    assert ann["iscrowd"] == 0 and isinstance(ann["segmentation"], list) and len(ann["segmentation"][0]) >= 6
    assert {img["file_name"].split("/")[1] for img in data["images"] if img["is_good"]} == {"good"}
    assert any(img["file_name"].startswith("train/good/") for img in data["images"])
    assert any(img["file_name"].startswith("test/good/") for img in data["images"])


def test_rle_export_uses_the_same_split_and_exact_masks(synthetic_root, exported, tmp_path):
    out, _ = exported
    splits = out / "splits" / "toy_wood.json"
    before = splits.read_bytes()
    rc = to_coco(["--category", "toy_wood", "--root", str(synthetic_root), "--out", str(tmp_path / "rle"),
                             "--splits", str(splits), "--seed", "5", "--min-area", "1", "--rle", "--no-progress"])
    assert rc == 0 and splits.read_bytes() == before
    poly = load_coco(out, "toy_wood")
    for s in SPLITS:
        rle = COCO(str(tmp_path / "rle" / f"instances_{s}.json"))
        assert rle.dataset["images"] == poly[s].dataset["images"]
        for a, b in zip(rle.dataset["annotations"], poly[s].dataset["annotations"], strict=True):
            assert isinstance(a["segmentation"]["counts"], str) and a["bbox"] == b["bbox"]
            assert list(mask_utils.toBbox(rle.annToRLE(a))) == a["bbox"]
            assert rle.annToMask(a).sum() == a["area"] == b["area"]


def test_yolo_detect_dataset_loads_in_ultralytics(synthetic_root, exported, tmp_path):
    from ultralytics.cfg import get_cfg
    from ultralytics.data.dataset import YOLODataset
    from ultralytics.data.utils import check_det_dataset

    out, _ = exported
    rc = to_yolo(["--category", "toy_wood", "--root", str(synthetic_root), "--out", str(tmp_path / "yolo" / "toy_wood"),
                             "--splits", str(out / "splits" / "toy_wood.json"), "--seed", "5", "--min-area", "1", "--no-progress"])
    assert rc == 0
    check_yolo(tmp_path, "toy_wood", load_coco(out, "toy_wood"))  # detect boxes round-trip (+-1 px)
    data = check_det_dataset(str(tmp_path / "yolo" / "toy_wood" / "data.yaml"))
    ds = YOLODataset(img_path=data["val"], data=data, task="detect", imgsz=64, augment=False, hyp=get_cfg(), cache=False)
    coco = COCO(str(out / "coco" / "toy_wood" / "instances_val.json"))
    assert len(ds.labels) == len(coco.dataset["images"])
    assert sum(len(lb["cls"]) for lb in ds.labels) == len(coco.dataset["annotations"])
    assert sum(len(lb["cls"]) == 0 for lb in ds.labels) == sum(img["is_good"] for img in coco.dataset["images"])
    seg = (out / "yolo" / "toy_wood" / "labels" / "train")
    assert any(len(line.split()) > 5 for f in seg.iterdir() for line in f.read_text().splitlines())


def test_sam_points_are_seeded(synthetic_root, exported, tmp_path):
    out, _ = exported
    args = ["--category", "toy_wood", "--root", str(synthetic_root), "--splits", str(out / "splits" / "toy_wood.json"),
            "--min-area", "1", "--negative-points", "3", "--positive-points", "2", "--seed", "5", "--no-progress"]
    assert to_sam([*args, "--out", str(tmp_path / "a")]) == 0
    assert (tmp_path / "a" / "prompts_test.json").read_text() == (out / "sam" / "toy_wood" / "prompts_test.json").read_text()
    cat = read_category(synthetic_root, "toy_wood", min_area=1)
    split = load_split(out / "splits" / "toy_wood.json")
    a, b = (to_sam_prompts(cat, split, "train", 2, 3, seed) for seed in (5, 6))
    inst_a = [i for img in a["images"] for i in img["instances"]]
    inst_b = [i for img in b["images"] for i in img["instances"]]
    assert [i["points"][0] for i in inst_a] == [i["points"][0] for i in inst_b]  # the distance-transform point
    assert [i["points"][2:] for i in inst_a] != [i["points"][2:] for i in inst_b]  # sampled negatives follow the seed
    full = [i for i in inst_a if len(i["points"]) == 5]
    assert all(i["point_labels"] == [1, 1, 0, 0, 0] for i in full) and len(full) >= len(inst_a) // 2


def test_specks_below_min_area_are_dropped_and_counted(tmp_path, capsys):
    root = tmp_path / "mvtec"
    make_category(root, "tiny", size=96, defects=("hole", "stain"), per_defect=2, good_test=1, good_train=1,
                  combined=0, gray_every=0, seed=3)
    mask_file = root / "tiny" / "ground_truth" / "hole" / "000_mask.png"
    mask = cv2.imread(str(mask_file), cv2.IMREAD_GRAYSCALE)
    mask[0:2, 0:2] = 255  # a 4-px speck in a corner
    cv2.imwrite(str(mask_file), mask)
    base = ["--category", "tiny", "--root", str(root), "--no-progress", "--splits", str(tmp_path / "s.json")]
    assert to_coco([*base, "--out", str(tmp_path / "a"), "--min-area", "5"]) == 0
    m = SUMMARY.match(capsys.readouterr().out.strip())
    assert m and m["specks"] == "1"
    assert to_coco([*base, "--out", str(tmp_path / "b"), "--min-area", "1"]) == 0
    m1 = SUMMARY.match(capsys.readouterr().out.strip())
    assert m1["specks"] == "0" and int(m1["inst"]) == int(m["inst"]) + 1


def test_rerun_replaces_only_a_previous_output(synthetic_root, exported, tmp_path, capsys):
    """A folder this converter wrote is replaced; any other non-empty folder is refused (one line, untouched)
    unless --force; a folder holding the input never is, --force or not."""
    out, _ = exported
    target = tmp_path / "coco"
    target.mkdir()
    (target / "notes.txt").write_text("the user's own file")
    args = ["--category", "toy_wood", "--root", str(synthetic_root), "--out", str(target),
            "--splits", str(out / "splits" / "toy_wood.json"), "--seed", "5", "--min-area", "1", "--no-progress"]
    assert to_coco(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"error: {target}: folder exists and is not a previous convert-coco output (no .defect-vision.json "
                       "in it); pass --force to replace it, or choose another folder")
    assert [p.name for p in target.iterdir()] == ["notes.txt"]
    assert to_coco([*args, "--force"]) == 0
    names = [f"instances_{s}.json" for s in ("test", "train", "val")] + ["prompts.yaml"]
    assert sorted(p.name for p in target.iterdir()) == sorted([".defect-vision.json", *names])
    assert to_coco(args) == 0  # our own output: replaced without --force
    assert [p.name for p in tmp_path.iterdir()] == ["coco"]  # no temporary folder left
    cat = synthetic_root / "toy_wood"
    for inside, how in ((synthetic_root, "holds"), (cat, "is"), (cat / "test", "lies inside")):
        argv = [a if a != str(target) else str(inside) for a in args]
        assert to_coco([*argv, "--force"]) == 2
        assert capsys.readouterr().err.strip() == (f"error: {inside}: output folder {how} the input {cat}; choose "
                                                   "another output folder (it would be replaced as a whole)")
    assert (synthetic_root / "toy_wood" / "test" / "hole" / "000.png").is_file()


def test_voc_export_loads_in_supervision_as_is(synthetic_root, exported):
    """Standard readers (supervision's from_pascal_voc) load the VOC folder: images and annotations share stems."""
    sv = pytest.importorskip("supervision")
    out, _ = exported
    voc = out / "voc" / "toy_wood"
    ds = sv.DetectionDataset.from_pascal_voc(str(voc / "JPEGImages"), str(voc / "Annotations"))
    coco = json.loads((out / "coco" / "toy_wood" / "instances_train.json").read_text())
    n_images = sum(len((voc / "ImageSets" / "Main" / f"{s}.txt").read_text().split()) for s in ("train", "val", "test"))
    assert len(ds) == n_images
    assert sorted(ds.classes) == sorted(c["name"] for c in coco["categories"])
    n_boxes = sum(len(d) for _, _, d in ds)
    total = sum(len(json.loads((out / "coco" / "toy_wood" / f"instances_{s}.json").read_text())["annotations"])
                for s in ("train", "val", "test"))
    assert n_boxes == total
    stems = {Path(p).stem for p in ds.image_paths}
    assert stems == {p.stem for p in (voc / "Annotations").iterdir()}


def test_scripts_run_as_files_from_anywhere(synthetic_root, tmp_path):
    res = subprocess.run([sys.executable, str(REPO / "converters" / "mvtec_to_coco.py"), "--category", "toy_wood",
                          "--root", str(synthetic_root), "--no-progress"], cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert SUMMARY.match(res.stdout.strip())
    assert (tmp_path / "datasets" / "coco" / "toy_wood" / "instances_val.json").is_file()
    assert (tmp_path / "datasets" / "splits" / "toy_wood.json").is_file()
    res = subprocess.run([sys.executable, str(REPO / "converters" / "mvtec_to_yolo.py"), "--help"],
                         cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 0 and "--task {detect,segment}" in res.stdout and "(default: datasets/mvtec_ad)" in res.stdout


def test_category_without_train_folder_and_copied_yolo_images(tmp_path, capsys):
    import shutil

    root = tmp_path / "mvtec"
    make_category(root, "tiny", size=96, defects=("hole", "stain"), per_defect=3, good_test=3, good_train=2,
                  combined=0, gray_every=0, seed=4)
    shutil.rmtree(root / "tiny" / "train")  # real partial copies have none
    out = tmp_path / "yolo"
    assert to_yolo(["--category", "tiny", "--root", str(root), "--out", str(out), "--copy",
                               "--splits", str(tmp_path / "s.json"), "--no-progress"]) == 0
    images = sorted(p for p in (out / "images").rglob("*.png"))
    assert images and not any(p.is_symlink() for p in images)
    assert {p.name for p in images} >= {"test_good_000.png", "test_hole_000.png"}
    for p in images:
        split_dir, name = p.parent.name, p.name
        source = root / "tiny" / name.replace("_", "/", 2)
        assert p.read_bytes() == source.read_bytes()
        assert (out / "labels" / split_dir / f"{p.stem}.txt").is_file()
    m = SUMMARY.match(capsys.readouterr().out.strip())
    assert m and int(m["n"]) == len(images) == 6 + 3  # 6 defect images (2 per split) + ceil(0.5 x 2) good per split


def test_synthetic_cli_is_deterministic_and_summarises(tmp_path, capsys):
    from defect_vision.data import synthetic

    def run(out: Path, seed: int) -> dict[str, bytes]:
        assert synthetic.main(["--out", str(out), "--category", "syn", "--size", "64", "--per-defect", "1",
                               "--seed", str(seed)]) == 0
        return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*.png"))}

    a, b, c = run(tmp_path / "a", 1), run(tmp_path / "b", 1), run(tmp_path / "c", 2)
    lines = capsys.readouterr().out.strip().splitlines()
    assert a == b and a != c and a.keys() == c.keys()
    good = [f for f in a if "/good/" in f]
    masks = [f for f in a if f.endswith("_mask.png")]
    assert len(good) == 12 and len(masks) == 4 + 2  # 1 per defect type, 2 combined
    assert lines[0] == (f"synthetic syn: {tmp_path / 'a' / 'syn'}: 18 images (12 good, 6 defect: combined, crack, "
                        "hole, scratch, stain), " + lines[0].rsplit(", ", 1)[1])
    with pytest.raises(SystemExit) as exc:
        synthetic.main(["--out", str(tmp_path / "d"), "--size", "16"])
    assert exc.value.code == 2 and "--size >= 64" in capsys.readouterr().err and not (tmp_path / "d").exists()


def test_atomic_outputs_get_the_usual_permissions(tmp_path):
    """mkstemp/mkdtemp make 0600/0700 entries; outputs must come out as open()/mkdir() would make them."""
    import os
    import stat

    from defect_vision.io import atomic_dir, atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
        with atomic_dir(tmp_path / "out", "test") as d:
            (d / "x.txt").write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o755


def _split_of_each_format(out: Path, category: str) -> dict[str, dict[str, set[str]]]:
    """Per format, per split: the image files it holds (as category-relative paths)."""
    got: dict[str, dict[str, set[str]]] = {}
    for s in ("train", "val", "test"):
        coco = json.loads((out / "coco" / category / f"instances_{s}.json").read_text())
        got.setdefault("coco", {})[s] = {im["file_name"] for im in coco["images"]}
        sam = json.loads((out / "sam" / category / f"prompts_{s}.json").read_text())
        got.setdefault("sam", {})[s] = {im["file_name"] for im in sam["images"]}
        names = (out / "yolo" / category / "images" / s).iterdir()
        got.setdefault("yolo", {})[s] = {p.name.replace("_", "/", 2) for p in names}
        stems = (out / "voc" / category / "ImageSets" / "Main" / f"{s}.txt").read_text().split()
        got.setdefault("voc", {})[s] = {f"{x.replace('_', '/', 2)}.png" for x in stems}
    split = json.loads((out / "splits" / f"{category}.json").read_text())["splits"]
    got["splits.json"] = {s: set(v) for s, v in split.items()}
    return got


def test_a_reexport_killed_in_its_commit_is_completed_by_the_next_run(tmp_path):
    """kill -9 between the renames of a re-export (new split): the next run completes the commit, so every format
    and splits.json agree (the old behaviour left COCO on one split and YOLO/VOC/SAM on another)."""
    import signal

    root = tmp_path / "mvtec"
    make_category(root, "tiny", size=96, defects=("hole", "stain"), per_defect=5, good_test=4, good_train=2,
                  combined=0, gray_every=0, seed=6)
    out = tmp_path / "datasets"
    base = ["--category", "tiny", "--root", str(root), "--out", str(out), "--no-progress"]
    assert to_all(base) == 0
    old = _split_of_each_format(out, "tiny")
    assert all(v == old["splits.json"] for v in old.values())
    # a re-export with another seed, killed (SIGKILL) at the 3rd os.replace: after the journal and the first format
    killer = (
        "import os, signal, sys\n"
        "real, calls = os.replace, []\n"
        "def replace(a, b):\n"
        "    calls.append(b)\n"
        "    if len(calls) == 3: os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return real(a, b)\n"
        "os.replace = replace\n"
        "from defect_vision.cli.convert import main\n"
        "sys.exit(main(sys.argv[1:]))\n")
    res = subprocess.run([sys.executable, "-c", killer, *base, "--seed", "1", "--resplit"], capture_output=True, text=True)
    assert res.returncode == -signal.SIGKILL, res.stderr
    journal = out / "splits" / ".tiny.commit.json"
    assert journal.is_file()
    half = _split_of_each_format(out, "tiny") if (out / "yolo" / "tiny").is_dir() else None
    assert half is None or any(v != half["splits.json"] for v in half.values())  # really inconsistent on disk
    # the next run (any export of the category) completes the commit first
    assert to_all([*base, "--seed", "1"]) == 0
    new = _split_of_each_format(out, "tiny")
    assert all(v == new["splits.json"] for v in new.values()) and new["splits.json"] != old["splits.json"]
    assert not journal.exists() and not [p for p in out.rglob(".*") if p.name != ".defect-vision.json"]


def test_an_interrupted_export_changes_nothing(tmp_path, monkeypatch, capsys):
    """Ctrl-C while the formats are being written: every old format and the split file stay as they were."""
    import defect_vision.formats.sam_prompts as sam

    root = tmp_path / "mvtec"
    make_category(root, "tiny", size=96, defects=("hole", "stain"), per_defect=3, good_test=2, good_train=1,
                  combined=0, gray_every=0, seed=7)
    out = tmp_path / "datasets"
    base = ["--category", "tiny", "--root", str(root), "--out", str(out), "--no-progress"]
    assert to_all(base) == 0
    before = {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(sam, "write_sam", interrupted)
    assert to_all([*base, "--seed", "3", "--resplit"]) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == "interrupted (nothing half-written was kept)"
    after = {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    assert after == before
