"""The classifier's data: the pipeline's own split (the COCO export's instances_{train,val,test}.json), one label
per image, images decoded and resized once, augmented per epoch.

An image's label is its type as the evaluation counts it (evaluation/image_types.py `true_type`): the image entry's
`defect_type` (the converters write it; MVTec's `combined` is a type of its own), else the most frequent class of its
annotations (ties: the lowest category id), `good` when it has none. `good` is a class: the reports classified good +
defect types, and the pipeline's image-level accuracy counts good images too. Classes are good, then the categories
in id order, then any other type found; a class seen in val or test but in no train image is an error."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms import v2

from defect_vision.coco import CocoDataset, load_coco
from defect_vision.data.images import read_image
from defect_vision.detections import Detections, ImageInfo
from defect_vision.errors import DatasetError
from defect_vision.models.classifier import IMAGENET_MEAN, IMAGENET_STD

GOOD = "good"
SPLITS = ("train", "val", "test")


def image_type(image: ImageInfo, truth: Detections) -> str:
    """The image's type (see the module docstring)."""
    declared = image.extra.get("defect_type")
    if isinstance(declared, str) and declared:
        return declared
    if not len(truth):
        return GOOD
    counts = Counter(zip(truth.category_id.tolist(), truth.names))
    most = max(counts.values())
    return min(key for key, n in counts.items() if n == most)[1]


@dataclass(frozen=True)
class Split:
    """One split's images (absolute paths, COCO file names) and their class indices."""

    paths: tuple[Path, ...]
    file_names: tuple[str, ...]
    targets: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.paths)


@dataclass(frozen=True)
class ClassifierData:
    classes: tuple[str, ...]
    splits: dict[str, Split]
    files: dict[str, Path]  # split -> its instances json

    def counts(self, split: str) -> np.ndarray:
        """Images per class in `split`, in class order."""
        return np.bincount(np.asarray(self.splits[split].targets, int), minlength=len(self.classes))


def read_classifier_data(coco_dir: Path) -> ClassifierData:
    """The three splits of a COCO export folder, labelled; DatasetError naming the file for a missing folder or
    split, fewer than two classes, or a class with no train image."""
    coco_dir = Path(coco_dir)
    if not coco_dir.is_dir():
        raise DatasetError(f"{coco_dir}: no such COCO export folder (expected instances_train.json, "
                           "instances_val.json, instances_test.json; run `defect-vision convert` first)")
    files = {s: coco_dir / f"instances_{s}.json" for s in SPLITS}
    datasets: dict[str, CocoDataset] = {s: load_coco(f, masks=False) for s, f in files.items()}
    labels = {s: [image_type(im, ds.detections[im.id]) for im in ds.images] for s, ds in datasets.items()}
    seen = {t for ts in labels.values() for t in ts}
    names = [GOOD] + [n for n in datasets["train"].class_names if n != GOOD]
    classes = [n for n in names if n in seen] + sorted(seen - set(names))
    train = set(labels["train"])
    for s in ("val", "test"):
        missing = [c for c in classes if c not in train and c in labels[s]]
        if missing:
            raise DatasetError(f"{files['train']}: class {missing[0]!r} has no train image (it has "
                               f"{labels[s].count(missing[0])} in {files[s].name}); the classifier cannot learn it")
    if len(classes) < 2:
        raise DatasetError(f"{files['train']}: one image type only ({', '.join(classes) or 'no images'}); "
                           "a classifier needs two or more")
    index = {c: i for i, c in enumerate(classes)}
    splits = {}
    for s, ds in datasets.items():
        root = ds.image_root or files[s].parent
        paths = tuple(im.path or root / im.file_name for im in ds.images)
        splits[s] = Split(paths, tuple(im.file_name for im in ds.images), tuple(index[t] for t in labels[s]))
    return ClassifierData(tuple(classes), splits, files)


def load_images(split: Split, imgsz: int, progress: bool = False) -> torch.Tensor:
    """(N, 3, imgsz, imgsz) uint8: every image decoded once (grayscale -> 3 channels) and resized (area)."""
    import cv2
    from tqdm import tqdm

    out = torch.empty((len(split), 3, imgsz, imgsz), dtype=torch.uint8)
    for i, path in enumerate(tqdm(split.paths, desc="images", unit="img", disable=not progress or None, leave=False)):
        img = cv2.resize(read_image(path), (imgsz, imgsz), interpolation=cv2.INTER_AREA)
        out[i] = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))
    return out


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float, ImageNet mean/std (the reports' transforms.Normalize)."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255 - mean) / std


class AugmentedImages(torch.utils.data.Dataset):
    """Train images with the reports' augmentation (random rotation, colour jitter), drawn from torch's RNG."""

    def __init__(self, images: torch.Tensor, targets: tuple[int, ...], rotation: float, jitter: float):
        self.images, self.targets = images, torch.as_tensor(targets, dtype=torch.long)
        steps = ([v2.RandomRotation(rotation)] if rotation else []) + (
            [v2.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter)] if jitter else [])
        self.augment = v2.Compose(steps) if steps else None

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = self.images[i]
        return (self.augment(img) if self.augment else img), self.targets[i]
