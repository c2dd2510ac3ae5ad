"""Shared fixtures: a small synthetic category in MVTec layout, and the real sample when ../shared exists."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from defect_vision.data.synthetic import make_category

REPO = Path(__file__).resolve().parents[1]
REAL_ROOT = Path(os.environ.get("DEFECT_VISION_MVTEC_SAMPLE", REPO.parent / "shared" / "data" / "mvtec_ad"))
REAL_CATEGORIES = ("bottle", "grid", "metal_nut")

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """Root holding `toy_wood` (subtle defects, 256 px, 5 defect types incl. combined, a few grayscale images)."""
    root = tmp_path_factory.mktemp("mvtec_synth")
    make_category(root, "toy_wood", seed=0)
    return root


@pytest.fixture(scope="session")
def easy_root(tmp_path_factory) -> Path:
    """Root holding `toy_easy`: one obvious defect shape per class (hole, scratch, stain), high contrast."""
    root = tmp_path_factory.mktemp("mvtec_easy")
    make_category(root, "toy_easy", defects=("hole", "scratch", "stain"), per_defect=10, combined=0,
                  contrast=1.0, gray_every=0, seed=1)
    return root


@pytest.fixture(scope="session")
def real_root() -> Path:
    if not (REAL_ROOT / "bottle" / "test").is_dir():
        pytest.skip(f"real MVTec AD sample not found at {REAL_ROOT}")
    return REAL_ROOT


@pytest.fixture
def one_thread():
    """2 shared cores: one intra-op thread is several times faster for tiny models (SAM tests use it)."""
    from defect_vision.devices import intra_op_threads

    with intra_op_threads(1):
        yield


@pytest.fixture(scope="module")
def easy_prompts(easy_root, tmp_path_factory) -> Path:
    """The SAM prompts export of toy_easy (datasets/sam/toy_easy layout)."""
    from defect_vision.cli.convert import main as convert

    out = tmp_path_factory.mktemp("sam_prompts") / "toy_easy"
    assert convert(["--category", "toy_easy", "--root", str(easy_root), "--out", str(out),
                    "--splits", str(out.parent / "split.json"), "--no-progress"], fmt="sam") == 0
    return out


@pytest.fixture
def no_clip_download(monkeypatch):
    """ultralytics' own text path downloads CLIP: reaching it fails the test."""
    from ultralytics.nn.tasks import WorldModel

    def refuse(*args, **kwargs):
        raise AssertionError("WorldModel.get_text_pe reached (it downloads CLIP)")

    monkeypatch.setattr(WorldModel, "get_text_pe", refuse)


def write_instances(category, picks: list[str], path: Path) -> Path:
    """instances_test.json (the converters' format, RLE masks) of the category's images `picks`, at `path`."""
    import json

    from defect_vision.formats.coco import (
        annotations,
        categories,
        first_annotation_ids,
        image_entry,
    )

    ids = {r.file_name: i for i, r in enumerate(category.images, 1)}
    first = first_annotation_ids(category)
    recs = [r for r in category.images if r.file_name in picks]
    assert len(recs) == len(picks)
    coco = {"info": {"category": category.name, "image_root": str(category.root), "split": "test", "seed": 0},
            "images": [image_entry(r, ids[r.file_name]) for r in recs],
            "annotations": [a for r in recs for a in annotations(r, ids[r.file_name], first[r.file_name], category, rle=True)],
            "categories": categories(category)}
    path.write_text(json.dumps(coco))
    return path
