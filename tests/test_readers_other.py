"""The VisA, KolektorSDD2 and folder readers on synthetic copies of their exact layouts: each export checked against
the drawn masks (classes, one annotation per 8-connected component, tight boxes, exact RLE union), --format auto,
the benchmark split, mask thresholds, names.yaml and the one-line errors."""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import test_converters as checks
from fixtures.synthetic_other_layouts import make_folder, make_kolektor2, make_visa

from defect_vision.cli.convert import main as convert_main
from defect_vision.data import kolektor2, visa
from defect_vision.data.records import GOOD
from defect_vision.data.source import DatasetSource, detect_format
from defect_vision.data.synthetic import make_category
from defect_vision.errors import DatasetError
from defect_vision.masks import decode_rle

SPLITS = ("train", "val", "test")
VISA_IDS = {"scratch": 1, "chip_around_edge": 2, "melt": 3, "crack": 4}  # the generator's mask values


def convert(root: Path, category: str, out: Path, *extra: str, fmt: str | None = "coco") -> tuple[str, str]:
    """Convert with --min-area 1 (every component kept) and RLE masks; return (summary line, stderr)."""
    args = ["--root", str(root), "--category", category, "--out", str(out), "--min-area", "1", "--no-progress",
            "--splits", str(out.parent / f"{out.name}.splits.json"), *extra]
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        rc = convert_main(args + ["--rle"], fmt=fmt) if fmt else convert_main(args + ["--rle"])
    assert rc == 0, stderr.getvalue()
    return stdout.getvalue().strip().splitlines()[-1], stderr.getvalue()


def convert_error(root: Path, category: str, tmp_path: Path, *extra: str) -> str:
    """Convert expecting bad input: exit 2, exactly one `error:` line, nothing written; return that line."""
    out = tmp_path / "bad_out"
    stderr = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(stderr):
        rc = convert_main(["--root", str(root), "--category", category, "--out", str(out), "--no-progress",
                           "--splits", str(tmp_path / "bad.json"), *extra], fmt="coco")
    lines = [line for line in stderr.getvalue().splitlines() if line.startswith("error: ")]
    assert rc == 2 and len(lines) == 1, stderr.getvalue()
    assert not out.exists() and not (tmp_path / "bad.json").exists()
    return lines[0]


def load_export(coco_dir: Path) -> tuple[dict, list, list]:
    """(categories by id, images, annotations) of the three COCO splits together."""
    images, anns, cats = [], [], {}
    for split in SPLITS:
        data = json.loads((coco_dir / f"instances_{split}.json").read_text())
        images += data["images"]
        anns += data["annotations"]
        cats.update({c["id"]: c for c in data["categories"]})
    return cats, images, anns


def check_export(coco_dir: Path, truth: dict[str, tuple[str, np.ndarray | None]]) -> None:
    """truth: file name -> (class, bool defect mask or None for good, or {class: bool mask} for an image whose regions
    have types of their own, `class` then its main type). Every defect image exported with its class, one annotation
    per 8-connected component of each class, tight boxes, areas, and masks whose union is the truth exactly; ids are
    ranks of the sorted file names; good images (those the split uses) without annotations."""
    cats, images, anns = load_export(coco_dir)
    classes = sorted({c for c, m in truth.values() if c != GOOD} | {c for _, m in truth.values() if isinstance(m, dict)
                                                                   for c in m})
    assert [cats[i]["name"] for i in sorted(cats)] == classes
    assert all(c["prompt"] == c["name"].replace("_", " ") for c in cats.values())
    names = sorted(truth)
    assert {n for n, (c, _) in truth.items() if c != GOOD} <= {im["file_name"] for im in images}
    for im in images:
        cls, mask = truth[im["file_name"]]
        assert im["id"] == names.index(im["file_name"]) + 1
        assert (im["defect_type"], im["is_good"]) == (cls, cls == GOOD)
        mine = [a for a in anns if a["image_id"] == im["id"]]
        if cls == GOOD:
            assert mine == []
            continue
        per_class = mask if isinstance(mask, dict) else {cls: mask}
        for name, part in per_class.items():
            assert (im["height"], im["width"]) == part.shape
            theirs = [a for a in mine if cats[a["category_id"]]["name"] == name]
            assert len(theirs) == cv2.connectedComponents(part.astype(np.uint8), connectivity=8)[0] - 1
            union = np.zeros(part.shape, bool)
            for a in theirs:
                m = decode_rle(a["segmentation"])
                ys, xs = np.nonzero(m)
                assert a["bbox"] == [int(xs.min()), int(ys.min()), int(np.ptp(xs) + 1), int(np.ptp(ys) + 1)]
                assert a["area"] == int(m.sum())
                assert not (union & m).any()
                union |= m
            assert np.array_equal(union, part), (im["file_name"], name)
        assert {cats[a["category_id"]]["name"] for a in mine} == set(per_class)


