"""Small synthetic copies of other dataset layouts, with the file names, extensions, mask values and CSV columns
of the real ones, for the reader tests:

- VisA: <C>/Data/Images/{Normal,Anomaly}/*.JPG, <C>/Data/Masks/Anomaly/<stem>.png holding defect-class indices
  (1, 2, ...; not 255), <C>/image_anno.csv (image,label,mask; free-text labels, some comma-separated) and
  <root>/split_csv/1cls.csv (object,split,label,image,mask), both CRLF like the originals;
- KolektorSDD2: <C>/{train,test}/<5-digit id>.png with <id>_GT.png beside (soft-edged: not 0/255 only; all-zero for
  good images);
- free folders (the `folder` layout): masks apart or beside the images, PNG/BMP/JPEG masks, or a manifest.

Every writer returns what it drew: {file name relative to the dataset folder: Drawn}."""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from defect_vision.data.records import GOOD
from defect_vision.data.synthetic import background, draw_defect

# free-text VisA labels (as image_anno.csv writes them) -> the defect drawn for them
VISA_KINDS = {"scratch": "scratch", "chip around edge": "hole", "melt": "stain", "crack": "crack"}
VISA_LABELS = ("scratch", "Chip around edge", "scratch, chip around edge", "melt", "scratch")


@dataclass
class Drawn:
    """One written image: its label as written (free text or folder name; GOOD for good images) and the content of
    its mask file (uint8, as written before any lossy compression; None when it has no mask file)."""

    label: str
    mask: np.ndarray | None = None


def picture(rng: np.random.Generator, shape: tuple[int, int], kinds: list[str]) -> tuple[np.ndarray, list[np.ndarray]]:
    """(RGB uint8 image of `shape`, one bool mask per drawn defect kind)."""
    h, w = shape
    img, region = background(rng, max(h, w), "wood")
    img, region = np.ascontiguousarray(img[:h, :w]), region[:h, :w]
    masks = [draw_defect(rng, img, region, kind, 1.0) for kind in kinds]
    return np.clip(img, 0, 255).astype(np.uint8), masks


