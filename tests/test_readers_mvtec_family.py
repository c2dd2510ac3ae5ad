"""The MVTec AD 2, MVTec LOCO AD and MVTec 3D-AD readers on synthetic copies of their exact layouts: every format
reproduces the drawn masks (instances, tight boxes, classes, ids), AD 2's private images are exported only as
unlabelled, LOCO's several masks are unioned, 3D-AD's class-id-valued masks count and xyz/ is never read,
--format auto names each layout (and no layout's markers match another's), and bad files give one-line errors."""
from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import test_converters as checks
from fixtures.synthetic_mvtec_family import (
    make_mvtec_3d,
    make_mvtec_ad2,
    make_mvtec_loco,
)

from defect_vision.cli.convert import main as convert_main
from defect_vision.data import mvtec, mvtec_3d, mvtec_ad2, mvtec_loco
from defect_vision.data.source import READERS, DatasetSource, resolve
from defect_vision.data.synthetic import make_category
from defect_vision.masks import decode_rle

MAKERS = {"mvtec_ad2": make_mvtec_ad2, "mvtec_loco": make_mvtec_loco, "mvtec_3d": make_mvtec_3d}
MODULES = {"mvtec_ad2": mvtec_ad2, "mvtec_loco": mvtec_loco, "mvtec_3d": mvtec_3d}


def convert(layout: str, root: Path, category: str, out: Path, *extra: str, fmt: str | None = None) -> int:
    with contextlib.redirect_stdout(io.StringIO()):
        return convert_main(["--format", layout, "--root", str(root), "--category", category, "--out", str(out),
                             "--min-area", "1", "--no-progress", *extra], fmt=fmt)


@pytest.fixture(scope="module")
def family(tmp_path_factory) -> dict:
    """The three synthetic categories under one root, each converted to every format (--min-area 1); one xyz
    file of 3D-AD is garbage (it must never be read)."""
    root, out = tmp_path_factory.mktemp("family"), tmp_path_factory.mktemp("family_out")
    made = {layout: make(root) for layout, make in MAKERS.items()}
    (made["mvtec_3d"].root / "test" / "cut" / "xyz" / "000.tiff").write_bytes(b"not a tiff")
    for layout, syn in made.items():
        assert convert(layout, root, syn.root.name, out, "--task", "segment", "--splits",
                       str(out / "splits" / f"{syn.root.name}.json")) == 0
    return {"root": root, "out": out, "made": made}


def components(mask: np.ndarray) -> int:
    return cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)[0] - 1


def check_against_truth(out: Path, syn) -> None:
    """Every labelled image once at most (defect images exactly once), ids by file name, the classes, and per image
    the instances = the 8-connected components of the drawn mask: exact RLE union, tight boxes, polygons IoU >= .99."""
    category = syn.root.name
    cocos = checks.load_coco(out, category)
    labelled = sorted(f for f, t in syn.truth.items() if t.labelled)
    defects = {f for f in labelled if syn.truth[f].mask is not None}
    names = [img["file_name"] for c in cocos.values() for img in c.dataset["images"]]
    assert len(names) == len(set(names)) and defects <= set(names) <= set(labelled)
    classes = sorted({syn.truth[f].label for f in defects})
    for split, coco in cocos.items():
        assert [c["name"] for c in coco.dataset["categories"]] == classes
        assert coco.dataset["info"]["image_root"] == str(syn.root.resolve())
        prompts = json.loads((out / "sam" / category / f"prompts_{split}.json").read_text())
        sam = {img["id"]: img for img in prompts["images"]}
        for img in coco.dataset["images"]:
            truth = syn.truth[img["file_name"]]
            assert img["id"] == labelled.index(img["file_name"]) + 1
            assert (img["defect_type"], img["is_good"]) == (truth.label, truth.mask is None)
            anns = coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))
            if truth.mask is None:
                assert anns == [] and sam[img["id"]]["instances"] == []
                continue
            assert (img["height"], img["width"]) == truth.mask.shape
            assert len(anns) == components(truth.mask) > 0
            rle_union, poly_union = np.zeros_like(truth.mask), np.zeros_like(truth.mask)
            for ann, inst in zip(anns, sam[img["id"]]["instances"], strict=True):
                m = decode_rle(inst["mask"])
                ys, xs = np.nonzero(m)
                assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
                assert ann["area"] == m.sum() and components(m) == 1
                assert coco.cats[ann["category_id"]]["name"] == truth.label
                rle_union |= m
                poly_union |= coco.annToMask(ann).astype(bool)
            assert np.array_equal(rle_union, truth.mask), img["file_name"]
            assert (poly_union & truth.mask).sum() / (poly_union | truth.mask).sum() >= 0.99