# ---- VisA ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def visa_root(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("visa")
    return root, make_visa(root)


def visa_truth(drawn: dict) -> dict:
    """An image with several types: each drawn value its own class, the image's class the one with most pixels."""
    out = {}
    for n, d in drawn.items():
        names = visa.labels_of(d.label) if d.label != GOOD else []
        if len(names) <= 1:
            out[n] = (GOOD, None) if d.label == GOOD else (names[0], d.mask > 0)
            continue
        parts = {c: d.mask == VISA_IDS[c] for c in names if (d.mask == VISA_IDS[c]).any()}
        out[n] = (max(sorted(parts), key=lambda c: parts[c].sum()), parts)
    return out


def test_generators_write_the_official_conventions(visa_root, tmp_path):
    root, drawn = visa_root
    cat = root / "candle"
    anno = (cat / "image_anno.csv").read_bytes()
    assert anno.startswith(b"image,label,mask\r\n")
    assert b'candle/Data/Images/Anomaly/002.JPG,"scratch, chip around edge",candle/Data/Masks/Anomaly/002.png\r\n' in anno
    assert b"candle/Data/Images/Normal/0000.JPG,normal,\r\n" in anno
    split = (root / "split_csv" / "1cls.csv").read_bytes()
    assert split.startswith(b"object,split,label,image,mask\r\ncandle,train,normal,candle/Data/Images/Normal/0000.JPG,\r\n")
    assert b"candle,test,anomaly,candle/Data/Images/Anomaly/000.JPG,candle/Data/Masks/Anomaly/000.png\r\n" in split
    assert cv2.imread(str(cat / "Data/Images/Normal/0001.JPG"), cv2.IMREAD_UNCHANGED).ndim == 2  # one grayscale JPG
    assert sorted(np.unique(cv2.imread(str(cat / "Data/Masks/Anomaly/002.png"), cv2.IMREAD_UNCHANGED))) == [0, 1, 2]
    ksdd = make_kolektor2(tmp_path)
    assert sorted(p.name for p in (tmp_path / "KolektorSDD2" / "test").iterdir()) == [
        "20000.png", "20000_GT.png", "20001.png", "20001_GT.png", "20002.png", "20002_GT.png"]
    soft = np.unique(ksdd["train/10002.png"].mask)
    assert soft[0] == 0 and soft[-1] == 255 and len(soft) > 2  # not 0/255 only


def test_visa_auto_export_of_every_format_reproduces_the_masks(visa_root, tmp_path):
    root, drawn = visa_root
    out = tmp_path / "datasets"
    line, err = convert(root, "candle", out, "--format", "auto", "--splits", str(out / "splits" / "candle.json"),
                        "--task", "segment", fmt=None)
    assert f"--format auto: {root / 'candle'} is a visa layout" in err
    # the two-type image's regions take their own types (values 1 and 2, learned from the single-type images)
    assert line.startswith("coco+yolo+voc+sam candle: 9 images (train 5, val 2, test 2), 6 instances (chip_around_edge 2, "
                           "melt 1, scratch 3), 0 specks dropped")
    check_export(out / "coco" / "candle", visa_truth(drawn))
    cocos = checks.load_coco(out, "candle")
    checks.check_yolo(out, "candle", cocos)
    checks.check_voc(out, "candle", cocos)
    for split in SPLITS:  # the SAM prompts carry the same masks
        prompts = json.loads((out / "sam" / "candle" / f"prompts_{split}.json").read_text())
        for im in prompts["images"]:
            cls, mask = visa_truth(drawn)[im["file_name"]]
            mask = np.logical_or.reduce(list(mask.values())) if isinstance(mask, dict) else mask
            union = np.zeros(mask.shape, bool) if mask is not None else None
            for inst in im["instances"]:
                union |= decode_rle(inst["mask"])
            assert mask is None and im["instances"] == [] or np.array_equal(union, mask)


