#!/usr/bin/env python
"""Benchmark: images/s of the COCO export on the real MVTec sample vs the floor (decoding every mask and
reading every image header). Prints a table; the target is a ratio <= 1.3x."""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import tempfile
import sys
import time
from pathlib import Path

from defect_vision.cli.convert import main as convert_main
from defect_vision.data.images import image_size, read_mask
from defect_vision.data.mvtec import list_categories
from defect_vision.data.source import DatasetSource, reader

DEFAULT_ROOT = Path(os.environ.get("DEFECT_VISION_MVTEC_SAMPLE", Path(__file__).resolve().parents[2] / "shared" / "data" / "mvtec_ad"))


def _mvtec(root: Path, n: int) -> str:
    from defect_vision.data.synthetic import make_category

    make_category(root, "syn", size=256, per_defect=max(1, (n - 12) // 4), good_train=8, good_test=4, combined=0)
    return "syn"


def _ad2(root: Path, n: int) -> str:
    from defect_vision.data.synthetic_mvtec_family import make_mvtec_ad2

    make_mvtec_ad2(root, "syn", size=256, good=(n // 4, n // 8, n // 8), bad=n // 2, private=(0, 0))
    return "syn"


def _loco(root: Path, n: int) -> str:
    from defect_vision.data.synthetic_mvtec_family import make_mvtec_loco

    make_mvtec_loco(root, "syn", size=256, good=(n // 4, n // 8, n // 8), per_type=n // 4)
    return "syn"


def _3d(root: Path, n: int) -> str:
    from defect_vision.data.synthetic_mvtec_family import make_mvtec_3d

    make_mvtec_3d(root, "syn", size=256, good=(n // 4, n // 8, n // 8), per_defect=n // 8, combined=n // 8)
    return "syn"


def _kolektor(root: Path, n: int) -> str:
    from defect_vision.data.synthetic_other_layouts import make_kolektor2

    make_kolektor2(root, "syn", shape=(256, 96), counts={"train": (n // 4, n // 4), "test": (n // 4, n // 4)})
    return "syn"


SYNTHETIC = {"mvtec": _mvtec, "mvtec_ad2": _ad2, "mvtec_loco": _loco, "mvtec_3d": _3d, "kolektor2": _kolektor}


def floor_pass(source) -> int:
    """The bare cost: every image header read and every mask decoded (the files the layout's reader lists).
    Returns the number of images."""
    n = 0
    for s in reader(source.format).samples(source):
        image_size(s.path)
        for m in s.masks if s.labelled else ():
            read_mask(m)
        n += 1
    return n


def coco_pass(source, out: Path, rle: bool) -> None:
    """The whole COCO export as the CLI runs it (read, components, polygons/RLE, json, atomic rename), reusing
    the category's split file as every run after the first does."""
    category = source.category
    args = ["--category", category, "--root", str(source.root), "--format", source.format, "--out", str(out / "coco"),
            "--no-progress", "--splits", str(out / f"{category}_splits.json")] + (["--rle"] if rle else [])
    with contextlib.redirect_stdout(io.StringIO()):
        assert convert_main(fmt="coco", argv=args) == 0


def best_of(repeat: int, fn, clock=time.process_time) -> float:
    """Minimum time of `repeat` runs: CPU time by default, which other work on a shared machine disturbs least."""
    times = []
    for _ in range(repeat):
        start = clock()
        fn()
        times.append(clock() - start)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="MVTec AD root")
    p.add_argument("--categories", nargs="*", default=None, help="categories (default: all found)")
    p.add_argument("--repeat", type=int, default=5, help="runs per measurement; the best is kept")
    p.add_argument("--wall", action="store_true", help="measure wall-clock time instead of CPU time")
    p.add_argument("--format", dest="layout", default="mvtec", choices=sorted(SYNTHETIC),
                   help="dataset layout of --root (and of --synthetic)")
    p.add_argument("--synthetic", type=int, default=0, metavar="N",
                   help="instead of --root: a synthetic category of about N images in the --format layout (temp folder)")
    a = p.parse_args(argv)
    if a.synthetic:
        synth_root = Path(tempfile.mkdtemp(prefix="bench_synth_"))
        a.categories = [SYNTHETIC[a.layout](synth_root, a.synthetic)]
        a.root = synth_root
    if not a.root.is_dir():
        print(f"error: {a.root}: no such folder (the MVTec AD sample)", file=sys.stderr)
        return 2
    cats = a.categories or list_categories(a.root)
    print(f"layout {a.layout}, root {a.root}")
    clock = time.perf_counter if a.wall else time.process_time
    print(f"{'wall-clock' if a.wall else 'CPU'} time, best of {a.repeat}; floor = read every image header + decode every mask")
    header = f"{'category':<12} {'images':>6} {'floor s':>8} {'floor img/s':>11} {'coco s':>7} {'coco img/s':>10} {'ratio':>6} {'rle s':>6} {'ratio':>6}"
    print(header)
    print("-" * len(header))
    totals = [0, 0.0, 0.0, 0.0]
    with tempfile.TemporaryDirectory() as tmp:
        for cat in cats:
            src = DatasetSource(a.root, cat, format=a.layout)
            n = floor_pass(src)  # also warms the file cache
            coco_pass(src, Path(tmp), rle=False)  # writes the split once
            floor = best_of(a.repeat, lambda: floor_pass(src), clock)
            poly = best_of(a.repeat, lambda: coco_pass(src, Path(tmp), rle=False), clock)
            rle = best_of(a.repeat, lambda: coco_pass(src, Path(tmp), rle=True), clock)
            for i, v in enumerate((n, floor, poly, rle)):
                totals[i] += v
            print(f"{cat:<12} {n:>6} {floor:>8.3f} {n / floor:>11.1f} {poly:>7.3f} {n / poly:>10.1f} "
                  f"{poly / floor:>5.2f}x {rle:>6.3f} {rle / floor:>5.2f}x")
    n, floor, poly, rle = totals
    print("-" * len(header))
    print(f"{'all':<12} {n:>6} {floor:>8.3f} {n / floor:>11.1f} {poly:>7.3f} {n / poly:>10.1f} "
          f"{poly / floor:>5.2f}x {rle:>6.3f} {rle / floor:>5.2f}x")
    print(f"COCO export (polygons) {poly / floor:.2f}x the floor (target <= 1.3x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
