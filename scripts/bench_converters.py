#!/usr/bin/env python
"""Benchmark: the converters as a user runs them, each a fresh process with its imports counted
(`python converters/mvtec_to_coco.py ...`, `python -m defect_vision convert ...`), against the floor: a fresh process
that only decodes every mask of the category with the converter's decoder (cv2.imdecode of the file's bytes,
IMREAD_UNCHANGED, as data/images.py:read_mask). Prints a table naming the CPU: per command the best of --repeat runs
and, as a check on a shared machine, the median over turns of its time / the floor's time of the same turn; the
target is COCO <= 1.3x the floor by both."""
from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # fixtures/: the synthetic generators of the other layouts
DEFAULT_ROOT = Path(os.environ.get("DEFECT_VISION_MVTEC_SAMPLE", REPO.parent / "shared" / "data" / "mvtec_ad"))

# the floor process: numpy + OpenCV imported, every listed mask decoded and thresholded as read_mask does
# children may cache bytecode (__pycache__, git-ignored) as an installed package has it: pip compiles at install, while
# PYTHONDONTWRITEBYTECODE=1 (set on some dev machines) would recompile every module of the package in every run
CHILD_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}

FLOOR = """import sys
import cv2
import numpy as np
for line in open(sys.argv[1], encoding="utf-8"):
    mask = cv2.imdecode(np.fromfile(line.rstrip("\\n"), np.uint8), cv2.IMREAD_UNCHANGED)
    if mask.ndim == 3:
        mask = mask[..., :3].max(axis=2)
    mask > 0
"""