@pytest.mark.parametrize("layout", MAKERS)
def test_every_format_reproduces_the_drawn_masks(family, layout):
    syn, out = family["made"][layout], family["out"]
    check_against_truth(out, syn)
    cocos = checks.load_coco(out, syn.root.name)
    checks.check_yolo(out, syn.root.name, cocos)
    checks.check_voc(out, syn.root.name, cocos)


def test_the_images_are_colour_gray_and_16_bit(family):
    """The generators cycle the modes, so every reader above read 8-bit colour, gray and 16-bit files."""
    seen = set()
    for syn in family["made"].values():
        for f in syn.truth:
            img = cv2.imread(str(syn.root / f), cv2.IMREAD_UNCHANGED)
            seen.add((img.ndim, img.dtype.itemsize))
    assert seen == {(3, 1), (2, 1), (3, 2), (2, 2)}


def test_ad2_private_images_are_only_in_instances_unlabelled(family):
    syn, out = family["made"]["mvtec_ad2"], family["out"]
    coco_dir = out / "coco" / "toy_can"
    private = sorted(f for f, t in syn.truth.items() if not t.labelled)
    assert private == ["test_private/000_overexposed.png", "test_private/000_regular.png",
                       "test_private_mixed/000_mixed.png", "test_private_mixed/001_mixed.png"]
    unlabelled = json.loads((coco_dir / "instances_unlabelled.json").read_text())
    n_labelled = sum(t.labelled for t in syn.truth.values())
    assert [(i["id"], i["file_name"], i["defect_type"], i["is_good"]) for i in unlabelled["images"]] == [
        (n_labelled + k, f, "unknown", False) for k, f in enumerate(private, 1)]
    assert unlabelled["annotations"] == [] and [c["name"] for c in unlabelled["categories"]] == ["defect"]
    assert unlabelled["info"]["split"] == "unlabelled"
    everywhere_else = "".join(p.read_text() for p in [*coco_dir.glob("instances_[tv]*.json"),
                                                      *(out / "sam" / "toy_can").glob("*.json"),
                                                      *(out / "voc" / "toy_can" / "ImageSets" / "Main").glob("*.txt"),
                                                      out / "splits" / "toy_can.json"])
    assert "test_private" not in everywhere_else
    linked = [p.name for p in (out / "yolo" / "toy_can").rglob("*") if p.is_file() or p.is_symlink()]
    assert not [n for n in linked if "private" in n]
    assert "ground_truth" not in everywhere_else  # masks are never taken for images


def test_ad2_defect_name_is_the_one_class(family, tmp_path):
    root = family["root"]
    assert convert("mvtec_ad2", root, "toy_can", tmp_path / "coco", "--defect-name", "Surface Defect",
                   "--splits", str(tmp_path / "s.json"), fmt="coco") == 0
    data = json.loads((tmp_path / "coco" / "instances_test.json").read_text())
    assert data["categories"] == [{"id": 1, "name": "surface_defect", "prompt": "surface defect",
                                   "supercategory": "toy_can"}]
    assert {i["defect_type"] for i in data["images"]} <= {"good", "surface_defect"}


