"""MVTec AD category -> COCO instances_{train,val,test}.json (polygons, or RLE with --rle)."""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: import the project from the repo root, not converters/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import json

from converters import cli
from converters.coco import to_coco
from converters.splits import SPLITS


def write_coco(job: cli.Job, folder: Path, rle: bool = False) -> None:
    """instances_<split>.json for each split."""
    for split in SPLITS:
        (folder / f"instances_{split}.json").write_text(json.dumps(to_coco(job.cat, job.split, split, rle)))


def main(argv: list[str] | None = None) -> int:
    p = cli.parser("coco", __doc__, "datasets/coco/{category}")
    p.add_argument("--rle", action="store_true", help="segmentation as compressed RLE instead of polygons")
    return cli.run("coco", argv, p, lambda a: [(a.out, lambda job, d: write_coco(job, d, a.rle))])


if __name__ == "__main__":
    sys.exit(main())
