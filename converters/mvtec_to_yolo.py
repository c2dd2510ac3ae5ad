"""MVTec AD category -> ultralytics YOLO dataset: images/<split>/ (symlinks, or copies with --copy),
labels/<split>/*.txt (boxes, or polygons with --task segment; empty for good images) and data.yaml."""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: import the project from the repo root, not converters/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import os
import shutil

from converters import cli
from converters.coco import records_of_split
from converters.splits import SPLITS
from converters.yolo import data_yaml, flat_name, label_text


def write_yolo(job: cli.Job, folder: Path, final: Path, task: str = "detect", copy: bool = False) -> None:
    """images/, labels/ and data.yaml (whose `path` is the final folder) into folder."""
    for split in SPLITS:
        (folder / "images" / split).mkdir(parents=True)
        (folder / "labels" / split).mkdir(parents=True)
        for rec in job.bar(records_of_split(job.cat, job.split, split), f"yolo {split}"):
            name = flat_name(rec)
            image = folder / "images" / split / name
            if copy:
                shutil.copyfile(rec.path, image)
            else:
                os.symlink(rec.path, image)
            (folder / "labels" / split / f"{Path(name).stem}.txt").write_text(label_text(rec, job.cat, task))
    (folder / "data.yaml").write_text(data_yaml(final, job.cat))


def main(argv: list[str] | None = None) -> int:
    p = cli.parser("yolo", __doc__, "datasets/yolo/{category}")
    p.add_argument("--task", choices=("detect", "segment"), default="detect", help="label type")
    p.add_argument("--copy", action="store_true", help="copy the images instead of symlinking them")
    return cli.run("yolo", argv, p, lambda a: [(a.out, lambda job, d: write_yolo(job, d, a.out, a.task, a.copy))])


if __name__ == "__main__":
    sys.exit(main())
