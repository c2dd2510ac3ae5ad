"""One export: a category read once, its split loaded or made, and every asked-for format written from them.

All formats and the split file are one commit (defect_vision.io.Commit): each is written to a temporary path
beside its target, and they replace the old ones together, so COCO, YOLO, VOC and SAM never disagree on which
image is in which split."""
from __future__ import annotations

import importlib
import os
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from defect_vision.data.records import Category
from defect_vision.data.source import ROOTED, DatasetSource, read_dataset, resolve
from defect_vision.data.splits import (
    SPLITS,
    Split,
    SplitConfig,
    load_or_make_split,
    split_json,
    split_warnings,
)
from defect_vision.errors import DatasetError
from defect_vision.formats import FORMATS
from defect_vision.io import Commit, check_output_dir, recover

T = TypeVar("T")




@dataclass
class ConvertConfig:
    """How the formats are written (each format reads only its own fields)."""

    split: SplitConfig = field(default_factory=SplitConfig)
    splits_path: Path | None = None  # default: datasets/splits/<category>.json
    resplit: bool = False
    rle: bool = False  # COCO segmentation as RLE instead of polygons
    task: str = "detect"  # YOLO labels: detect (boxes) | segment (polygons)
    copy: bool = False  # YOLO/VOC images copied instead of symlinked
    positive_points: int = 1  # SAM prompts
    negative_points: int = 0
    force: bool = False  # replace output folders that are not previous exports
    progress: bool = True


@dataclass
class Job:
    """A category read from disk and the split every format uses."""

    cat: Category
    split: Split
    progress: bool = True

    def bar(self, items: Sequence[T], desc: str) -> Iterable[T]:
        """The items, with a progress bar when progress is on (tqdm is imported only then)."""
        if not self.progress:
            return items
        from tqdm import tqdm

        return tqdm(items, desc=desc, unit="img", leave=False)


@dataclass
class ExportResult:
    job: Job
    outputs: dict[str, Path]  # format -> folder
    split_path: Path
    split_created: bool
    seconds: float
    warnings: list[str] = field(default_factory=list)  # what the split cannot give (splits.split_warnings)

    def summary(self, label: str | None = None) -> str:
        """`coco toy_wood: 38 images (train 25, val 6, test 7), 39 instances (crack 9, ...), 0 specks dropped, 0.4 s`."""
        job = self.job
        in_split = job.split.split_of()
        recs = [r for r in job.cat.images if r.file_name in in_split]
        per_split = ", ".join(f"{s} {len(job.split.files[s])}" for s in SPLITS)
        counts = Counter(inst.category for r in recs for inst in r.instances)
        per_class = ", ".join(f"{name} {counts[name]}" for name in job.cat.defect_types)
        specks = sum(r.dropped_specks for r in job.cat.images)
        label = label or "+".join(self.outputs)
        return (f"{label} {job.cat.name}: {len(recs)} images ({per_split}), {sum(counts.values())} instances "
                f"({per_class}), {specks} specks dropped, {self.seconds:.1f} s")


WRITERS = {"coco": ("coco", "write_coco"), "yolo": ("yolo", "write_yolo"), "voc": ("voc", "write_voc"),
           "sam": ("sam_prompts", "write_sam")}  # format -> (module of defect_vision.formats, function)


def _writer(fmt: str):
    """The write function of one format; only its module is imported."""
    module, name = WRITERS[fmt]
    return getattr(importlib.import_module(f"defect_vision.formats.{module}"), name)


def export(source: DatasetSource, outputs: dict[str, Path], config: ConvertConfig | None = None) -> ExportResult:
    """Read the category, load or make its split, write each format into outputs[fmt] (one commit)."""
    config = config or ConvertConfig()
    unknown = sorted(set(outputs) - set(FORMATS))
    if unknown:
        raise DatasetError(f"unknown format(s) {', '.join(unknown)} (choose from {', '.join(FORMATS)})")
    start = time.perf_counter()
    splits_path = Path(config.splits_path or Path("datasets/splits") / f"{source.category}.json")
    journal = splits_path.parent / f".{source.category}.commit.json"
    recover(journal)  # an export killed in the middle of its commit is completed first
    source = resolve(source)  # `auto` decided once: the guard below depends on the layout
    cat = read_dataset(source, progress=config.progress)
    split, created = load_or_make_split(cat, splits_path, config.split, config.resplit)
    inputs = [*([] if source.format in ROOTED else [source.cat_root]), *input_folders(cat), *input_files(source)]
    for fmt, out in outputs.items():
        check_output_dir(out, f"convert-{fmt}", inputs=inputs, force=config.force)
    job = Job(cat, split, config.progress)
    new_parents = {p for out in [*outputs.values(), splits_path] for p in Path(out).absolute().parents if not p.exists()}
    try:
        with Commit(journal) as commit:
            for fmt, out in outputs.items():
                _writer(fmt)(job, commit.folder(out, f"convert-{fmt}", inputs, config.force), Path(out), config)
            if created:
                commit.file(splits_path).write_text(split_json(split))
    except BaseException:
        for p in sorted(new_parents, key=lambda p: len(p.parts), reverse=True):  # the folders we made, if empty
            if p.is_dir() and not any(p.iterdir()):
                p.rmdir()
        raise
    return ExportResult(job, dict(outputs), splits_path, created, time.perf_counter() - start,
                        split_warnings(cat, split))


def input_folders(cat: Category) -> list[Path]:
    """The folders holding a dataset's images and masks (what no output folder may hold or lie inside), and for
    images and masks that are symlinks also the folders of their targets."""
    recs = [*cat.images, *cat.unlabelled]
    files = [str(r.path) for r in recs] + [str(r.mask_path) for r in recs if r.mask_path is not None]
    folders = {os.path.dirname(f) for f in files} | {os.path.dirname(os.path.realpath(f)) for f in files
                                                      if os.path.islink(f)}  # str, not Path: once per image
    return sorted(Path(f) for f in folders)


def input_files(source: DatasetSource) -> list[Path]:
    """The files a (resolved) source reads besides its images and masks: the manifest, the names YAML, VisA's
    benchmark split, a labelling tool's annotation file."""
    files = [source.manifest, source.names, source.annotations]
    if source.format == "visa" and source.benchmark_split:
        from defect_vision.data.visa import BENCHMARK

        files.append(Path(source.root) / BENCHMARK)
    return [Path(f) for f in files if f is not None]


def convert(source: DatasetSource, out: Path = Path("datasets"), formats: Sequence[str] = FORMATS,
            config: ConvertConfig | None = None) -> ExportResult:
    """Every format in `formats` under <out>/<format>/<category>; the split file at config.splits_path, default
    <out>/splits/<category>.json."""
    config = config or ConvertConfig()
    out = Path(out)
    if config.splits_path is None:
        config = ConvertConfig(**{**config.__dict__, "splits_path": out / "splits" / f"{source.category}.json"})
    return export(source, {fmt: out / fmt / source.category for fmt in formats}, config)