def write_image(path: Path, rgb: np.ndarray, mode: str = "rgb") -> None:
    """Write RGB pixels as `mode`: rgb, gray (8 bit) or gray16 (16 bit)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "gray":
        pixels = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    elif mode == "gray16":
        pixels = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.uint16) * 257
    else:
        pixels = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(path), pixels):
        raise OSError(f"{path}: could not be written")


def write_mask(path: Path, mask: np.ndarray, quality: int = 95) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if path.suffix.lower() in (".jpg", ".jpeg") else []
    if not cv2.imwrite(str(path), mask, params):
        raise OSError(f"{path}: could not be written")


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    """A CSV with CRLF line ends (Python's csv default, as VisA's files have), quoting fields that hold commas."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def make_visa(root: Path, category: str = "candle", shape: tuple[int, int] = (60, 80), normal: int = 4,
              labels: tuple[str, ...] = VISA_LABELS, seed: int = 0) -> dict[str, Drawn]:
    """VisA category `category` under root (+ root/split_csv/1cls.csv): `normal` good images (the first half train,
    the rest test in 1cls.csv, one grayscale) and one anomaly per label (test). Mask value k = the k-th defect class
    of the category (VisA's id2class indices), so a two-label image has two values."""
    rng = np.random.default_rng(seed)
    cat = Path(root) / category
    ids = {name: k + 1 for k, name in enumerate(VISA_KINDS)}
    drawn, anno, split = {}, [], []
    for i in range(normal):
        rel = f"Data/Images/Normal/{i:04d}.JPG"
        write_image(cat / rel, picture(rng, shape, [])[0], "gray" if i == 1 else "rgb")
        drawn[rel] = Drawn(GOOD)
        anno.append([f"{category}/{rel}", "normal", ""])
        split.append([category, "train" if i < normal // 2 else "test", "normal", f"{category}/{rel}", ""])
    for i, label in enumerate(labels):
        parts = [p.strip().lower() for p in label.split(",")]
        img, masks = picture(rng, shape, [VISA_KINDS[p] for p in parts])
        rel, mask_rel = f"Data/Images/Anomaly/{i:03d}.JPG", f"Data/Masks/Anomaly/{i:03d}.png"
        values = np.zeros(shape, np.uint8)
        for part, m in zip(parts, masks):
            values[m] = ids[part]
        write_image(cat / rel, img)
        write_mask(cat / mask_rel, values)
        drawn[rel] = Drawn(label, values)
        anno.append([f"{category}/{rel}", label, f"{category}/{mask_rel}"])
        split.append([category, "test", "anomaly", f"{category}/{rel}", f"{category}/{mask_rel}"])
    write_csv(cat / "image_anno.csv", ["image", "label", "mask"], anno)
    other = [["pcb1", "train", "normal", "pcb1/Data/Images/Normal/0000.JPG", ""]]  # the real file lists every object
    write_csv(Path(root) / "split_csv" / "1cls.csv", ["object", "split", "label", "image", "mask"], split + other)
    return drawn


def make_kolektor2(root: Path, category: str = "KolektorSDD2", shape: tuple[int, int] = (96, 40),
                   counts: dict[str, tuple[int, int]] | None = None, seed: int = 0) -> dict[str, Drawn]:
    """KolektorSDD2 under root/category: per split (good, defect) images (default train 2+2, test 2+1), RGB PNGs
    named by 5-digit ids (train 10000.., test 20000..), each with its <id>_GT.png: the defect drawn at 255 and
    blurred, so its edges hold values between 1 and 254; all zero for good images."""
    rng = np.random.default_rng(seed)
    counts = counts or {"train": (2, 2), "test": (2, 1)}
    drawn = {}
    for s, (split, (good, defect)) in enumerate(counts.items()):
        for i in range(good + defect):
            kinds = [] if i < good else [("scratch", "hole", "crack")[i % 3]]
            img, masks = picture(rng, shape, kinds)
            gt = np.zeros(shape, np.uint8)
            for m in masks:
                gt[m] = 255
            gt = cv2.GaussianBlur(gt, (3, 3), 0)
            stem = f"{10000 * (s + 1) + i:05d}"
            write_image(Path(root) / category / split / f"{stem}.png", img)
            write_mask(Path(root) / category / split / f"{stem}_GT.png", gt)
            drawn[f"{split}/{stem}.png"] = Drawn(GOOD if not kinds else "defect", gt)
    return drawn


FOLDER_KINDS = ("apart", "beside", "same_stem", "jpeg", "manifest")


def make_folder(root: Path, kind: str, shape: tuple[int, int] = (48, 64),
                seed: int = 0) -> tuple[list[str], dict[str, Drawn]]:
    """A free-folder dataset under root; returns (the convert options that describe it, what was drawn).

    apart:     data/<class>/<id>.png, masks data/masks/<id>_mask.png (0/255); 8-bit gray and 16-bit images; good
               images in data/ok/ without masks. The glob also matches the masks.
    beside:    parts/<class>/<stem>.png with <stem>_label.bmp beside (0/255); one good image with an all-zero mask,
               one without. The glob matches the masks.
    same_stem: img/<class>/<stem>.tif (one 16-bit) with <stem>.png beside holding 0/1.
    jpeg:      shots/<class>/<stem>.png with <stem>_mask.jpg beside (lossy: needs --mask-threshold).
    manifest:  pics/<class>/<id>.png, masks gt/<id>.png, manifest.csv image,mask,label (a label, an empty label ->
               the folder, an empty mask -> good)."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    drawn: dict[str, Drawn] = {}

    def defect(rel: str, cls: str, kinds: list[str], mask_path: Path, mode: str = "rgb", value: int = 255,
               quality: int = 95) -> None:
        img, masks = picture(rng, shape, kinds)
        mask = np.zeros(shape, np.uint8)
        for m in masks:
            mask[m] = value
        write_image(root / rel, img, mode)
        write_mask(mask_path, mask, quality)
        drawn[rel] = Drawn(cls, mask)

    def good(rel: str, mode: str = "rgb", mask_path: Path | None = None) -> None:
        write_image(root / rel, picture(rng, shape, [])[0], mode)
        if mask_path is not None:
            write_mask(mask_path, np.zeros(shape, np.uint8))
        drawn[rel] = Drawn(GOOD, None if mask_path is None else np.zeros(shape, np.uint8))

    if kind == "apart":
        defect("data/scratch/001.png", "scratch", ["scratch"], root / "data/masks/001_mask.png", "gray")
        defect("data/scratch/002.png", "scratch", ["scratch", "scratch"], root / "data/masks/002_mask.png")
        defect("data/Dent Mark/003.png", "Dent Mark", ["hole"], root / "data/masks/003_mask.png", "gray16")
        good("data/ok/004.png")
        return ["--images", "data/*/*.png", "--masks", "{dir}/../masks/{stem}_mask.png"], drawn
    if kind == "beside":
        defect("parts/crack/a.png", "crack", ["crack"], root / "parts/crack/a_label.bmp")
        defect("parts/stain/b.png", "stain", ["stain"], root / "parts/stain/b_label.bmp")
        good("parts/stain/c.png", mask_path=root / "parts/stain/c_label.bmp")
        good("parts/good/d.png")
        return ["--images", "parts/**/*", "--masks", "{dir}/{stem}_label.bmp"], drawn
    if kind == "same_stem":
        defect("img/hole/p1.tif", "hole", ["hole", "hole"], root / "img/hole/p1.png", "gray16", value=1)
        defect("img/hole/p2.tif", "hole", ["hole"], root / "img/hole/p2.png", value=1)
        good("img/hole/p3.tif")
        return ["--images", "img/*/*", "--masks", "{dir}/{stem}.png"], drawn
    if kind == "jpeg":
        defect("shots/stain/s1.png", "stain", ["stain"], root / "shots/stain/s1_mask.jpg", quality=60)
        defect("shots/stain/s2.png", "stain", ["stain", "hole"], root / "shots/stain/s2_mask.jpg", quality=60)
        good("shots/stain/s3.png")
        return ["--images", "shots/*/*.png", "--masks", "{dir}/{stem}_mask.jpg"], drawn
    if kind == "manifest":
        defect("pics/batch1/m1.png", "Foreign Particle", ["stain"], root / "gt/m1.png")
        defect("pics/scratch/m2.png", "scratch", ["scratch"], root / "gt/m2.png")
        good("pics/batch1/m3.png")
        write_csv(root / "manifest.csv", ["image", "mask", "label"], [
            ["pics/batch1/m1.png", "gt/m1.png", "Foreign Particle"],
            ["pics/scratch/m2.png", "gt/m2.png", ""],
            ["pics/batch1/m3.png", "", ""],
        ])
        return ["--manifest", str(root / "manifest.csv")], drawn
    raise ValueError(f"unknown folder kind {kind!r} (choose from {', '.join(FOLDER_KINDS)})")