def test_loco_masks_carry_grey_values_and_are_unioned(family):
    syn, out = family["made"]["mvtec_loco"], family["out"]
    config = json.loads((syn.root / "defects_config.json").read_text())
    assert [(d["defect_name"], d["pixel_value"]) for d in config] == [
        ("missing_part", 255), ("extra_part", 254), ("broken_part", 253), ("contamination", 252)]
    coco = {img["file_name"]: (c, img) for c in checks.load_coco(out, "toy_box").values()
            for img in c.dataset["images"]}
    folder = syn.root / "ground_truth" / "structural_anomalies"
    values = {int(v) for f in folder.rglob("*.png") for v in np.unique(cv2.imread(str(f), cv2.IMREAD_UNCHANGED))}
    assert values == {0, 252, 253}  # no 255 at all: grey values must count as defect
    for name, n_masks in (("001", 2), ("002", 2)):
        files = sorted((folder / name).iterdir())
        assert [f.name for f in files] == [f"{k:03d}.png" for k in range(n_masks)]
        union = np.logical_or.reduce([cv2.imread(str(f), cv2.IMREAD_UNCHANGED) > 0 for f in files])
        c, img = coco[f"test/structural_anomalies/{name}.png"]
        got = np.logical_or.reduce([c.annToMask(a).astype(bool) for a in c.loadAnns(c.getAnnIds(imgIds=img["id"]))])
        assert (got & union).sum() / (got | union).sum() >= 0.99
        assert all((union & ~(cv2.imread(str(f), cv2.IMREAD_UNCHANGED) > 0)).any() for f in files)  # each adds pixels
    # 002's two masks overlap: one region, one instance
    c, img = coco["test/structural_anomalies/002.png"]
    assert len(c.getAnnIds(imgIds=img["id"])) == components(syn.truth["test/structural_anomalies/002.png"].mask) == 1


def test_3d_masks_with_class_id_values_count_and_xyz_is_never_read(family):
    syn, out = family["made"]["mvtec_3d"], family["out"]
    assert json.loads((syn.root / "class_ids.json").read_text()) == {
        "255": "contamination", "254": "cut", "253": "hole", "0": "good"}
    gt = {f: cv2.imread(str(syn.root / "test" / f), cv2.IMREAD_UNCHANGED)
          for f in ("cut/gt/000.png", "hole/gt/000.png", "combined/gt/000.png")}
    assert [sorted(np.unique(m).tolist()) for m in gt.values()] == [[0, 254], [0, 253], [0, 253, 255]]
    cocos = checks.load_coco(out, "toy_tire")
    images = {img["file_name"]: (c, img) for c in cocos.values() for img in c.dataset["images"]}
    for f, m in gt.items():
        c, img = images[f"test/{f.replace('gt/', 'rgb/')}"]
        assert sum(a["area"] for a in c.loadAnns(c.getAnnIds(imgIds=img["id"]))) == (m > 0).sum()
    assert (syn.root / "test" / "cut" / "xyz" / "000.tiff").read_bytes() == b"not a tiff"
    assert all("/rgb/" in name for name in images)
    assert {n.split("/")[1] for n in images} >= {"combined", "contamination", "cut", "hole"}


# ---- --format auto and the layout markers --------------------------------------------------------------


@pytest.mark.parametrize("layout", MAKERS)
def test_auto_says_which_layout_it_found(family, layout, tmp_path, capsys):
    syn = family["made"][layout]
    assert convert("auto", family["root"], syn.root.name, tmp_path / "coco", "--splits", str(tmp_path / "s.json"),
                   fmt="coco") == 0
    assert f"--format auto: {family['root'] / syn.root.name} is a {layout} layout" in capsys.readouterr().err
    got = json.loads((tmp_path / "coco" / "instances_train.json").read_text())
    want = json.loads((family["out"] / "coco" / syn.root.name / "instances_train.json").read_text())
    assert got["images"] == want["images"] and got["categories"] == want["categories"]


