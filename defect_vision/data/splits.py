"""A seeded split of a category, stratified per defect type, with good images spread as negatives.

Written once to splits.json; every exporter reads the same file, so COCO, YOLO, VOC and SAM agree.
"""
from __future__ import annotations

import json
import math
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

from defect_vision.data.records import GOOD, Category
from defect_vision.errors import DatasetError
from defect_vision.io import atomic_write_text, complete_pending

SPLITS = ("train", "val", "test")


@dataclass
class SplitConfig:
    ratios: tuple[float, float, float] = (0.6, 0.2, 0.2)
    seed: int = 0
    good_ratio: float = 0.5  # good images per split = ceil(good_ratio * defect images in that split)
    good_per_split: tuple[int, int, int] | None = None  # overrides good_ratio when given
    official: bool = False  # the dataset's own train/test (VisA's split_csv, KolektorSDD2's folders): its train
    # images go to train (all of them), its test images to val and test by the val:test ratio, per defect type;
    # a dataset with its own val too (Roboflow's valid/, a YOLO data.yaml's val) keeps all three as they are


@dataclass
class Split:
    category: str
    config: SplitConfig
    files: dict[str, list[str]] = field(default_factory=dict)  # split -> file_names (sorted)
    unused_good: list[str] = field(default_factory=list)

    def split_of(self) -> dict[str, str]:
        return {f: s for s, names in self.files.items() for f in names}


def _counts(n: int, ratios: tuple[float, float, float]) -> list[int]:
    """Largest-remainder allocation; with n >= number of non-zero ratios every such split gets one."""
    raw = [n * r / sum(ratios) for r in ratios]
    counts = [math.floor(x) for x in raw]
    # ties go to the later split: with 2 images of a type, train and test (not val) get one
    for i in sorted(range(3), key=lambda i: (raw[i] - counts[i], i), reverse=True)[: n - sum(counts)]:
        counts[i] += 1
    wanted = [i for i in range(3) if ratios[i] > 0]
    if n >= len(wanted):
        for i in wanted:
            if counts[i] == 0:
                counts[max(range(3), key=lambda j: counts[j])] -= 1
                counts[i] += 1
    return counts


def official_split(cat: Category, config: SplitConfig) -> Split:
    """The dataset's own split (each record's `split_hint`): train/val/test kept as they are; a dataset with only one
    held-out part (VisA, KolektorSDD2: test; a YOLO or Roboflow export without test: val) has it shared between val
    and test by the ratios."""
    rng = random.Random(config.seed)
    files: dict[str, list[str]] = {s: [] for s in SPLITS}
    missing = [r.file_name for r in cat.images if r.split_hint not in SPLITS]
    if missing:
        raise DatasetError(f"{cat.root}: no official train/test split for {missing[0]} (and {len(missing) - 1} more); "
                           "this layout has none, or drop --benchmark-split")
    hints = {r.split_hint for r in cat.images}
    if {"val", "test"} <= hints:
        for r in cat.images:
            files[r.split_hint].append(r.file_name)
        return Split(cat.name, config, {s: sorted(v) for s, v in files.items()}, [])
    held = "test" if "test" in hints else "val"
    val_test = (0.0, config.ratios[1], config.ratios[2]) if config.ratios[1] + config.ratios[2] > 0 else (0, 0, 1.0)
    for label in [*cat.defect_types, GOOD]:
        recs = [r for r in cat.images if r.defect_type == label]
        files["train"] += [r.file_name for r in recs if r.split_hint == "train"]
        test = sorted(r.file_name for r in recs if r.split_hint == held)
        rng.shuffle(test)
        _, n_val, n_test = _counts(len(test), val_test)
        files["val"] += test[:n_val]
        files["test"] += test[n_val : n_val + n_test]
    return Split(cat.name, config, {s: sorted(v) for s, v in files.items()}, [])


