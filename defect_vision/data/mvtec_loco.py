"""MVTec LOCO AD: <C>/{train,validation}/good/NNN.png, <C>/test/{good,logical_anomalies,structural_anomalies}/NNN.png,
and per defect image a folder <C>/ground_truth/<type>/NNN/ of masks (000.png, 001.png, ...) whose union is the
defect. Mask pixels carry the defect's grey value from defects_config.json (255, 254, ...; 0 = background)."""
from __future__ import annotations

from pathlib import Path

from defect_vision.data.images import images_in
from defect_vision.data.records import GOOD
from defect_vision.data.samples import Sample, normalise_label
from defect_vision.errors import DatasetError

LAYOUT = "<C>/test/<type>/NNN.png with mask folders <C>/ground_truth/<type>/NNN/000.png, 001.png, ..."


def looks_like(cat_root: Path) -> bool:
    """test/logical_anomalies/ or test/structural_anomalies/, or a ground_truth/<type>/ holding folders (one per
    image) where MVTec AD's holds mask files."""
    test, gt = cat_root / "test", cat_root / "ground_truth"
    if not test.is_dir():
        return False
    if (test / "logical_anomalies").is_dir() or (test / "structural_anomalies").is_dir():
        return True
    return gt.is_dir() and any(p.is_dir() for t in gt.iterdir() if t.is_dir() for p in t.iterdir())


def mask_paths_for(cat_root: Path, defect_type: str, image: Path) -> tuple[Path, ...]:
    """The mask files of a defect image; a missing or empty folder gives its first expected file (000.png), so the
    error names it."""
    folder = cat_root / "ground_truth" / defect_type / image.stem
    return tuple(images_in(folder)) or (folder / "000.png",)


def samples(source) -> list[Sample]:
    cat_root = source.cat_root.resolve()
    if not cat_root.is_dir():
        raise DatasetError(f"{cat_root}: no such category folder")
    out = [Sample(p, p.relative_to(cat_root).as_posix(), GOOD)
           for d in ("train", "validation") for p in images_in(cat_root / d / GOOD)]
    test = cat_root / "test"
    for d in sorted(p for p in test.iterdir() if p.is_dir()) if test.is_dir() else []:
        label = GOOD if d.name == GOOD else normalise_label(d.name)
        out += [Sample(p, p.relative_to(cat_root).as_posix(), label,
                       () if label == GOOD else mask_paths_for(cat_root, d.name, p)) for p in images_in(d)]
    if not out:
        raise DatasetError(f"{cat_root}: no images under test/<type>/, train/good/ or validation/good/")
    return out