def test_visa_labels_become_class_names():
    assert visa.class_name(" Chip around edge ", "defect") == "chip_around_edge"
    assert visa.class_name("scratch, chip around edge", "defect") == "chip_around_edge_and_scratch"
    assert visa.class_name("chip around edge,scratch,scratch", "defect") == "chip_around_edge_and_scratch"
    assert visa.class_name("normal", "defect") == GOOD and visa.class_name("Normal ", "defect") == GOOD
    assert visa.class_name("", "surface defect") == "surface_defect"


def test_visa_benchmark_split_tags_every_image_from_1cls_csv(visa_root, tmp_path):
    root, _ = visa_root
    found = visa.samples(DatasetSource(root, "candle", format="visa", benchmark_split=True))
    assert {s.file_name: s.extra["split"] for s in found} == {
        "Data/Images/Normal/0000.JPG": "train", "Data/Images/Normal/0001.JPG": "train",
        "Data/Images/Normal/0002.JPG": "test", "Data/Images/Normal/0003.JPG": "test",
        **{f"Data/Images/Anomaly/{i:03d}.JPG": "test" for i in range(5)}}
    assert all("split" not in s.extra for s in visa.samples(DatasetSource(root, "candle", format="visa")))
    # a copy whose 1cls.csv lacks one image, and one without split_csv/
    make_visa(tmp_path / "v", normal=2, labels=("melt",))
    csv_path = tmp_path / "v" / "split_csv" / "1cls.csv"
    csv_path.write_bytes(csv_path.read_bytes().replace(b"candle,train,normal,candle/Data/Images/Normal/0000.JPG,\r\n", b""))
    with pytest.raises(DatasetError, match=f"^{csv_path}: no row for candle/Data/Images/Normal/0000.JPG "):
        visa.samples(DatasetSource(tmp_path / "v", "candle", format="visa", benchmark_split=True))
    csv_path.unlink()
    with pytest.raises(DatasetError, match=f"^{csv_path}: no such file"):
        visa.samples(DatasetSource(tmp_path / "v", "candle", format="visa", benchmark_split=True))


def test_visa_without_image_anno_takes_the_folders_and_defect_name(tmp_path):
    drawn = make_visa(tmp_path, normal=2, labels=("melt", "scratch, crack"))
    (tmp_path / "candle" / "image_anno.csv").unlink()
    convert(tmp_path, "candle", tmp_path / "coco", "--format", "visa", "--defect-name", "Surface Defect")
    check_export(tmp_path / "coco", {n: (GOOD, None) if d.label == GOOD else ("surface_defect", d.mask > 0)
                                     for n, d in drawn.items()})


def test_visa_errors_name_the_file(tmp_path):
    make_visa(tmp_path, normal=2, labels=("melt", "scratch"))
    cat = tmp_path / "candle"
    (cat / "Data/Masks/Anomaly/001.png").unlink()
    assert convert_error(tmp_path, "candle", tmp_path, "--format", "visa") == (
        f"error: {cat / 'Data/Masks/Anomaly/001.png'}: missing mask for defect image {cat / 'Data/Images/Anomaly/001.JPG'}")
    cv2.imwrite(str(cat / "Data/Masks/Anomaly/001.png"), np.ones((30, 80), np.uint8))
    assert convert_error(tmp_path, "candle", tmp_path, "--format", "visa") == (
        f"error: {cat / 'Data/Masks/Anomaly/001.png'}: mask is 80x30 but its image 001.JPG is 80x60")
    (cat / "Data/Images/Normal/0001.JPG").write_bytes(b"not a jpeg")
    assert convert_error(tmp_path, "candle", tmp_path, "--format", "visa").startswith(
        f"error: {cat / 'Data/Images/Normal/0001.JPG'}: not a readable image")
    (cat / "image_anno.csv").write_text("image,mask\ncandle/Data/Images/Normal/0000.JPG,\n")
    assert convert_error(tmp_path, "candle", tmp_path, "--format", "visa") == (
        f"error: {cat / 'image_anno.csv'}: no column label in the header line (expected image,label,mask, found image,mask)")


