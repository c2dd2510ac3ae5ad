"""MVTec AD category -> Pascal VOC: Annotations/<name>.xml per image and ImageSets/Main/{train,val,test}.txt."""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: import the project from the repo root, not converters/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from converters import cli
from converters.coco import records_of_split
from converters.splits import SPLITS
from converters.voc import to_voc_xml, voc_stem


def write_voc(job: cli.Job, folder: Path) -> None:
    (folder / "Annotations").mkdir()
    (folder / "ImageSets" / "Main").mkdir(parents=True)
    for split in SPLITS:
        stems = []
        for rec in job.bar(records_of_split(job.cat, job.split, split), f"voc {split}"):
            stems.append(voc_stem(rec))
            (folder / "Annotations" / f"{stems[-1]}.xml").write_text(to_voc_xml(rec, job.cat))
        (folder / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{s}\n" for s in stems))


def main(argv: list[str] | None = None) -> int:
    p = cli.parser("voc", __doc__, "datasets/voc/{category}")
    return cli.run("voc", argv, p, lambda a: [(a.out, write_voc)])


if __name__ == "__main__":
    sys.exit(main())
