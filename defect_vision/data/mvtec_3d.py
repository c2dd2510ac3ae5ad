"""MVTec 3D-AD, RGB only: <C>/{train,validation}/good/rgb/NNN.png, <C>/test/<defect>/rgb/NNN.png with
<C>/test/<defect>/gt/NNN.png. Mask pixels carry the defect's class id from class_ids.json (255, 254, 253, ...;
0 = background), so any non-zero pixel is defect. The xyz/ point clouds (and test/good/gt/) are not read."""
from __future__ import annotations

from pathlib import Path

from defect_vision.data.images import images_in
from defect_vision.data.records import GOOD
from defect_vision.data.samples import Sample, normalise_label
from defect_vision.errors import DatasetError

LAYOUT = "<C>/test/<defect>/rgb/NNN.png with <C>/test/<defect>/gt/NNN.png"


def looks_like(cat_root: Path) -> bool:
    test = cat_root / "test"
    return test.is_dir() and any((d / "rgb").is_dir() for d in test.iterdir() if d.is_dir())


def samples(source) -> list[Sample]:
    cat_root = source.cat_root.resolve()
    if not cat_root.is_dir():
        raise DatasetError(f"{cat_root}: no such category folder")
    out = [Sample(p, p.relative_to(cat_root).as_posix(), GOOD)
           for d in ("train", "validation") for p in images_in(cat_root / d / GOOD / "rgb")]
    test = cat_root / "test"
    for d in sorted(p for p in test.iterdir() if p.is_dir()) if test.is_dir() else []:
        label = GOOD if d.name == GOOD else normalise_label(d.name)
        out += [Sample(p, p.relative_to(cat_root).as_posix(), label, () if label == GOOD else (d / "gt" / p.name,))
                for p in images_in(d / "rgb")]
    if not out:
        raise DatasetError(f"{cat_root}: no images under test/<defect>/rgb/, train/good/rgb/ or validation/good/rgb/")
    return out
