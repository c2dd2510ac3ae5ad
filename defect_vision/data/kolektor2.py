"""KolektorSDD2: <C>/train/<id>.png and <C>/test/<id>.png, each with its mask <id>_GT.png beside it. A mask pixel
above --mask-threshold (default 0) is defect; an all-zero mask means a good image; every defect gets the class
--defect-name. With --benchmark-split each sample carries its folder (extra={"split": "train" | "test"})."""
from __future__ import annotations

from pathlib import Path

from defect_vision.data.images import images_in, read_mask
from defect_vision.data.records import GOOD
from defect_vision.data.samples import Sample, normalise_label
from defect_vision.errors import DatasetError

LAYOUT = "<C>/{train,test}/<id>.png with <id>_GT.png beside"
SPLITS = ("train", "test")
GT = "_GT"


def looks_like(cat_root: Path) -> bool:
    folders = [cat_root / d for d in SPLITS if (cat_root / d).is_dir()]
    return any(p.name.endswith(f"{GT}.png") for d in folders for p in d.iterdir())


def mask_path_for(image: Path) -> Path:
    return image.with_name(f"{image.stem}{GT}.png")


def samples(source) -> list[Sample]:
    cat_root = Path(source.cat_root)
    if not cat_root.is_dir():
        raise DatasetError(f"{cat_root}: no such folder (the KolektorSDD2 folder)")
    label = normalise_label(source.defect_name)
    out = []
    for split in SPLITS:
        for image in images_in(cat_root / split):
            if image.stem.endswith(GT):
                continue
            mask = mask_path_for(image)
            if not mask.is_file():
                raise DatasetError(f"{mask}: missing mask for image {image} "
                                   "(KolektorSDD2 has an <id>_GT.png for every image)")
            defect = read_mask(mask, source.mask_threshold).any()
            extra = {"split": split} if source.benchmark_split else {}
            name = image.relative_to(cat_root).as_posix()
            out.append(Sample(image, name, label if defect else GOOD, (mask,) if defect else (), extra=extra))
    if not out:
        raise DatasetError(f"{cat_root}: no images in train/ or test/")
    return out
