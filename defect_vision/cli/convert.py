"""`defect-vision convert`: an MVTec AD-style category -> COCO, YOLO, VOC and SAM prompts from one read and one
split. `converters/mvtec_to_<format>.py` are the same command for one format (its --out is that format's folder)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from defect_vision.cli.common import CategoryPaths, add_force, parser, run_command
from defect_vision.cli.reader_args import add_reader_options, source_of

DESCRIPTIONS = {
    "coco": "MVTec AD category -> COCO instances_{train,val,test}.json (polygons, or RLE with --rle).",
    "yolo": "MVTec AD category -> ultralytics YOLO dataset: images/<split>/ (symlinks, or copies with --copy), "
            "labels/<split>/*.txt (boxes, or polygons with --task segment; empty for good images) and data.yaml.",
    "voc": "MVTec AD category -> Pascal VOC: JPEGImages/ (symlinks, or copies with --copy), Annotations/<stem>.xml "
           "and ImageSets/Main/{train,val,test}.txt, with matching stems.",
    "sam": "MVTec AD category -> SAM prompts_{train,val,test}.json: per instance the box (xyxy), positive points (the "
           "distance-transform maximum, plus --positive-points - 1 sampled ones), --negative-points N sampled in the "
           "box outside the defect, and the mask (RLE). Points are seeded with --seed.",
    None: "MVTec AD category -> COCO, YOLO, VOC and SAM prompts at once, from one read and one split: "
          "<out>/coco/<category>, <out>/yolo/<category>, <out>/voc/<category>, <out>/sam/<category> and "
          "<out>/splits/<category>.json. All of them change together or none does.",
}


def build_parser(prog: str, fmt: str | None = None) -> argparse.ArgumentParser:
    """The options of one format's converter (fmt), or of all formats (None)."""
    from defect_vision.formats import FORMATS  # noqa: I001  (a light module: --help imports no OpenCV)

    p = parser(prog, DESCRIPTIONS[fmt])

    p.add_argument("--category", default=None,
                   help="category folder under --root, e.g. wood (with --format folder, coco, yolo, labelstudio, cvat: "
                        "just the dataset's name, default the --root folder's name)")
    add_reader_options(p)
    out_help = (f"output folder (default: datasets/{fmt}/<category>)" if fmt else
                "root of the output folders <out>/<format>/<category> (default: datasets)")
    p.add_argument("--out", type=Path, default=None, help=out_help)
    if fmt is None:
        p.add_argument("--formats", nargs="+", choices=FORMATS, default=list(FORMATS), help="formats to write")
    p.add_argument("--split", nargs=3, type=float, default=[0.6, 0.2, 0.2], metavar=("TRAIN", "VAL", "TEST"),
                   help="train/val/test ratios of the defect images of each defect type")
    p.add_argument("--seed", type=int, default=0, help="seed of the split (and of sampled points)")
    good = p.add_mutually_exclusive_group()
    good.add_argument("--good-ratio", type=float, default=0.5,
                      help="good images per split = ceil(ratio x defect images in that split)")
    good.add_argument("--good-per-split", nargs=3, type=int, default=None, metavar=("TRAIN", "VAL", "TEST"),
                      help="number of good images per split (overrides --good-ratio)")
    p.add_argument("--splits", type=Path, default=None,
                   help="the split file, written once and reused by every format (default: datasets/splits/<category>.json, "
                        "or <out>/splits/<category>.json for all formats)")
    p.add_argument("--resplit", action="store_true", help="make a new split even if the split file exists")
    if fmt in ("coco", None):
        p.add_argument("--rle", action="store_true", help="COCO segmentation as compressed RLE instead of polygons")
    if fmt in ("yolo", None):
        p.add_argument("--task", choices=("detect", "segment"), default="detect", help="YOLO label type")
    if fmt in ("yolo", "voc", None):
        p.add_argument("--copy", action="store_true", help="copy the images instead of symlinking them")
    if fmt in ("sam", None):
        p.add_argument("--positive-points", type=int, default=1,
                       help="positive points per instance (the first is the distance-transform maximum)")
        p.add_argument("--negative-points", type=int, default=0,
                       help="negative points per instance, sampled in its box outside the defect")
    add_force(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None, prog: str = "defect-vision convert", fmt: str | None = None) -> int:
    p = build_parser(prog, fmt)
    a = p.parse_args(argv)  # before the imports below (OpenCV, numpy): --help and flag errors stay cheap
    from defect_vision.data.splits import SplitConfig
    from defect_vision.formats.export import ConvertConfig, export

    if any(r < 0 for r in a.split) or sum(a.split) <= 0:
        p.error(f"--split: ratios must be >= 0 with a positive sum, got {a.split}")
    if a.good_per_split is not None and any(k < 0 for k in a.good_per_split):
        p.error(f"--good-per-split: counts must be >= 0, got {a.good_per_split}")
    if a.min_area < 1:
        p.error(f"--min-area: must be >= 1, got {a.min_area}")
    if a.layout == "folder" and not (a.images or a.manifest):
        p.error("--format folder: needs --images GLOB (with --masks TEMPLATE) or --manifest CSV")
    if a.layout == "labelstudio" and not a.annotations:
        p.error("--format labelstudio: needs --annotations EXPORT.json (Label Studio's JSON export)")
    if a.category is None:
        from defect_vision.data.source import ROOTED

        if a.layout not in ROOTED and not (a.layout == "auto" and a.annotations):
            p.error("--category: required (the category folder under --root)")
        a.category = a.root.resolve().name
    paths = CategoryPaths(a.category)
    if fmt is None:
        root = a.out or paths.datasets
        outputs = {f: root / f / a.category for f in a.formats}
        splits = a.splits or root / "splits" / f"{a.category}.json"
    else:
        outputs = {fmt: a.out or paths.format_dir(fmt)}
        splits = a.splits or paths.splits
    config = ConvertConfig(
        split=SplitConfig(tuple(a.split), a.seed, a.good_ratio,
                          tuple(a.good_per_split) if a.good_per_split is not None else None, a.benchmark_split),
        splits_path=splits, resplit=a.resplit, rle=getattr(a, "rle", False), task=getattr(a, "task", "detect"),
        copy=getattr(a, "copy", False), positive_points=getattr(a, "positive_points", 1),
        negative_points=getattr(a, "negative_points", 0), force=a.force, progress=not a.no_progress)

    def body() -> None:
        result = export(source_of(a), outputs, config)
        print(result.summary(fmt or "+".join(a.formats)))
        for w in result.warnings:
            print(f"warning: {w}", file=sys.stderr)

    return run_command(body, next(iter(outputs.values())))
