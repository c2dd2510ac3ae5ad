"""Small synthetic copies of MVTec AD 2, MVTec LOCO AD and MVTec 3D-AD in their exact layouts (folders, file names,
extensions, mask value conventions), for the readers' tests. Each writer returns the truth it drew (the label and
defect mask of every file), so a test can check a conversion against it without reading the masks back.

Images cycle through 8-bit colour, 8-bit gray and 16-bit colour and gray PNGs, and are 3/4 as wide as high, so a
swapped axis or an unread 16-bit file shows."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from defect_vision.data.synthetic import background, draw_defect

MODES = ("rgb", "rgb", "gray", "rgb16", "rgb", "gray16")
AD2_LIGHTINGS = ("regular", "overexposed", "underexposed", "shift_1", "shift_2", "shift_3")
# MVTec LOCO AD: defects_config.json gives each defect a grey value (255, 254, ...) that its mask pixels carry
LOCO_DEFECTS = {"logical_anomalies": (("missing_part", 255), ("extra_part", 254)),
                "structural_anomalies": (("broken_part", 253), ("contamination", 252))}
# MVTec 3D-AD: class_ids.json gives each defect type the value its gt pixels carry (255 down, by name)
D3_DEFECTS = {"contamination": "stain", "cut": "scratch", "hole": "hole"}


@dataclass(frozen=True)
class Truth:
    """What a file is: its label ('good', a class name, or 'unknown' without ground truth) and defect mask."""

    label: str
    mask: np.ndarray | None = field(default=None, compare=False)  # bool H x W: the union of a defect image's masks
    labelled: bool = True


@dataclass
class Synthetic:
    root: Path  # the category folder
    truth: dict[str, Truth]  # file name relative to root -> truth


class _Drawer:
    """Pictures and defects from one seeded generator; `save` cycles the image modes."""

    def __init__(self, size: int, style: str, seed: int):
        self.rng, self.size, self.style, self.count = np.random.default_rng(seed), size, style, 0

    def _canvas(self) -> tuple[np.ndarray, np.ndarray]:
        img, region = background(self.rng, self.size, self.style)
        width = self.size * 3 // 4  # not square: a swapped height/width shows
        return np.ascontiguousarray(img[:, :width]), np.ascontiguousarray(region[:, :width])

    def good(self) -> np.ndarray:
        return self._canvas()[0]

    def defect(self, kinds: list[str]) -> tuple[np.ndarray, list[np.ndarray]]:
        """A picture with one defect per kind, and each defect's mask."""
        img, region = self._canvas()
        return img, [draw_defect(self.rng, img, region, k, 1.0) for k in kinds]

    def save(self, path: Path, img: np.ndarray) -> None:
        mode = MODES[self.count % len(MODES)]
        self.count += 1
        path.parent.mkdir(parents=True, exist_ok=True)
        img = np.clip(img + self.rng.normal(0, 2, img.shape), 0, 255).astype(np.float32)
        if mode.startswith("gray"):
            img = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
        else:
            img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
        img = (img * 257).astype(np.uint16) if mode.endswith("16") else img.astype(np.uint8)
        assert cv2.imwrite(str(path), img), path


def save_mask(path: Path, mask: np.ndarray, value: int = 255) -> None:
    """An 8-bit gray PNG: `value` on the defect, 0 elsewhere."""
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), mask.astype(np.uint8) * np.uint8(value)), path


