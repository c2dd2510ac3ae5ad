"""Issue 18's reader findings: EXIF-rotated and truncated JPEGs, WebP and unmatched globs, degenerate datasets, and
VisA as the real files are (multi-type images with per-type mask values, a partial copy)."""
from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from fixtures.synthetic_mvtec_family import make_mvtec_loco
from fixtures.synthetic_other_layouts import make_visa
from PIL import Image
from test_readers_other import convert, convert_error, load_export

from defect_vision.data.images import image_size, read_image
from defect_vision.data.source import DatasetSource, read_dataset
from defect_vision.data.splits import SplitConfig, make_split, split_warnings
from defect_vision.data.synthetic import make_category
from defect_vision.errors import DatasetError
from defect_vision.masks import decode_rle

FOLDER = ["--format", "folder", "--images", "img/*/*", "--masks", "{dir}/../../gt/{stem}.png"]


def _photo(path: Path, stored: tuple[int, int], orientation: int) -> None:
    """A JPEG of stored height x width whose EXIF orientation viewers (and OpenCV) apply."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(0).integers(0, 255, (*stored, 3), np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(path, "JPEG", exif=exif.tobytes())


def _mask(path: Path, shape: tuple[int, int], box: tuple[int, int, int, int]) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    mask = np.zeros(shape, np.uint8)
    x, y, w, h = box
    mask[y : y + h, x : x + w] = 255
    cv2.imwrite(str(path), mask)
    return mask > 0


@pytest.mark.parametrize("orientation", [6, 8])
def test_exif_rotated_jpeg_converts_in_the_orientation_the_pixel_readers_decode(tmp_path, orientation):
    root = tmp_path / "data"
    _photo(root / "img/scratch/p1.jpg", (40, 100), orientation)  # stored 100 wide, 40 high; shown 40 x 100
    drawn = _mask(root / "gt/p1.png", (100, 40), (5, 60, 20, 30))  # drawn on the image as viewers show it
    _photo(root / "img/scratch/p2.jpg", (40, 100), 1)
    plain = _mask(root / "gt/p2.png", (40, 100), (70, 5, 20, 10))
    assert read_image(root / "img/scratch/p1.jpg").shape[:2] == (100, 40)  # predict, SAM training, ultralytics
    assert image_size(root / "img/scratch/p1.jpg") == (100, 40)
    out = tmp_path / "out"
    convert(root, "p", out, *FOLDER, "--split", "1", "0", "1", fmt=None)
    _, images, anns = load_export(out / "coco" / "p")
    by_name = {im["file_name"]: im for im in images}
    for name, mask in (("img/scratch/p1.jpg", drawn), ("img/scratch/p2.jpg", plain)):
        im = by_name[name]
        assert (im["height"], im["width"]) == mask.shape
        [ann] = [a for a in anns if a["image_id"] == im["id"]]
        assert np.array_equal(decode_rle(ann["segmentation"]), mask)
        # the YOLO box lies on the decoded pixels: normalised by the shown width and height
        [label] = (out / "yolo" / "p" / "labels").glob(f"*/*_{Path(name).stem}.txt")
        _, cx, cy, w, h = map(float, label.read_text().split())
        ys, xs = np.nonzero(mask)
        H, W = mask.shape
        assert (cx * W, cy * H, w * W, h * H) == pytest.approx(
            ((xs.min() + xs.max() + 1) / 2, (ys.min() + ys.max() + 1) / 2, np.ptp(xs) + 1, np.ptp(ys) + 1), abs=1e-3)


def test_a_mask_in_stored_orientation_of_a_turned_jpeg_is_refused(tmp_path):
    root = tmp_path / "data"
    _photo(root / "img/scratch/p1.jpg", (40, 100), 6)
    _mask(root / "gt/p1.png", (40, 100), (5, 5, 20, 10))
    assert convert_error(root, "p", tmp_path, *FOLDER) == (
        f"error: {root / 'gt/p1.png'}: mask is 100x40 but its image p1.jpg is 40x100")


def test_truncated_jpeg_is_refused_by_the_converter_like_a_truncated_png(tmp_path):
    root = tmp_path / "data"
    for i in (1, 2):
        _photo(root / f"img/scratch/p{i}.jpg", (40, 100), 1)
        _mask(root / f"gt/p{i}.png", (40, 100), (5, 5, 20, 10))
    full = (root / "img/scratch/p2.jpg").read_bytes()
    (root / "img/scratch/p2.jpg").write_bytes(full + b"\0" * 3000)  # data after the end marker: OpenCV reads it
    assert read_image(root / "img/scratch/p2.jpg").shape == (40, 100, 3) and image_size(root / "img/scratch/p2.jpg")
    (root / "img/scratch/p1.jpg").write_bytes(full[: len(full) * 2 // 3])
    with pytest.raises(DatasetError):
        read_image(root / "img/scratch/p1.jpg")  # every pixel reader refuses it
    assert convert_error(root, "p", tmp_path, *FOLDER) == (
        f"error: {root / 'img/scratch/p1.jpg'}: not a readable image (truncated JPEG: no end-of-image marker)")
    (root / "img/scratch/p1.jpg").write_bytes(full[:-2])  # only the end marker lost
    assert convert_error(root, "p", tmp_path, *FOLDER).endswith("(truncated JPEG: no end-of-image marker)")


def test_webp_images_are_read_and_an_unmatched_glob_says_why(tmp_path):
    root = tmp_path / "data"
    rgb = np.random.default_rng(1).integers(0, 255, (48, 64, 3), np.uint8)
    (root / "img/stain").mkdir(parents=True)
    Image.fromarray(rgb).save(root / "img/stain/w1.webp", "WEBP", lossless=True)
    mask = _mask(root / "gt/w1.png", (48, 64), (10, 10, 8, 8))
    out = tmp_path / "out"
    line, _ = convert(root, "p", out, *FOLDER, "--split", "1", "0", "0")
    assert "1 images (train 1, val 0, test 0), 1 instances (stain 1)" in line
    [im] = [im for im in load_export(out)[1]]
    assert (im["file_name"], im["height"], im["width"]) == ("img/stain/w1.webp", *mask.shape)
    (root / "other").mkdir()
    for name in ("a.gif", "b.GIF", "notes.txt"):
        (root / "other" / name).write_bytes(b"x")
    assert convert_error(root, "p", tmp_path, "--format", "folder", "--images", "other/*", "--masks", "{stem}.png") == (
        f"error: {root}: no image matches --images 'other/*' (3 files match, none with an image suffix: found .gif, .txt; "
        "read are .bmp, .jpeg, .jpg, .png, .tif, .tiff, .webp)")


# ---- degenerate datasets ---------------------------------------------------------------------------------


def test_a_loco_category_read_as_mvtec_ad2_is_an_error_naming_its_layout(tmp_path):
    make_mvtec_loco(tmp_path, "box", size=48, good=(2, 1, 1), per_type=1)
    err = convert_error(tmp_path, "box", tmp_path, "--format", "mvtec_ad2")
    assert err.startswith(f"error: {tmp_path / 'box'}: no defect image read as format mvtec_ad2 (3 good images only); "
                          "its files look like mvtec_loco (")


def test_a_category_with_good_images_only_is_an_error(tmp_path):
    make_category(tmp_path, "plain", size=48, per_defect=1, good_train=2, good_test=1, combined=0)
    for d in (tmp_path / "plain" / "test").iterdir():
        if d.name != "good":
            shutil.rmtree(d)
    assert convert_error(tmp_path, "plain", tmp_path) == (
        f"error: {tmp_path / 'plain'}: no defect image read as format mvtec (3 good images only); format mvtec reads "
        "defect images from <C>/test/<defect>/*.png with <C>/ground_truth/<defect>/<stem>_mask.png")


def test_too_few_defect_images_for_a_val_split_give_one_warning_line(tmp_path):
    make_category(tmp_path, "few", size=48, defects=("scratch",), per_defect=2, good_train=2, good_test=1, combined=0)
    line, _ = convert(tmp_path, "few", tmp_path / "coco")
    assert "(train 2, val 0, test 2)" in line
    cat = read_dataset(DatasetSource(tmp_path, "few"))
    assert split_warnings(cat, make_split(cat, SplitConfig())) == [
        f"{tmp_path / 'few'}: the val split has no defect image (2 defect images in all, too few for ratios 0.6/0.2/0.2): "
        "training or evaluation on it measures nothing (add defect images, or set its ratio to 0)"]
    assert split_warnings(cat, make_split(cat, SplitConfig((1, 0, 1)))) == []  # a ratio of 0 asks for no such split
    assert [w.split(": ")[1] for w in split_warnings(cat, make_split(cat, SplitConfig((1, 1, 1))))] == [
        "the train split has no defect image (2 defect images in all, too few for ratios 1/1/1)"]


# ---- VisA as the real files are -------------------------------------------------------------------------


def _visa_classes(out: Path) -> dict[str, list[str]]:
    """file name -> sorted class names of its annotations."""
    cats, images, anns = load_export(out)
    names = {c: cats[c]["name"] for c in cats}
    return {im["file_name"]: sorted(names[a["category_id"]] for a in anns if a["image_id"] == im["id"]) for im in images}


def test_visa_regions_of_a_multi_type_image_get_their_own_types(tmp_path):
    # value 1 = scratch, 2 = chip around edge, 3 = melt (seen alone); crack (4) only with melt: the one value left
    drawn = make_visa(tmp_path, normal=2, labels=("scratch", "Chip around edge", "scratch, chip around edge", "melt",
                                                 "melt, crack"))
    out = tmp_path / "coco"
    line, err = convert(tmp_path, "candle", out, "--format", "visa", "--split", "1", "0", "0")
    assert "chip_around_edge_and_scratch" not in line and "crack_and_melt" not in line
    assert "warning:" not in err  # no combination kept
    found = _visa_classes(out)
    for name in ("Data/Images/Anomaly/002.JPG", "Data/Images/Anomaly/004.JPG"):
        values = drawn[name].mask
        cats, images, anns = load_export(out)
        [im] = [im for im in images if im["file_name"] == name]
        for a in anns:
            if a["image_id"] == im["id"]:
                value = {"scratch": 1, "chip_around_edge": 2, "melt": 3, "crack": 4}[cats[a["category_id"]]["name"]]
                assert (values[decode_rle(a["segmentation"]) > 0] == value).all()  # each region under its own value
    assert set(found["Data/Images/Anomaly/002.JPG"]) == {"chip_around_edge", "scratch"}
    assert set(found["Data/Images/Anomaly/004.JPG"]) == {"crack", "melt"}


def test_visa_keeps_the_combination_where_the_values_cannot_tell_and_says_so(tmp_path):
    make_visa(tmp_path, normal=2, labels=("melt", "scratch, crack"))  # neither scratch nor crack seen alone
    line, err = convert(tmp_path, "candle", tmp_path / "coco", "--format", "visa", "--split", "1", "0", "0")
    assert "crack_and_scratch" in line
    assert ("warning: 1 images with several defect types kept as one combination class each (their mask values do not "
            "say which region is which type: Data/Images/Anomaly/001.JPG)") in err.splitlines()


def test_visa_partial_copy_skips_missing_images_with_one_line_or_fails_when_strict(tmp_path):
    make_visa(tmp_path, normal=4, labels=("melt", "scratch", "melt"))
    cat = tmp_path / "candle"
    for rel in ("Data/Images/Normal/0001.JPG", "Data/Images/Normal/0003.JPG", "Data/Images/Anomaly/002.JPG"):
        (cat / rel).unlink()
    _, err = convert(tmp_path, "candle", tmp_path / "coco", "--format", "visa", "--split", "1", "0", "1")
    assert sorted(r.file_name for r in read_dataset(DatasetSource(tmp_path, "candle", format="visa")).images) == [
        "Data/Images/Anomaly/000.JPG", "Data/Images/Anomaly/001.JPG", "Data/Images/Normal/0000.JPG",
        "Data/Images/Normal/0002.JPG"]
    assert [w for w in err.splitlines() if "not on disk" in w] == [
        f"warning: {cat / 'image_anno.csv'}: 3 of 7 images it lists are not on disk (Data/Images/Normal/0001.JPG, "
        "Data/Images/Normal/0003.JPG, Data/Images/Anomaly/002.JPG): skipped"]
    with pytest.raises(DatasetError, match=r"3 of 7 images it lists are not on disk .*; strict: a partial copy is an error$"):
        read_dataset(DatasetSource(tmp_path, "candle", format="visa", strict=True))
