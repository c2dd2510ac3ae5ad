"""MVTec AD category -> COCO, YOLO, VOC and SAM prompts at once, from one read and one split:
<out>/coco/<category>, <out>/yolo/<category>, <out>/voc/<category>, <out>/sam/<category>."""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: import the project from the repo root, not converters/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from converters import cli
from converters.mvtec_to_coco import write_coco
from converters.mvtec_to_sam import add_point_args, write_sam
from converters.mvtec_to_voc import write_voc
from converters.mvtec_to_yolo import write_yolo


def targets(a) -> list:
    out = {fmt: a.out / fmt / a.category for fmt in ("coco", "yolo", "voc", "sam")}
    return [
        (out["coco"], lambda job, d: write_coco(job, d, a.rle)),
        (out["yolo"], lambda job, d: write_yolo(job, d, out["yolo"], a.task, a.copy)),
        (out["voc"], write_voc),
        (out["sam"], lambda job, d: write_sam(job, d, a.positive_points, a.negative_points, a.seed)),
    ]


def main(argv: list[str] | None = None) -> int:
    p = cli.parser("all", __doc__, "datasets", out_help="root of the four output folders <out>/<format>/<category>")
    p.add_argument("--rle", action="store_true", help="COCO segmentation as compressed RLE instead of polygons")
    p.add_argument("--task", choices=("detect", "segment"), default="detect", help="YOLO label type")
    p.add_argument("--copy", action="store_true", help="copy the images into the YOLO dataset instead of symlinking")
    add_point_args(p)
    return cli.run("coco+yolo+voc+sam", argv, p, targets)


if __name__ == "__main__":
    sys.exit(main())
