"""Bad input: a one-line `error: <path>: <problem>` on stderr, exit code 2, and nothing written."""
from __future__ import annotations

from functools import partial
from pathlib import Path

import cv2
import numpy as np
import pytest

from defect_vision.cli.convert import main as convert_main

to_all = partial(convert_main, prog="mvtec_to_all.py")
to_coco, to_yolo, to_voc, to_sam = (partial(convert_main, prog=f"mvtec_to_{f}.py", fmt=f) for f in ("coco", "yolo", "voc", "sam"))
from defect_vision.data.synthetic import make_category


@pytest.fixture
def tiny(tmp_path) -> Path:
    """A fresh tiny category `tiny` (96 px, hole + stain, 2 images each, 1 + 1 good) under tmp_path/mvtec."""
    make_category(tmp_path / "mvtec", "tiny", size=96, defects=("hole", "stain"), per_defect=2, good_test=1,
                  good_train=1, combined=0, gray_every=0, seed=3)
    return tmp_path / "mvtec"


def convert(tmp_path: Path, root: Path, capsys, main=to_coco, category: str = "tiny",
            out: Path | None = None) -> str:
    """Run a converter expecting bad input: exit 2, one stderr line, nothing written; return that line."""
    out = out or tmp_path / "out" / "coco"
    splits = tmp_path / "out" / "splits.json"
    rc = main(["--category", category, "--root", str(root), "--out", str(out), "--splits", str(splits), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    errors = [line for line in err if line.startswith("error: ")]
    assert len(errors) == 1, err
    assert not out.exists() and not splits.exists()
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []
    return errors[0]


def test_missing_mask(tiny, tmp_path, capsys):
    mask = tiny / "tiny" / "ground_truth" / "stain" / "001_mask.png"
    mask.unlink()
    line = convert(tmp_path, tiny, capsys)
    assert line == f"error: {mask}: missing mask for defect image {tiny / 'tiny' / 'test' / 'stain' / '001.png'}"


def test_mask_size_differs_from_its_image(tiny, tmp_path, capsys):
    mask = tiny / "tiny" / "ground_truth" / "hole" / "000_mask.png"
    cv2.imwrite(str(mask), np.full((48, 64), 255, np.uint8))
    line = convert(tmp_path, tiny, capsys)
    assert line == f"error: {mask}: mask is 64x48 but its image 000.png is 96x96"


def test_empty_mask(tiny, tmp_path, capsys):
    mask = tiny / "tiny" / "ground_truth" / "hole" / "001_mask.png"
    cv2.imwrite(str(mask), np.zeros((96, 96), np.uint8))
    line = convert(tmp_path, tiny, capsys, main=to_yolo, out=tmp_path / "out" / "yolo")
    assert line == f"error: {mask}: mask is empty (no defect pixel) for defect image 001.png"


def test_corrupt_image_png(tiny, tmp_path, capsys):
    image = tiny / "tiny" / "test" / "hole" / "001.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    line = convert(tmp_path, tiny, capsys, main=to_voc, out=tmp_path / "out" / "voc")
    assert line.startswith(f"error: {image}: not a readable image")


def test_truncated_image_png_with_a_valid_header(tiny, tmp_path, capsys):
    image = tiny / "tiny" / "test" / "stain" / "000.png"
    image.write_bytes(image.read_bytes()[:300])  # header and size intact, pixel data cut off
    line = convert(tmp_path, tiny, capsys, main=to_yolo, out=tmp_path / "out" / "yolo")
    assert line == f"error: {image}: not a readable image (truncated PNG: no IEND chunk)"


def test_corrupt_mask_png(tiny, tmp_path, capsys):
    mask = tiny / "tiny" / "ground_truth" / "stain" / "000_mask.png"
    mask.write_bytes(mask.read_bytes()[:40])  # truncated
    line = convert(tmp_path, tiny, capsys)
    assert line == f"error: {mask}: not a readable mask image"


def test_unknown_category_lists_the_ones_found(tiny, tmp_path, capsys):
    make_category(tiny, "other", size=64, defects=("hole",), per_defect=1, good_test=1, good_train=0, combined=0)
    line = convert(tmp_path, tiny, capsys, category="wood")
    assert line == f"error: {tiny}: unknown category 'wood' (found: other, tiny)"


def test_empty_root(tmp_path, capsys):
    root = tmp_path / "empty"
    root.mkdir()
    line = convert(tmp_path, root, capsys)
    assert line.startswith(f"error: {root}: no MVTec categories found")


def test_missing_root(tmp_path, capsys):
    root = tmp_path / "nowhere"
    line = convert(tmp_path, root, capsys)
    assert line == f"error: {root}: no such folder (the MVTec AD root)"


def test_unwritable_output_folder(tiny, tmp_path, capsys):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the output folder's parent should be")
    line = convert(tmp_path, tiny, capsys, out=blocker / "coco")
    assert line == f"error: {blocker}: a file is in the way of an output folder [errno 17]"
    assert blocker.read_text().startswith("a file")


def test_output_path_is_a_file(tiny, tmp_path, capsys):
    target = tmp_path / "target.json"
    target.write_text("{}")
    rc = to_coco(["--category", "tiny", "--root", str(tiny), "--out", str(target),
                             "--splits", str(tmp_path / "s.json"), "--no-progress"])
    assert rc == 2 and capsys.readouterr().err.strip() == f"error: {target}: exists and is not a folder; choose another output folder"
    assert target.read_text() == "{}" and not (tmp_path / "s.json").exists()


def test_read_only_output_folder(tiny, tmp_path, capsys):
    import os

    if os.geteuid() == 0:
        pytest.skip("root can write into read-only folders")
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        line = convert(tmp_path, tiny, capsys, out=parent / "coco")
    finally:
        parent.chmod(0o755)
    assert line.startswith(f"error: {parent}")


def test_a_failure_half_way_through_leaves_no_format_behind(tiny, tmp_path, capsys, monkeypatch):
    import defect_vision.formats.voc as voc

    def broken(job, folder, final, config):
        (folder / "Annotations").mkdir()
        raise OSError(28, "No space left on device", str(folder / "Annotations" / "x.xml"))

    monkeypatch.setattr(voc, "write_voc", broken)
    out = tmp_path / "datasets"
    rc = to_all(["--category", "tiny", "--root", str(tiny), "--out", str(out), "--no-progress",
                            "--splits", str(out / "splits" / "tiny.json")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: ") and "x.xml: No space left on device [errno 28]" in err
    assert not out.exists()


def test_a_changed_split_config_needs_resplit(tiny, tmp_path, capsys):
    splits = tmp_path / "splits.json"
    base = ["--category", "tiny", "--root", str(tiny), "--splits", str(splits), "--no-progress"]
    assert to_coco([*base, "--out", str(tmp_path / "a")]) == 0
    before = splits.read_text()
    capsys.readouterr()  # the first conversion's summary and warnings
    rc = to_coco([*base, "--out", str(tmp_path / "b"), "--seed", "1"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith(f"error: {splits}: existing split was made with") and "--resplit" in err
    assert not (tmp_path / "b").exists() and splits.read_text() == before
    assert to_coco([*base, "--out", str(tmp_path / "b"), "--seed", "1", "--resplit"]) == 0
    assert splits.read_text() != before


@pytest.mark.parametrize("args, message", [
    (["--split", "0.6", "-0.2", "0.6"], "--split: ratios must be >= 0"),
    (["--good-per-split", "1", "-1", "1"], "--good-per-split: counts must be >= 0"),
    (["--min-area", "0"], "--min-area: must be >= 1"),
    (["--good-ratio", "0.5", "--good-per-split", "1", "1", "1"], "not allowed with argument"),
])
def test_bad_arguments_exit_2_with_a_usage_error(tiny, tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exc:
        to_coco(["--category", "tiny", "--root", str(tiny), "--out", str(tmp_path / "o"), *args])
    assert exc.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_corrupt_image_is_one_line_even_after_ultralytics_patched_pil(tiny, tmp_path, capsys):
    """ultralytics replaces PIL.Image.open on import; an unreadable file then raises ModuleNotFoundError (pi_heif)."""
    import ultralytics.utils.patches  # noqa: F401  (applies the patch, as any detector/trainer import does)

    image = tiny / "tiny" / "test" / "hole" / "000.png"
    image.write_bytes(b"not an image at all")
    line = convert(tmp_path, tiny, capsys)
    assert line.startswith(f"error: {image}: not a readable image (")
