"""A deterministic synthetic category in MVTec AD's exact layout, for tests and the built-in demo.

Textured backgrounds (wood grain, or a capsule on a plain ground) with defects drawn as scratches,
holes, stains and cracks, their masks in ground_truth/, a few grayscale images, and good images.
`contrast` < 1 makes defects subtle (the default is not trivially detectable); 1.0 makes them obvious.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

DEFECTS = ("crack", "hole", "scratch", "stain")


def _smooth_noise(rng: np.random.Generator, h: int, w: int, scale: float) -> np.ndarray:
    small = rng.standard_normal((max(2, int(h / scale)), max(2, int(w / scale)))).astype(np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def background(rng: np.random.Generator, size: int, style: str) -> tuple[np.ndarray, np.ndarray]:
    """(RGB float image, region where defects may go)."""
    h = w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if style == "wood":
        warp = 6 * _smooth_noise(rng, h, w, size / 4)
        period = rng.uniform(size / 18, size / 10)
        grain = np.sin(2 * np.pi * (yy + warp + 3 * np.sin(xx / rng.uniform(20, 60))) / period)
        base = np.array([165, 115, 65], np.float32) * rng.uniform(0.9, 1.1)
        img = base * (1 + 0.10 * grain[..., None] + 0.05 * _smooth_noise(rng, h, w, 3)[..., None])
        region = np.ones((h, w), bool)
    else:  # capsule: a rounded bar on a light ground
        img = np.full((h, w, 3), 215, np.float32) + 3 * _smooth_noise(rng, h, w, 2)[..., None]
        region = np.zeros((h, w), np.uint8)
        r = size // 7
        cv2.rectangle(region, (size // 6 + r, size // 2 - r), (5 * size // 6 - r, size // 2 + r), 1, -1)
        cv2.circle(region, (size // 6 + r, size // 2), r, 1, -1)
        cv2.circle(region, (5 * size // 6 - r, size // 2), r, 1, -1)
        region = region.astype(bool)
        shade = 1 - 0.25 * np.abs(yy - size / 2) / r
        colour = np.array([170, 40, 40], np.float32) if rng.random() < 0.5 else np.array([60, 60, 170], np.float32)
        img[region] = (colour * shade[..., None])[region]
        region = cv2.erode(region.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
    return img, region


def _random_point(rng: np.random.Generator, region: np.ndarray, margin: int) -> tuple[int, int]:
    ys, xs = np.nonzero(region[margin:-margin, margin:-margin])
    i = rng.integers(len(xs))
    return int(xs[i] + margin), int(ys[i] + margin)


def draw_defect(rng: np.random.Generator, img: np.ndarray, region: np.ndarray, kind: str, contrast: float) -> np.ndarray:
    """Draw one defect of `kind` onto img in place; return its mask (bool)."""
    size = img.shape[0]
    mask = np.zeros(img.shape[:2], np.uint8)
    x, y = _random_point(rng, region, max(8, size // 8))
    if kind == "hole":
        r = int(rng.uniform(0.025, 0.06) * size)
        cv2.ellipse(mask, (x, y), (r, int(r * rng.uniform(0.7, 1.0))), float(rng.uniform(0, 180)), 0, 360, 1, -1)
        tint = np.array([-120, -100, -80], np.float32)
    elif kind == "stain":
        for _ in range(int(rng.integers(3, 6))):
            cv2.circle(mask, (x + int(rng.normal(0, size / 40)), y + int(rng.normal(0, size / 40))), int(rng.uniform(0.02, 0.05) * size), 1, -1)
        tint = np.array([-40, -10, 50], np.float32)
    else:  # scratch: a smooth curve; crack: a jagged random walk
        n, pts = 6, [(x, y)]
        angle = rng.uniform(0, 2 * np.pi)
        step = size * rng.uniform(0.03, 0.06)
        for _ in range(n):
            angle += rng.normal(0, 0.15 if kind == "scratch" else 0.7)
            pts.append((int(pts[-1][0] + step * np.cos(angle)), int(pts[-1][1] + step * np.sin(angle))))
        thick = max(2, size // 128) if kind == "scratch" else max(2, size // 100)
        cv2.polylines(mask, [np.array(pts, np.int32)], False, 1, thick)
        tint = np.array([70, 70, 70], np.float32) if kind == "scratch" else np.array([-90, -90, -90], np.float32)
    m = mask.astype(bool) & region
    img[m] = np.clip(img[m] + contrast * tint, 0, 255)
    return m


def make_category(out_root: Path, category: str = "toy_wood", style: str = "wood", size: int = 256,
                  defects: tuple[str, ...] = DEFECTS, per_defect: int = 6, good_test: int = 4, good_train: int = 8,
                  combined: int = 2, contrast: float = 0.6, gray_every: int = 7, seed: int = 0) -> Path:
    """Write a category in MVTec layout under out_root/category and return its path."""
    rng = np.random.default_rng(seed)
    root = Path(out_root) / category
    counter = 0

    def save(folder: Path, stem: str, img: np.ndarray) -> None:
        nonlocal counter
        folder.mkdir(parents=True, exist_ok=True)
        counter += 1
        img = np.clip(img + rng.normal(0, 2, img.shape), 0, 255).astype(np.uint8)
        if gray_every and counter % gray_every == 0:
            cv2.imwrite(str(folder / f"{stem}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2GRAY))
        else:
            cv2.imwrite(str(folder / f"{stem}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))

    for split, n in (("train", good_train), ("test", good_test)):
        for i in range(n):
            save(root / split / "good", f"{i:03d}", background(rng, size, style)[0])
    types = [(d, (d,)) for d in defects] + ([("combined", defects)] if combined else [])
    for name, kinds in types:
        for i in range(per_defect if name != "combined" else combined):
            img, region = background(rng, size, style)
            mask = np.zeros((size, size), bool)
            picks = rng.choice(kinds, size=2, replace=False) if name == "combined" else [kinds[0]] * (1 + int(rng.random() < 0.3))
            for kind in picks:
                mask |= draw_defect(rng, img, region, str(kind), contrast)
            save(root / "test" / name, f"{i:03d}", img)
            (root / "ground_truth" / name).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / "ground_truth" / name / f"{i:03d}_mask.png"), mask.astype(np.uint8) * 255)
    return root


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Write a synthetic category in MVTec AD layout (for tests and the demo).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("datasets/synthetic"), help="root folder")
    p.add_argument("--category", default="toy_wood", help="category folder name")
    p.add_argument("--style", choices=("wood", "capsule"), default="wood", help="background: wood grain or a capsule")
    p.add_argument("--size", type=int, default=256, help="image side in pixels")
    p.add_argument("--per-defect", type=int, default=6, help="images per defect type")
    p.add_argument("--contrast", type=float, default=0.6, help="defect contrast, 1.0 = obvious")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same images)")
    a = p.parse_args(argv)
    if a.size < 64 or a.per_defect < 1 or a.contrast <= 0:
        p.error(f"need --size >= 64, --per-defect >= 1 and --contrast > 0 (got {a.size}, {a.per_defect}, {a.contrast})")
    start = time.perf_counter()
    root = make_category(a.out, a.category, a.style, a.size, per_defect=a.per_defect, contrast=a.contrast, seed=a.seed)
    n_good = sum(1 for _ in root.glob("*/good/*.png"))
    n_defect = sum(1 for _ in (root / "ground_truth").glob("*/*_mask.png"))
    types = sorted(d.name for d in (root / "ground_truth").iterdir())
    print(f"synthetic {a.category}: {root}: {n_good + n_defect} images ({n_good} good, {n_defect} defect: "
          f"{', '.join(types)}), {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
