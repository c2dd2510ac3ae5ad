"""MVTec AD category -> SAM prompts_{train,val,test}.json: per instance the box (xyxy), positive points
(the distance-transform maximum, plus --positive-points - 1 sampled ones), --negative-points N sampled in
the box outside the defect, and the mask (RLE). Points are seeded with --seed."""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: import the project from the repo root, not converters/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import json

from converters import cli
from converters.sam_prompts import to_sam_prompts
from converters.splits import SPLITS


def write_sam(job: cli.Job, folder: Path, positive_points: int = 1, negative_points: int = 0, seed: int = 0) -> None:
    for split in SPLITS:
        data = to_sam_prompts(job.cat, job.split, split, positive_points, negative_points, seed)
        (folder / f"prompts_{split}.json").write_text(json.dumps(data))


def add_point_args(p) -> None:
    p.add_argument("--positive-points", type=int, default=1,
                   help="positive points per instance (the first is the distance-transform maximum)")
    p.add_argument("--negative-points", type=int, default=0,
                   help="negative points per instance, sampled in its box outside the defect")


def main(argv: list[str] | None = None) -> int:
    p = cli.parser("sam", __doc__, "datasets/sam/{category}")
    add_point_args(p)
    return cli.run("sam", argv, p, lambda a: [
        (a.out, lambda job, d: write_sam(job, d, a.positive_points, a.negative_points, a.seed))])


if __name__ == "__main__":
    sys.exit(main())
