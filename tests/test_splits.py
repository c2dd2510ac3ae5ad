"""The seeded, stratified split: hand-checked counts, determinism, good images as negatives, the saved file."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from defect_vision.data.records import Category, ImageRecord
from defect_vision.data.splits import (
    SPLITS,
    SplitConfig,
    _counts,
    load_or_make_split,
    load_split,
    make_split,
    save_split,
)
from defect_vision.errors import DatasetError


def fake_category(per_type: dict[str, int], good: int) -> Category:
    recs = [ImageRecord(f"test/{t}/{i:03d}.png", Path(f"/x/test/{t}/{i:03d}.png"), 8, 8, t)
            for t, n in per_type.items() for i in range(n)]
    recs += [ImageRecord(f"train/good/{i:03d}.png", Path(f"/x/train/good/{i:03d}.png"), 8, 8, "good") for i in range(good)]
    recs.sort(key=lambda r: r.file_name)
    return Category("fake", Path("/x"), recs, sorted(per_type))


@pytest.mark.parametrize("n, expected", [(10, [6, 2, 2]), (5, [3, 1, 1]), (3, [1, 1, 1]), (2, [1, 0, 1]), (1, [1, 0, 0]), (0, [0, 0, 0])])
def test_counts_per_defect_type(n, expected):
    assert _counts(n, (0.6, 0.2, 0.2)) == expected


def test_every_defect_image_is_in_exactly_one_split_stratified_per_type():
    cat = fake_category({"crack": 10, "hole": 5, "scratch": 2}, good=20)
    split = make_split(cat, SplitConfig())
    listed = [f for s in SPLITS for f in split.files[s]]
    assert len(listed) == len(set(listed))
    defects = {r.file_name for r in cat.images if not r.is_good}
    assert defects <= set(listed)
    per = {s: Counter(f.split("/")[1] for f in split.files[s]) for s in SPLITS}
    assert [per[s]["crack"] for s in SPLITS] == [6, 2, 2]
    assert [per[s]["hole"] for s in SPLITS] == [3, 1, 1]
    assert [per[s]["scratch"] for s in SPLITS] == [1, 0, 1]
    # good ratio 0.5: ceil(0.5 * defects in split) = ceil(5), ceil(1.5), ceil(2) -> 5, 2, 2 of 20; 11 unused
    assert [per[s]["good"] for s in SPLITS] == [5, 2, 2]
    assert len(split.unused_good) == 11


def test_good_per_split_and_too_few_good_images():
    cat = fake_category({"crack": 10}, good=6)
    split = make_split(cat, SplitConfig(good_per_split=(3, 1, 2)))
    assert [sum(f.startswith("train/good") for f in split.files[s]) for s in SPLITS] == [3, 1, 2]
    split = make_split(cat, SplitConfig(good_per_split=(6, 2, 4)))  # wants 12 of 6: shared in proportion
    assert [sum(f.startswith("train/good") for f in split.files[s]) for s in SPLITS] == [3, 1, 2]
    assert split.unused_good == []


def test_seeded_split_is_reproducible_and_the_seed_matters():
    cat = fake_category({"crack": 20, "hole": 20}, good=20)
    a, b = make_split(cat, SplitConfig(seed=3)), make_split(cat, SplitConfig(seed=3))
    c = make_split(cat, SplitConfig(seed=4))
    assert a.files == b.files
    assert a.files != c.files


def test_split_file_round_trips_and_is_reused(tmp_path):
    cat = fake_category({"crack": 5, "hole": 4}, good=5)
    path = tmp_path / "splits" / "fake.json"
    split, created = load_or_make_split(cat, path, SplitConfig(seed=1))
    assert created and not path.exists()  # the caller saves it once the export succeeded
    save_split(split, path)
    assert json.loads(path.read_text())["splits"] == split.files
    assert load_split(path).files == split.files
    again, created = load_or_make_split(cat, path, SplitConfig(seed=1))
    assert not created and again.files == split.files


def test_a_different_config_or_different_images_needs_resplit(tmp_path):
    cat = fake_category({"crack": 5}, good=5)
    path = tmp_path / "fake.json"
    save_split(make_split(cat, SplitConfig()), path)
    with pytest.raises(DatasetError, match=r"fake\.json: existing split was made with .*pass --resplit"):
        load_or_make_split(cat, path, SplitConfig(seed=7))
    other = fake_category({"crack": 6}, good=5)  # a new defect image the split does not know
    with pytest.raises(DatasetError, match=r"fake\.json: split does not match the images"):
        load_or_make_split(other, path, SplitConfig())
    split, created = load_or_make_split(other, path, SplitConfig(seed=7), resplit=True)
    assert created and sum(len(v) for v in split.files.values()) == 6 + 4  # 4,1,1 defects; good 2+1+1


def test_a_corrupt_split_file_is_a_dataset_error(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(DatasetError, match=r"bad\.json: not a valid splits\.json"):
        load_split(path)


def test_benchmark_split_follows_the_dataset_and_shares_its_test_between_val_and_test(tmp_path):
    """--benchmark-split on KolektorSDD2: its train/ is train, its test/ is split into val and test (per class)."""
    import json

    from fixtures.synthetic_other_layouts import make_kolektor2

    from defect_vision.cli.convert import main as convert

    make_kolektor2(tmp_path / "k", counts={"train": (3, 4), "test": (4, 4)}, seed=1)
    splits = tmp_path / "s.json"
    argv = ["--format", "kolektor2", "--category", "KolektorSDD2", "--root", str(tmp_path / "k"), "--out",
            str(tmp_path / "coco"), "--splits", str(splits), "--split", "0.6", "0.5", "0.5", "--no-progress"]
    assert convert([*argv, "--benchmark-split"], fmt="coco") == 0
    got = json.loads(splits.read_text())["splits"]
    assert sorted(got["train"]) == sorted(f"train/{10000 + i}.png" for i in range(7))
    assert all(f.startswith("test/") for f in got["val"] + got["test"]) and len(got["val"] + got["test"]) == 8
    coco = {s: json.loads((tmp_path / "coco" / f"instances_{s}.json").read_text()) for s in SPLITS}
    for s in ("val", "test"):  # 2 of the 4 good and 2 of the 4 defect test images each
        assert sum(im["is_good"] for im in coco[s]["images"]) == 2 and len(coco[s]["images"]) == 4
    assert json.loads(splits.read_text())["config"]["official"] is True
    assert convert(argv, fmt="coco") == 2  # the saved split was made differently: says so instead of mixing