def _mvtec(root: Path, n: int) -> str:
    from defect_vision.data.synthetic import make_category

    make_category(root, "syn", size=256, per_defect=max(1, (n - 12) // 4), good_train=8, good_test=4, combined=0)
    return "syn"


def _ad2(root: Path, n: int) -> str:
    from fixtures.synthetic_mvtec_family import make_mvtec_ad2

    make_mvtec_ad2(root, "syn", size=256, good=(n // 4, n // 8, n // 8), bad=n // 2, private=(0, 0))
    return "syn"


def _loco(root: Path, n: int) -> str:
    from fixtures.synthetic_mvtec_family import make_mvtec_loco

    make_mvtec_loco(root, "syn", size=256, good=(n // 4, n // 8, n // 8), per_type=n // 4)
    return "syn"


def _3d(root: Path, n: int) -> str:
    from fixtures.synthetic_mvtec_family import make_mvtec_3d

    make_mvtec_3d(root, "syn", size=256, good=(n // 4, n // 8, n // 8), per_defect=n // 8, combined=n // 8)
    return "syn"


def _kolektor(root: Path, n: int) -> str:
    from fixtures.synthetic_other_layouts import make_kolektor2

    make_kolektor2(root, "syn", shape=(256, 96), counts={"train": (n // 4, n // 4), "test": (n // 4, n // 4)})
    return "syn"


SYNTHETIC = {"mvtec": _mvtec, "mvtec_ad2": _ad2, "mvtec_loco": _loco, "mvtec_3d": _3d, "kolektor2": _kolektor}


def cpu_name() -> str:
    """The CPU model (/proc/cpuinfo), and the cores this process may use."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{name}, {cores} cores"


def list_masks(source) -> tuple[int, list[Path]]:
    """(images, mask files) of a category as its layout's reader lists them (in the benchmark process, untimed)."""
    from defect_vision.data.source import reader

    samples = list(reader(source.format).samples(source))
    return len(samples), [m for s in samples if s.labelled for m in s.masks]


def run_once(cmd: list[str], wall: bool) -> float:
    """Seconds of one fresh process: its CPU time (user + system, from the kernel's child accounting), or wall-clock
    time. A failing command stops the benchmark with its stderr."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    r = subprocess.run(cmd, cwd=REPO, env=CHILD_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        raise SystemExit(f"error: {' '.join(cmd)} exited {r.returncode}: {r.stderr.strip()[-2000:]}")
    if wall:
        return elapsed
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def turns(repeat: int, cmds: dict[str, list[str]], wall: bool) -> dict[str, list[float]]:
    """Per command the seconds of `repeat` runs (CPU time by default, which other work on a shared machine disturbs
    least). The commands take turns (floor, coco, ..., floor, coco, ...), so a burst of other work on the machine
    slows all of them alike instead of one command's every run, and run i of each command can be paired."""
    times: dict[str, list[float]] = {name: [] for name in cmds}
    for _ in range(repeat):
        for name, cmd in cmds.items():
            times[name].append(run_once(cmd, wall))
    return times


def paired_ratio(times: dict[str, list[float]], name: str) -> float:
    """The median over turns of command / floor of the same turn: a second estimate, less sensitive than the ratio of
    the two bests to one lucky floor run."""
    return statistics.median(t / f for t, f in zip(times[name], times["floor"]))


def commands(root: Path, category: str, layout: str, tmp: Path) -> dict[str, list[str]]:
    """The measured command lines of one category; the COCO runs reuse the split file, as every run after the first."""
    common = ["--category", category, "--root", str(root), "--format", layout, "--no-progress"]
    coco = [sys.executable, str(REPO / "converters" / "mvtec_to_coco.py"), *common, "--out", str(tmp / "coco"),
            "--splits", str(tmp / f"{category}_splits.json")]
    return {"coco": coco, "rle": [*coco, "--rle"],
            "all": [sys.executable, "-m", "defect_vision", "convert", *common, "--out", str(tmp / "all")]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="dataset root (the MVTec AD sample)")
    p.add_argument("--categories", nargs="*", default=None, help="categories (default: all found)")
    p.add_argument("--repeat", type=int, default=5, help="runs per measurement; the best is kept")
    p.add_argument("--wall", action="store_true", help="measure wall-clock time instead of CPU time")
    p.add_argument("--format", dest="layout", default="mvtec", choices=sorted(SYNTHETIC),
                   help="dataset layout of --root (and of --synthetic)")
    p.add_argument("--synthetic", type=int, default=0, metavar="N",
                   help="instead of --root: a synthetic category of about N images in the --format layout (temp folder)")
    a = p.parse_args(argv)
    if a.repeat < 1:
        p.error(f"--repeat: must be >= 1, got {a.repeat}")
    from defect_vision.data.mvtec import list_categories
    from defect_vision.data.source import DatasetSource

    synth = tempfile.TemporaryDirectory(prefix="bench_synth_") if a.synthetic else None
    if synth:
        a.categories = [SYNTHETIC[a.layout](Path(synth.name), a.synthetic)]
        a.root = Path(synth.name)
    if not a.root.is_dir():
        print(f"error: {a.root}: no such folder (the MVTec AD sample)", file=sys.stderr)
        return 2
    cats = a.categories or list_categories(a.root)
    startup = min(turns(a.repeat, {"startup": [sys.executable, "-c", "pass"]}, a.wall)["startup"])
    print(f"CPU: {cpu_name()}; Python {platform.python_version()}")
    print(f"layout {a.layout}, root {a.root}")
    print(f"{'wall-clock' if a.wall else 'CPU'} time of whole fresh processes (imports included), best of {a.repeat} "
          f"(the commands taking turns); "
          f"floor = a process decoding every mask (cv2); an empty interpreter takes {startup:.3f} s")
    header = (f"{'category':<12} {'images':>6} {'masks':>5} {'floor s':>8} {'coco s':>7} {'ratio':>6} "
              f"{'rle s':>6} {'ratio':>6} {'all s':>6} {'ratio':>6}   {'median paired ratio: coco, rle, all':>20}")
    print(header)
    print("-" * len(header))
    totals = dict.fromkeys(("images", "masks", "floor", "coco", "rle", "all"), 0.0)
    all_turns = {k: [0.0] * a.repeat for k in ("floor", "coco", "rle", "all")}  # per turn, summed over categories

    def row(name: str, t: dict, times: dict[str, list[float]]) -> str:
        return (f"{name:<12} {int(t['images']):>6} {int(t['masks']):>5} {t['floor']:>8.3f} {t['coco']:>7.3f} "
                f"{t['coco'] / t['floor']:>5.2f}x {t['rle']:>6.3f} {t['rle'] / t['floor']:>5.2f}x "
                f"{t['all']:>6.3f} {t['all'] / t['floor']:>5.2f}x   {paired_ratio(times, 'coco'):>5.2f}x "
                f"{paired_ratio(times, 'rle'):>5.2f}x {paired_ratio(times, 'all'):>5.2f}x")

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for cat in cats:
            n, masks = list_masks(DatasetSource(a.root, cat, format=a.layout))
            mask_list = tmp / f"{cat}_masks.txt"
            mask_list.write_text("".join(f"{m}\n" for m in masks), encoding="utf-8")
            cmds = {"floor": [sys.executable, "-c", FLOOR, str(mask_list)], **commands(a.root, cat, a.layout, tmp)}
            for cmd in cmds.values():  # warm the file and bytecode caches; the first COCO run writes the split file
                run_once(cmd, a.wall)
            times = turns(a.repeat, cmds, a.wall)
            t = {"images": n, "masks": len(masks), **{k: min(v) for k, v in times.items()}}
            for k, v in t.items():
                totals[k] += v
            for k, v in times.items():
                all_turns[k] = [s + x for s, x in zip(all_turns[k], v)]
            print(row(cat, t, times))
    print("-" * len(header))
    print(row("all", totals, all_turns))
    if synth:
        synth.cleanup()
    ratio, paired = totals["coco"] / totals["floor"], paired_ratio(all_turns, "coco")
    print(f"COCO converter (polygons) {ratio:.2f}x the floor (best of each), {paired:.2f}x (median of paired turns); "
          f"target <= 1.3x: {'met' if max(ratio, paired) <= 1.3 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