def _rel(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


def make_mvtec_ad2(out_root: Path, category: str = "toy_can", size: int = 96, good: tuple[int, int, int] = (3, 2, 2),
                   bad: int = 5, private: tuple[int, int] = (2, 2), seed: int = 0) -> Synthetic:
    """<C>/{train,validation,test_public}/good/NNN_<lighting>.png, test_public/bad/ with
    test_public/ground_truth/bad/<stem>_mask.png (0/255), and test_private/, test_private_mixed/ without masks."""
    root, draw, truth = Path(out_root) / category, _Drawer(size, "wood", seed), {}

    def name(i: int) -> str:
        return f"{i // 2:03d}_{AD2_LIGHTINGS[i % len(AD2_LIGHTINGS)]}.png"

    for split, n in zip(("train", "validation", "test_public"), good):
        for i in range(n):
            draw.save(root / split / "good" / name(i), draw.good())
            truth[f"{split}/good/{name(i)}"] = Truth("good")
    for i in range(bad):
        img, masks = draw.defect(["hole", "scratch"] if i % 2 else ["stain"])
        path = root / "test_public" / "bad" / name(i)
        draw.save(path, img)
        union = np.logical_or.reduce(masks)
        save_mask(root / "test_public" / "ground_truth" / "bad" / f"{path.stem}_mask.png", union)
        truth[_rel(root, path)] = Truth("defect", union)
    for folder, n in zip(("test_private", "test_private_mixed"), private):
        for i in range(n):
            file = f"{i:03d}_mixed.png" if folder.endswith("mixed") else name(i)
            img = draw.defect(["crack"])[0] if i % 2 else draw.good()
            draw.save(root / folder / file, img)
            truth[f"{folder}/{file}"] = Truth("unknown", labelled=False)
    return Synthetic(root, truth)


def make_mvtec_loco(out_root: Path, category: str = "toy_box", size: int = 96, good: tuple[int, int, int] = (3, 2, 2),
                    per_type: int = 3, seed: int = 0) -> Synthetic:
    """<C>/{train,validation,test}/good/NNN.png, test/{logical,structural}_anomalies/NNN.png, a mask folder
    ground_truth/<type>/NNN/ per defect image (000.png, 001.png, ...: one region each, in its defect's grey value
    from <C>/defects_config.json). The last image of each type has two overlapping masks (one region together)."""
    root, draw, truth = Path(out_root) / category, _Drawer(size, "capsule", seed), {}
    config = [{"defect_name": n, "pixel_value": v, "saturation_threshold": 1.0, "relative_saturation": True}
              for defects in LOCO_DEFECTS.values() for n, v in defects]
    root.mkdir(parents=True, exist_ok=True)
    (root / "defects_config.json").write_text(json.dumps(config, indent=4))
    for split, n in zip(("train", "validation", "test"), good):
        for i in range(n):
            draw.save(root / split / "good" / f"{i:03d}.png", draw.good())
            truth[f"{split}/good/{i:03d}.png"] = Truth("good")
    for defect_type, defects in LOCO_DEFECTS.items():
        for i in range(per_type):
            _, value = defects[i % len(defects)]
            img, masks = draw.defect(["hole", "stain", "scratch"][: 1 + i % 3])
            if i == per_type - 1:  # a second mask overlapping the first: their union is one region
                masks = [masks[0], np.roll(masks[0], 2, axis=1)]
            draw.save(root / "test" / defect_type / f"{i:03d}.png", img)
            for k, m in enumerate(masks):
                save_mask(root / "ground_truth" / defect_type / f"{i:03d}" / f"{k:03d}.png", m, value)
            truth[f"test/{defect_type}/{i:03d}.png"] = Truth(defect_type, np.logical_or.reduce(masks))
    return Synthetic(root, truth)


def make_mvtec_3d(out_root: Path, category: str = "toy_tire", size: int = 96, good: tuple[int, int, int] = (3, 2, 2),
                  per_defect: int = 2, combined: int = 1, seed: int = 0) -> Synthetic:
    """<C>/{train,validation}/good/{rgb,xyz}/, test/<defect>/{rgb,xyz,gt}/NNN.{png,tiff,png}: gt pixels carry the
    defect's class id from <C>/class_ids.json (255 contamination, 254 cut, 253 hole), test/good/gt/ all zero,
    test/combined/gt/ two ids in one mask. xyz/ holds float32 point-cloud TIFFs."""
    root, draw, truth = Path(out_root) / category, _Drawer(size, "wood", seed), {}
    ids = {name: 255 - k for k, name in enumerate(sorted(D3_DEFECTS))}
    root.mkdir(parents=True, exist_ok=True)
    (root / "class_ids.json").write_text(json.dumps({**{str(v): n for n, v in ids.items()}, "0": "good"}, indent=2))

    def write(folder: Path, i: int, img: np.ndarray, gt: np.ndarray | None) -> None:
        draw.save(folder / "rgb" / f"{i:03d}.png", img)
        xyz = draw.rng.normal(0, 1, (*img.shape[:2], 3)).astype(np.float32)
        (folder / "xyz").mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(folder / "xyz" / f"{i:03d}.tiff"), xyz)
        if gt is not None:
            (folder / "gt").mkdir(parents=True, exist_ok=True)
            assert cv2.imwrite(str(folder / "gt" / f"{i:03d}.png"), gt)

    for split, n in zip(("train", "validation", "test"), good):
        for i in range(n):
            img = draw.good()
            write(root / split / "good", i, img, np.zeros(img.shape[:2], np.uint8) if split == "test" else None)
            truth[f"{split}/good/rgb/{i:03d}.png"] = Truth("good")
    types = [(d, [d]) for d in sorted(D3_DEFECTS)] + [("combined", ["hole", "contamination"])] * bool(combined)
    for name, defects in types:
        for i in range(per_defect if name != "combined" else combined):
            img, masks = draw.defect([D3_DEFECTS[d] for d in defects])
            gt = np.zeros(img.shape[:2], np.uint8)
            for d, m in zip(defects, masks):
                gt[m] = ids[d]
            write(root / "test" / name, i, img, gt)
            truth[f"test/{name}/rgb/{i:03d}.png"] = Truth(name, gt > 0)
    return Synthetic(root, truth)