# ---- KolektorSDD2 --------------------------------------------------------------------------------------


def test_kolektor2_auto_export_at_two_mask_thresholds(tmp_path):
    drawn = make_kolektor2(tmp_path)
    faint = np.zeros((96, 40), np.uint8)
    faint[40:44, 10:13] = 60  # a faint-only mask: a defect at > 0, a good image at > 127
    cv2.imwrite(str(tmp_path / "KolektorSDD2" / "test" / "20000_GT.png"), faint)
    drawn["test/20000.png"].label, drawn["test/20000.png"].mask = "defect", faint
    for threshold in (0, 127):
        out = tmp_path / f"coco_{threshold}"
        _, err = convert(tmp_path, "KolektorSDD2", out, "--format", "auto", "--defect-name", "surface crack",
                         "--mask-threshold", str(threshold))
        assert "is a kolektor2 layout" in err
        check_export(out, {n: (GOOD, None) if not (d.mask > threshold).any() else ("surface_crack", d.mask > threshold)
                           for n, d in drawn.items()})
    soft = drawn["train/10002.png"].mask
    assert (soft > 0).sum() > (soft > 127).sum() > 0  # the two thresholds gave different masks


def test_kolektor2_benchmark_split_is_its_folders(tmp_path):
    make_kolektor2(tmp_path)
    found = kolektor2.samples(DatasetSource(tmp_path, "KolektorSDD2", format="kolektor2", benchmark_split=True))
    assert [(s.file_name, s.label, s.extra["split"]) for s in found] == [
        ("train/10000.png", GOOD, "train"), ("train/10001.png", GOOD, "train"), ("train/10002.png", "defect", "train"),
        ("train/10003.png", "defect", "train"), ("test/20000.png", GOOD, "test"), ("test/20001.png", GOOD, "test"),
        ("test/20002.png", "defect", "test")]


def test_kolektor2_errors_name_the_file(tmp_path):
    make_kolektor2(tmp_path, counts={"train": (1, 1), "test": (1, 1)})
    cat = tmp_path / "KolektorSDD2"
    (cat / "test" / "20000_GT.png").unlink()
    assert convert_error(tmp_path, "KolektorSDD2", tmp_path, "--format", "kolektor2") == (
        f"error: {cat / 'test/20000_GT.png'}: missing mask for image {cat / 'test/20000.png'} "
        "(KolektorSDD2 has an <id>_GT.png for every image)")
    cv2.imwrite(str(cat / "test" / "20000_GT.png"), np.zeros((96, 40), np.uint8))
    cv2.imwrite(str(cat / "train" / "10001_GT.png"), np.full((40, 96), 255, np.uint8))
    assert convert_error(tmp_path, "KolektorSDD2", tmp_path, "--format", "kolektor2") == (
        f"error: {cat / 'train/10001_GT.png'}: mask is 96x40 but its image 10001.png is 40x96")


# ---- --format auto -------------------------------------------------------------------------------------


def test_auto_tells_the_layouts_apart(tmp_path):
    make_visa(tmp_path, normal=1, labels=("melt",))
    make_kolektor2(tmp_path, counts={"train": (1, 0), "test": (0, 1)})
    make_category(tmp_path, "wood", size=64, defects=("hole",), per_defect=1, good_test=1, good_train=1, combined=0)
    detected = {c: detect_format(DatasetSource(tmp_path, c, format="auto")) for c in ("candle", "KolektorSDD2", "wood")}
    assert detected == {"candle": "visa", "KolektorSDD2": "kolektor2", "wood": "mvtec"}
    assert not visa.looks_like(tmp_path / "wood") and not kolektor2.looks_like(tmp_path / "wood")
    assert not kolektor2.looks_like(tmp_path / "candle") and not visa.looks_like(tmp_path / "KolektorSDD2")


# ---- folder --------------------------------------------------------------------------------------------


FOLDER_CLASSES = {"Dent Mark": "dent_mark", "Foreign Particle": "foreign_particle"}


