"""MVTec AD 2: <C>/{train,validation}/good/*.png, <C>/test_public/{good,bad}/*.png with
<C>/test_public/ground_truth/bad/<stem>_mask.png (0/255); test_private/ and test_private_mixed/ hold images without
ground truth (read as unlabelled, for prediction only). No defect-type names: every defect is --defect-name."""
from __future__ import annotations

from pathlib import Path

from defect_vision.data.images import images_in
from defect_vision.data.records import GOOD
from defect_vision.data.samples import Sample, normalise_label
from defect_vision.errors import DatasetError

LAYOUT = "<C>/test_public/{good,bad}/*.png with <C>/test_public/ground_truth/bad/<stem>_mask.png"
UNKNOWN = "unknown"  # the label of an image without ground truth
PRIVATE = ("test_private", "test_private_mixed")


def looks_like(cat_root: Path) -> bool:
    return any((cat_root / d).is_dir() for d in ("test_public", *PRIVATE))


def mask_path_for(cat_root: Path, image: Path) -> Path:
    return cat_root / "test_public" / "ground_truth" / "bad" / f"{image.stem}_mask.png"


def samples(source) -> list[Sample]:
    cat_root = source.cat_root.resolve()
    if not cat_root.is_dir():
        raise DatasetError(f"{cat_root}: no such category folder")
    defect = normalise_label(source.defect_name)
    if not defect or defect == GOOD:
        raise DatasetError(f"--defect-name {source.defect_name!r}: needs a class name other than '{GOOD}'")

    def sample(p: Path, label: str, masks: tuple[Path, ...] = (), labelled: bool = True) -> Sample:
        return Sample(p, p.relative_to(cat_root).as_posix(), label, masks, labelled)

    out = [sample(p, GOOD) for d in ("train", "validation", "test_public") for p in images_in(cat_root / d / GOOD)]
    out += [sample(p, defect, (mask_path_for(cat_root, p),)) for p in images_in(cat_root / "test_public" / "bad")]
    out += [sample(p, UNKNOWN, labelled=False) for d in PRIVATE for p in images_in(cat_root / d)]
    if not out:
        raise DatasetError(f"{cat_root}: no images under train/good/, validation/good/, test_public/{{good,bad}}/ "
                           f"or {'/, '.join(PRIVATE)}/")
    return out
