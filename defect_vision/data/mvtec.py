"""MVTec AD: <C>/train/good/*.png, <C>/test/<defect>/*.png, <C>/ground_truth/<defect>/<stem>_mask.png."""
from __future__ import annotations

from pathlib import Path

from defect_vision.data.images import images_in
from defect_vision.data.records import GOOD, Category
from defect_vision.data.samples import Sample
from defect_vision.errors import DatasetError

LAYOUT = "<C>/test/<defect>/*.png with <C>/ground_truth/<defect>/<stem>_mask.png"


def looks_like(cat_root: Path) -> bool:
    test = cat_root / "test"
    return test.is_dir() and any(images_in(d) for d in test.iterdir() if d.is_dir())


def list_categories(root: Path) -> list[str]:
    """Category folders under root (those with a test/ folder)."""
    if not root.is_dir():
        raise DatasetError(f"{root}: no such folder (the MVTec AD root)")
    return sorted(p.name for p in root.iterdir() if (p / "test").is_dir())


def category_root(root: Path, category: str) -> Path:
    found = list_categories(root)
    if not found:
        raise DatasetError(f"{root}: no MVTec categories found (expected {root}/<category>/test/<defect>/*.png)")
    if category not in found:
        raise DatasetError(f"{root}: unknown category '{category}' (found: {', '.join(found)})")
    return root / category


def mask_path_for(cat_root: Path, defect_type: str, image: Path) -> Path:
    return cat_root / "ground_truth" / defect_type / f"{image.stem}_mask.png"


def iter_image_paths(cat_root: Path):
    """(defect type, image path) for train/good and every test/<type> image."""
    for p in images_in(cat_root / "train" / GOOD):
        yield GOOD, p
    for d in sorted(p for p in (cat_root / "test").iterdir() if p.is_dir()):
        for p in images_in(d):
            yield d.name, p


def samples(source) -> list[Sample]:
    cat_root = category_root(Path(source.root), source.category).resolve()
    out = [Sample(p, p.relative_to(cat_root).as_posix(), t, () if t == GOOD else (mask_path_for(cat_root, t, p),))
           for t, p in iter_image_paths(cat_root)]
    if not out:
        raise DatasetError(f"{cat_root}: no images under test/ or train/good/")
    return out


def read_category(root: Path, category: str, min_area: int = 10, progress: bool = False) -> Category:
    """Read every image of an MVTec AD category; DatasetError on the first bad file."""
    from defect_vision.data.source import DatasetSource, read_dataset

    return read_dataset(DatasetSource(Path(root), category, min_area, "mvtec"), progress)