@pytest.mark.parametrize("kind", ["apart", "beside", "same_stem", "manifest"])
def test_folder_layouts_reproduce_the_masks(kind, tmp_path):
    args, drawn = make_folder(tmp_path / "data", kind)
    _, err = convert(tmp_path / "data", "parts", tmp_path / "coco", "--format", "auto", *args)
    assert "is a folder layout" in err
    truth = {n: (GOOD, None) if d.label == GOOD else (FOLDER_CLASSES.get(d.label, d.label), d.mask > 0)
             for n, d in drawn.items()}
    check_export(tmp_path / "coco", truth)
    _, images, _ = load_export(tmp_path / "coco")
    assert all("_mask" not in im["file_name"] and "_label" not in im["file_name"] for im in images)


def test_folder_jpeg_masks_need_a_threshold(tmp_path):
    args, drawn = make_folder(tmp_path / "data", "jpeg")
    convert(tmp_path / "data", "shots", tmp_path / "t127", "--format", "folder", "--mask-threshold", "127", *args)
    truth = {n: (d.label if d.label == GOOD else "stain", None if d.mask is None else d.mask > 0) for n, d in drawn.items()}
    check_export(tmp_path / "t127", truth)
    convert(tmp_path / "data", "shots", tmp_path / "t0", "--format", "folder", *args)
    _, _, noisy = load_export(tmp_path / "t0")
    _, _, clean = load_export(tmp_path / "t127")
    assert sum(a["area"] for a in noisy) > sum(a["area"] for a in clean)  # JPEG ringing at > 0


def test_names_yaml_sets_the_prompts(tmp_path):
    args, _ = make_folder(tmp_path / "data", "apart")
    names = tmp_path / "names.yaml"
    names.write_text("dent_mark: shallow dent\nscratch: [fine scratch, hairline]\n")
    convert(tmp_path / "data", "parts", tmp_path / "coco", "--format", "folder", "--names", str(names), *args)
    cats, _, _ = load_export(tmp_path / "coco")
    assert {c["name"]: c["prompt"] for c in cats.values()} == {"dent_mark": "shallow dent", "scratch": "fine scratch"}


def test_folder_errors_name_the_file(tmp_path):
    root = tmp_path / "data"
    args, _ = make_folder(root, "manifest")
    (root / "gt" / "m2.png").unlink()
    assert convert_error(root, "p", tmp_path, "--format", "folder", *args) == (
        f"error: {root / 'gt/m2.png'}: missing mask for image {root / 'pics/scratch/m2.png'} ({root / 'manifest.csv'} line 3)")
    (root / "manifest.csv").write_text("image,mask,label\npics/batch1/m3.png,,crack\n")
    assert convert_error(root, "p", tmp_path, "--format", "folder", *args) == (
        f"error: {root / 'pics/batch1/m3.png'}: defect image (crack) without a ground-truth mask")
    args, _ = make_folder(tmp_path / "b", "beside")
    cv2.imwrite(str(tmp_path / "b/parts/crack/a_label.bmp"), np.full((10, 10), 255, np.uint8))
    assert convert_error(tmp_path / "b", "p", tmp_path, "--format", "folder", *args) == (
        f"error: {tmp_path / 'b/parts/crack/a_label.bmp'}: mask is 10x10 but its image a.png is 64x48")
    base = ["--format", "folder", "--images", "parts/**/*"]
    assert convert_error(tmp_path / "b", "p", tmp_path, *base, "--masks", "{dir}/{name}.png") == (
        "error: --masks {dir}/{name}.png: unknown field {name} (use {dir} and {stem})")
    assert convert_error(tmp_path / "b", "p", tmp_path, *base) == (
        "error: --images parts/**/*: needs --masks TEMPLATE (e.g. '{dir}/{stem}_mask.png'), or use --manifest CSV")
    assert convert_error(tmp_path / "b", "p", tmp_path, "--format", "folder", "--images", "nothing/*.png",
                         "--masks", "{dir}/{stem}.bmp") == f"error: {tmp_path / 'b'}: no image matches --images 'nothing/*.png' (no file matches)"
    assert convert_error(tmp_path / "b", "p", tmp_path, "--format", "folder", "--images", "parts/*/*.png",
                         "--masks", "{dir}/{stem}.png") == (
        f"error: {tmp_path / 'b/parts/crack/a.png'}: --masks {{dir}}/{{stem}}.png names the image itself as its mask")