def make_split(cat: Category, config: SplitConfig) -> Split:
    if config.official:
        return official_split(cat, config)
    rng = random.Random(config.seed)
    files: dict[str, list[str]] = {s: [] for s in SPLITS}
    for defect in cat.defect_types:
        names = sorted(r.file_name for r in cat.images if r.defect_type == defect)
        rng.shuffle(names)
        start = 0
        for s, k in zip(SPLITS, _counts(len(names), config.ratios)):
            files[s] += names[start : start + k]
            start += k
    good = sorted(r.file_name for r in cat.images if r.is_good)
    rng.shuffle(good)
    if config.good_per_split is not None:
        want = list(config.good_per_split)
    else:
        want = [math.ceil(config.good_ratio * len(files[s])) for s in SPLITS]
    if sum(want) > len(good):  # too few good images: share them in proportion
        want = _counts(len(good), tuple(float(k) for k in want)) if sum(want) else [0, 0, 0]
    start = 0
    for s, k in zip(SPLITS, want):
        files[s] += good[start : start + k]
        start += k
    return Split(cat.name, config, {s: sorted(v) for s, v in files.items()}, sorted(good[start:]))


def split_warnings(cat: Category, split: Split) -> list[str]:
    """One line per split that has a non-zero ratio but no defect image (too few defect images to share): training
    selects its best epoch on val, evaluation measures test. The official split's train (VisA: good images only by
    design) is not checked."""
    ratios = split.config.ratios if not split.config.official else (0.0, *split.config.ratios[1:])
    of = split.split_of()
    defects = [r for r in cat.images if not r.is_good]
    counts = {s: sum(of.get(r.file_name) == s for r in defects) for s in SPLITS}
    return [f"{cat.root}: the {s} split has no defect image ({len(defects)} defect images in all, too few for "
            f"ratios {'/'.join(f'{r:g}' for r in split.config.ratios)}): training or evaluation on it measures "
            f"nothing (add defect images, or set its ratio to 0)"
            for s, ratio in zip(SPLITS, ratios) if ratio > 0 and counts[s] == 0]


def split_json(split: Split) -> str:
    """The text of a splits.json."""
    data = {"category": split.category, "config": asdict(split.config), "splits": split.files, "unused_good": split.unused_good}
    return json.dumps(data, indent=1)


def save_split(split: Split, path: Path) -> None:
    atomic_write_text(path, split_json(split))


def load_split(path: Path) -> Split:
    complete_pending(path)  # an export's commit in progress: never a split of another moment
    try:
        data = json.loads(Path(path).read_text())
        cfg = data["config"]
        config = SplitConfig(
            tuple(cfg["ratios"]), int(cfg["seed"]), float(cfg["good_ratio"]),
            tuple(cfg["good_per_split"]) if cfg.get("good_per_split") is not None else None,
            bool(cfg.get("official", False)),
        )
        return Split(data["category"], config, {s: list(data["splits"][s]) for s in SPLITS}, list(data.get("unused_good", [])))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f"{path}: not a valid splits.json ({exc.__class__.__name__}: {exc})") from None


def load_or_make_split(cat: Category, path: Path, config: SplitConfig, resplit: bool = False) -> tuple[Split, bool]:
    """The category's split: read from path when it exists (and fits the data), else made. Returns (split, created);
    what it cannot give is in split_warnings(cat, split)."""
    path = Path(path)
    if path.exists() and not resplit:
        split = load_split(path)
        if split.config != config:
            raise DatasetError(
                f"{path}: existing split was made with {asdict(split.config)}, not {asdict(config)}; "
                "pass --resplit to replace it (every format must then be exported again)"
            )
        known = {r.file_name for r in cat.images}
        listed = set(split.split_of()) | set(split.unused_good)
        defects = {r.file_name for r in cat.images if not r.is_good}
        if not listed <= known or not defects <= set(split.split_of()):
            raise DatasetError(f"{path}: split does not match the images of {cat.root}; pass --resplit to replace it")
        return split, False
    split = make_split(cat, config)
    return split, True