def test_no_layout_marker_matches_another_layout(family, tmp_path):
    """Each reader's looks_like is true on its own layout only (also not on MVTec AD, VisA or KolektorSDD2);
    MVTec AD's markers do match LOCO, so LOCO is tried first."""
    roots = {layout: syn.root for layout, syn in family["made"].items()}
    make_category(tmp_path, "plain", size=64, defects=("hole",), per_defect=1, good_test=1, good_train=1,
                  combined=0, seed=1)
    roots["mvtec"] = tmp_path / "plain"
    for rel in ("kolektor/train/10000.png", "kolektor/train/10000_GT.png", "kolektor/test/20000.png",
                "kolektor/test/20000_GT.png", "visa/Data/Images/Anomaly/000.JPG", "visa/Data/Masks/Anomaly/000.png",
                "visa/Data/Images/Normal/0000.JPG"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(roots["mvtec"] / "test" / "hole" / "000.png", tmp_path / rel)
    (tmp_path / "visa" / "image_anno.csv").write_text("image,label,mask\n")
    roots["kolektor2"], roots["visa"] = tmp_path / "kolektor", tmp_path / "visa"
    matches = {(reader, layout) for reader, module in MODULES.items() for layout, root in roots.items()
               if module.looks_like(root)}
    assert matches == {(layout, layout) for layout in MODULES}
    assert [mvtec.looks_like(roots[x]) for x in MODULES] == [False, True, False]
    order = list(READERS)
    assert order.index("mvtec_loco") < order.index("mvtec")
    assert resolve(DatasetSource(tmp_path, "plain", format="auto")).format == "mvtec"


# ---- bad files: one error line naming the file ---------------------------------------------------------


CATEGORY = {"mvtec_ad2": "toy_can", "mvtec_loco": "toy_box", "mvtec_3d": "toy_tire"}


BROKEN_MASK = {"mvtec_ad2": "test_public/ground_truth/bad/001_shift_1_mask.png",
               "mvtec_loco": "ground_truth/logical_anomalies/001/001.png",
               "mvtec_3d": "test/cut/gt/001.png"}
IMAGE_OF = {"mvtec_ad2": "test_public/bad/001_shift_1.png", "mvtec_loco": "test/logical_anomalies/001.png",
            "mvtec_3d": "test/cut/rgb/001.png"}


def bad_input(layout: str, tmp_path: Path, capsys) -> str:
    rc = convert(layout, tmp_path, CATEGORY[layout], tmp_path / "o", "--splits", str(tmp_path / "o.json"), fmt="coco")
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and not (tmp_path / "o").exists(), err
    return err[0]


@pytest.mark.parametrize("layout", MAKERS)
def test_missing_mask_names_the_mask_and_its_image(layout, tmp_path, capsys):
    root = MAKERS[layout](tmp_path).root
    mask = root / BROKEN_MASK[layout]
    if layout == "mvtec_loco":  # the whole mask folder of the image is gone: the first expected file is named
        shutil.rmtree(mask.parent)
        mask = mask.parent / "000.png"
    else:
        mask.unlink()
    image = root / IMAGE_OF[layout]
    assert bad_input(layout, tmp_path, capsys) == f"error: {mask}: missing mask for defect image {image}"


@pytest.mark.parametrize("layout", MAKERS)
def test_mask_of_another_size_names_the_mask(layout, tmp_path, capsys):
    root = MAKERS[layout](tmp_path).root
    mask = root / BROKEN_MASK[layout]
    cv2.imwrite(str(mask), np.full((40, 30), 254, np.uint8))
    assert bad_input(layout, tmp_path, capsys) == (
        f"error: {mask}: mask is 30x40 but its image {Path(IMAGE_OF[layout]).name} is 72x96")


@pytest.mark.parametrize("layout, image", [("mvtec_ad2", "test_private_mixed/001_mixed.png"),
                                           ("mvtec_loco", "validation/good/001.png"),
                                           ("mvtec_3d", "train/good/rgb/002.png")])
def test_unreadable_image_is_named(layout, image, tmp_path, capsys):
    root = MAKERS[layout](tmp_path).root
    (root / image).write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    assert bad_input(layout, tmp_path, capsys).startswith(f"error: {root / image}: not a readable image")

