"""train-detector on inputs a user really has (issue 18): an --out inside the folders the YOLO export's images link
to is refused, `--force` or not; a degenerate export (empty val split, no boxes) is refused before training with one
plain line naming the file; ultralytics' dataset errors reach the user as one line without colour codes; a
prompts.yaml naming a class the dataset does not have is refused."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import ultralytics  # noqa: F401  (imported here, its log handler binds the real stdout, not one test's capture)

from defect_vision.cli.convert import main as convert_main
from defect_vision.cli.train_detector import main as train_main
from defect_vision.data.synthetic import make_category
from defect_vision.io import MARKER
from defect_vision.training.detector_errors import plain_line

TINY = ["--from-scratch", "--model-cfg", "yolov8n-worldv2.yaml", "--text-encoder", "random", "--imgsz", "64",
        "--batch", "8", "--workers", "0", "--no-plots", "--epochs", "1"]


@pytest.fixture(scope="module")
def category(tmp_path_factory) -> tuple[Path, Path]:
    """(the category folder in MVTec layout, the folder holding its yolo/ and coco/ exports)."""
    root = tmp_path_factory.mktemp("mvtec")
    make_category(root, "toy", size=96, defects=("hole", "scratch"), per_defect=8, combined=0, contrast=1.0,
                  gray_every=0, seed=3)
    out = tmp_path_factory.mktemp("export")
    assert convert_main(["--category", "toy", "--root", str(root), "--out", str(out), "--formats", "yolo", "coco",
                         "--no-progress"]) == 0
    return root / "toy", out


def _copy_export(export: Path, dst: Path) -> tuple[Path, Path]:
    """A copy of the exports (images still symlinks into the category) whose data.yaml points at the copy."""
    shutil.copytree(export, dst, symlinks=True)
    data = dst / "yolo" / "toy" / "data.yaml"
    data.write_text(data.read_text().replace(str(export.resolve()), str(dst.resolve())))
    return data, dst / "coco" / "toy"


def _args(data: Path, coco: Path, out: Path, *extra: str) -> list[str]:
    return ["--category", "toy", "--data", str(data), "--coco", str(coco), "--out", str(out), *TINY, *extra]


def _error_of(argv: list[str], capsys) -> str:
    """The one line on stderr (after the random text encoder's warning, when training got that far)."""
    assert train_main(argv) == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("WARNING: RANDOM")]
    assert len(err) == 1 and err[0].startswith("error: "), err[-5:]
    assert "\x1b" not in err[0]
    return err[0]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_out_where_the_export_images_live_is_refused_even_with_force(category, capsys):
    """The export's images are symlinks to <category>/test/hole/000.png...: a run there would replace the user's
    images (and its marker would let the next run delete them without --force)."""
    cat, export = category
    data, coco = export / "yolo" / "toy" / "data.yaml", export / "coco" / "toy"
    linked = sorted((data.parent / "images").rglob("*.png"))
    assert linked and all(p.is_symlink() for p in linked)
    before = _snapshot(cat)
    for out, force in ((cat / "test" / "hole", ["--force"]), (cat / "train" / "good", ["--force"]),
                       (cat / "test" / "hole" / "run", []), (cat / "test", ["--force"]), (cat, ["--force"])):
        msg = _error_of(_args(data, coco, out, *force), capsys)
        where = "is" if out.name in ("hole", "good") else ("lies inside" if out.name == "run" else "holds")
        assert msg.startswith(f"error: {out}: output folder {where} the input "), msg
        assert "choose another output folder" in msg
    assert _snapshot(cat) == before  # nothing written, nothing removed
    assert not (cat / "test" / "hole" / MARKER).exists() and not (cat / "test" / "hole" / "run").exists()


def test_empty_val_split_is_refused_before_training(category, tmp_path, capsys):
    """Too few defect images for a val split: ultralytics used to fail after the train set was cached, with a
    two-line error full of ANSI colour codes."""
    data, coco = _copy_export(category[1], tmp_path / "export")
    val = data.parent / "images" / "val"
    for p in [*val.iterdir(), *(data.parent / "labels" / "val").iterdir()]:
        p.unlink()
    out = tmp_path / "run"
    msg = _error_of(_args(data, coco, out), capsys)
    assert msg.startswith(f"error: {val}: no validation images (the val split is empty")
    assert not out.exists()


@pytest.mark.parametrize("split", ["train", "val"])
def test_split_without_boxes_is_refused_before_training(category, tmp_path, capsys, split):
    """A category with good images only (every label file empty) trained to exit 0 with mAP 0.000."""
    data, coco = _copy_export(category[1], tmp_path / "export")
    labels = data.parent / "labels" / split
    n = len(list((data.parent / "images" / split).iterdir()))
    for p in labels.glob("*.txt"):
        p.write_text("")
    out = tmp_path / "run"
    msg = _error_of(_args(data, coco, out), capsys)
    assert msg == (f"error: {labels}: no labelled boxes in the {split} split ({n} images): nothing to "
                   f"{'train' if split == 'train' else 'validate'} on (a category with good images only?)")
    assert not out.exists()


def test_ultralytics_dataset_error_is_one_plain_line(category, tmp_path, capsys):
    """Images ultralytics cannot decode pass our checks (the files are there, with boxes); its RuntimeError ("No
    valid images found", colour codes and one line per image) used to end the run with a traceback."""
    data, coco = _copy_export(category[1], tmp_path / "export")
    for p in (data.parent / "images" / "val").iterdir():
        p.unlink()
        p.write_bytes(b"not an image")
    msg = _error_of(_args(data, coco, tmp_path / "run"), capsys)
    assert msg.startswith(f"error: {data}: ") and "No valid images found" in msg
    assert str(data.parent / "labels" / "val.cache") in msg


def test_plain_line_strips_colour_codes_and_joins_lines():
    text = "\x1b[34m\x1b[1mval: \x1b[0mError loading data from /d/images/val\nSee https://docs.ultralytics.com"
    assert plain_line(text) == "val: Error loading data from /d/images/val See https://docs.ultralytics.com"
    assert len(plain_line("x" * 1000)) == 400 and plain_line("x" * 1000).endswith("...")


def test_prompts_naming_a_class_the_dataset_lacks_is_refused(category, tmp_path, capsys):
    cat, export = category
    data, coco = export / "yolo" / "toy" / "data.yaml", export / "coco" / "toy"
    prompts = tmp_path / "prompts.yaml"
    prompts.write_text("hole: [hole, round hole]\ncrack: [crack]\n")
    out = tmp_path / "run"
    msg = _error_of(_args(data, coco, out, "--prompts", str(prompts)), capsys)
    assert msg == f"error: {prompts}: classes crack are not in the training data (its classes: hole, scratch)"
    assert not out.exists()
