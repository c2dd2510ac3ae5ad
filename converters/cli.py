"""What every converter CLI shares: arguments, reading the category and its split, atomic output folders,
progress bars, the summary line, and bad input -> one-line error and exit code 2."""
from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from tqdm import tqdm

from converters.errors import DatasetError
from converters.io import atomic_dir
from converters.mvtec import read_category
from converters.records import Category
from converters.splits import SPLITS, Split, SplitConfig, load_or_make_split, save_split

T = TypeVar("T")
EXIT_OK, EXIT_BAD_INPUT = 0, 2


@dataclass
class Job:
    """A category read from disk and the split every format uses."""

    cat: Category
    split: Split
    split_path: Path
    split_created: bool
    progress: bool = True

    def bar(self, items: Sequence[T], desc: str) -> Iterable[T]:
        return tqdm(items, desc=desc, unit="img", disable=not self.progress, leave=False)


Exporter = Callable[[Job, Path], None]  # writes one format into a (temporary) folder


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Show defaults, but not the empty ones (None, False)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False or action.required:
            return action.help or ""
        return super()._get_help_string(action)


def _ratios(values: list[str]) -> tuple[float, float, float]:
    return tuple(float(v) for v in values)  # type: ignore[return-value]


def parser(fmt: str, description: str, default_out: str, out_help: str = "output folder") -> argparse.ArgumentParser:
    """The arguments every converter takes; `default_out` may contain {category}."""
    p = argparse.ArgumentParser(
        prog=f"mvtec_to_{fmt}.py", description=description, formatter_class=_Help
    )
    p.add_argument("--category", required=True, help="MVTec category folder name, e.g. wood")
    p.add_argument("--root", type=Path, default=Path("datasets/mvtec_ad"), help="MVTec AD root folder")
    p.add_argument("--out", type=Path, default=None, help=f"{out_help} (default: {default_out})".replace("{category}", "<category>"))
    p.add_argument("--split", nargs=3, type=float, default=[0.6, 0.2, 0.2], metavar=("TRAIN", "VAL", "TEST"),
                   help="train/val/test ratios of the defect images of each defect type")
    p.add_argument("--seed", type=int, default=0, help="seed of the split (and of sampled points)")
    good = p.add_mutually_exclusive_group()
    good.add_argument("--good-ratio", type=float, default=0.5,
                      help="good images per split = ceil(ratio x defect images in that split)")
    good.add_argument("--good-per-split", nargs=3, type=int, default=None, metavar=("TRAIN", "VAL", "TEST"),
                      help="number of good images per split (overrides --good-ratio)")
    p.add_argument("--min-area", type=int, default=10, help="drop mask components smaller than this (pixels)")
    p.add_argument("--splits", type=Path, default=None,
                   help="the split file, written once and reused by every format (default: datasets/splits/<category>.json)")
    p.add_argument("--resplit", action="store_true", help="make a new split even if the split file exists")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(default_out=default_out)
    return p


def parse(p: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    args = p.parse_args(argv)
    if any(r < 0 for r in args.split) or sum(args.split) <= 0:
        p.error(f"--split: ratios must be >= 0 with a positive sum, got {args.split}")
    if args.good_per_split is not None and any(k < 0 for k in args.good_per_split):
        p.error(f"--good-per-split: counts must be >= 0, got {args.good_per_split}")
    if args.min_area < 1:
        p.error(f"--min-area: must be >= 1, got {args.min_area}")
    if args.out is None:
        args.out = Path(args.default_out.format(category=args.category))
    if args.splits is None:
        args.splits = Path("datasets/splits") / f"{args.category}.json"
    return args


def split_config(args: argparse.Namespace) -> SplitConfig:
    return SplitConfig(
        _ratios(args.split), args.seed, args.good_ratio,
        tuple(args.good_per_split) if args.good_per_split is not None else None,
    )


def load_job(args: argparse.Namespace) -> Job:
    """Read the category (with a progress bar) and load or make its split."""
    cat = read_category(args.root, args.category, args.min_area, progress=not args.no_progress)
    split, created = load_or_make_split(cat, args.splits, split_config(args), args.resplit)
    return Job(cat, split, Path(args.splits), created, progress=not args.no_progress)


def summary(label: str, job: Job, seconds: float) -> str:
    """`coco toy_wood: 38 images (train 25, val 6, test 7), 39 instances (crack 9, ...), 0 specks dropped, 0.4 s`."""
    in_split = job.split.split_of()
    recs = [r for r in job.cat.images if r.file_name in in_split]
    per_split = ", ".join(f"{s} {len(job.split.files[s])}" for s in SPLITS)
    counts = Counter(inst.category for r in recs for inst in r.instances)
    per_class = ", ".join(f"{name} {counts[name]}" for name in job.cat.defect_types)
    specks = sum(r.dropped_specks for r in job.cat.images)
    return (f"{label} {job.cat.name}: {len(recs)} images ({per_split}), {sum(counts.values())} instances "
            f"({per_class}), {specks} specks dropped, {seconds:.1f} s")


def _check_out(path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise DatasetError(f"{path}: output exists and is not a folder")


def export(job: Job, targets: list[tuple[Path, Exporter]]) -> None:
    """Write every target into a temporary folder beside it; rename all at the end (nothing half-written)."""
    for out, _ in targets:
        _check_out(out)
    new_parents = {p for out, _ in targets for p in Path(out).absolute().parents if not p.exists()}
    try:
        with ExitStack() as stack:
            for out, write in targets:
                write(job, stack.enter_context(atomic_dir(out)))
            if job.split_created:
                save_split(job.split, job.split_path)
    except BaseException:
        for p in sorted(new_parents, key=lambda p: len(p.parts), reverse=True):  # the folders we made, if empty
            if p.is_dir() and not any(p.iterdir()):
                p.rmdir()
        raise


def run(label: str, argv: list[str] | None, p: argparse.ArgumentParser,
        targets: Callable[[argparse.Namespace], list[tuple[Path, Exporter]]]) -> int:
    """Parse, read, export, print the summary; bad input -> `error: <path>: <problem>` and exit 2."""
    args = parse(p, argv)
    start = time.perf_counter()
    stage = "cannot read input"
    try:
        job = load_job(args)
        stage = "cannot write output"
        export(job, targets(args))
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:
        print(f"error: {exc.filename or args.out}: {stage} ({exc.strerror or exc})", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(summary(label, job, time.perf_counter() - start))
    return EXIT_OK
