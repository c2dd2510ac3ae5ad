"""Merge the shards of a sharded prediction run into the single-process run's `predictions.json` and
`image_ids.json`, byte for byte (same entries, same order: image id, then `Detections.order()`), streaming one
shard at a time; refused, naming the files, when shards come from another run, are missing or are damaged."""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from defect_vision.distributed.shards import (
    RUN_FILE,
    SHARDS,
    read_run,
    read_shard,
    shard_files,
    shard_paths,
)
from defect_vision.errors import DatasetError
from defect_vision.io import Commit


@dataclass
class ShardTotals:
    """The shards' stats summed: what summary.json reports."""

    shards: int = 0
    images: int = 0
    skipped: list[str] = field(default_factory=list)
    detections: Counter = field(default_factory=Counter)
    images_with_detections: int = 0
    counters: Counter = field(default_factory=Counter)  # detector / SAM calls
    seconds: Counter = field(default_factory=Counter)  # per stage, summed over workers
    model: dict = field(default_factory=dict)  # class names, category ids, device, autocast, warnings

    def add(self, stats: dict) -> None:
        self.shards += 1
        self.images += stats["images"]
        self.skipped += stats["skipped"]
        self.detections.update(stats["detections"])
        self.images_with_detections += stats["images_with_detections"]
        self.counters.update(stats["counters"])
        self.seconds.update(stats["seconds"])
        self.model = self.model or stats.get("model") or {}


def check_shards(out: Path) -> tuple[dict, list[dict]]:
    """(run.json, the shard files in shard order) once every planned shard is complete and of this run."""
    out = Path(out)
    run = read_run(out)
    plan = run["shards"]
    docs, foreign, damaged = {}, [], []
    for k, path in shard_files(out).items():
        doc = read_shard(out, k)
        if doc is None:
            damaged.append(f"{path.name} (unreadable)")
        elif doc.get("run_id") != run["run_id"] or k >= len(plan):
            foreign.append(f"{path.name} (run {doc.get('run_id')})")
        else:
            docs[k] = doc
    if foreign:
        raise DatasetError(f"{out / SHARDS}: {', '.join(foreign)} come from another run than {RUN_FILE} "
                           f"(run {run['run_id']}); refusing to merge: move them out or rerun into a fresh folder")
    for k, doc in sorted(docs.items()):
        first, last, count = plan[k]
        ids = [e.get("id") for e in doc.get("images", [])]
        if len(ids) != count or ids[0] != first or ids[-1] != last or ids != sorted(ids):
            damaged.append(f"{shard_paths(out, k)[1].name} (images do not match the plan of {RUN_FILE})")
    if damaged:
        raise DatasetError(f"{out / SHARDS}: damaged shard file(s): {', '.join(damaged)}; delete them and rerun "
                           "the same command to predict those shards again")
    missing = [k for k in range(len(plan)) if k not in docs]
    if missing:
        raise DatasetError(f"{out}: {len(missing)} of {len(plan)} shards are not complete (first: "
                           f"{shard_paths(out, missing[0])[1].name}); rerun the same command to finish them")
    return run, [docs[k] for k in range(len(plan))]


def _image_entry(entry: dict) -> str:
    """One entry as `json.dumps(list, indent=1)` writes it inside the list."""
    return json.dumps([entry], indent=1)[2:-2]


def merge_shards(out: Path) -> ShardTotals:
    """Write `out`/predictions.json and image_ids.json from the shards (together, through io.Commit)."""
    out = Path(out)
    _, docs = check_shards(out)
    totals = ShardTotals()
    for doc in docs:
        totals.add(doc["stats"])
    if totals.images == 0:  # as the single-process run: no output without a single predicted image
        first = totals.skipped[0] if totals.skipped else "no image"
        raise DatasetError(f"no image could be predicted ({len(totals.skipped)} unreadable; first: {first})")
    with Commit(out / ".merge.commit.json") as commit:
        with open(commit.file(out / "predictions.json"), "w") as pred, open(commit.file(out / "image_ids.json"), "w") as ids:
            pred.write("[")
            ids.write("[\n" if any(d["images"] for d in docs) else "[")
            first_pred = first_id = True
            for k, doc in enumerate(docs):
                path = shard_paths(out, k)[0]
                try:
                    text = path.read_text()
                except OSError as exc:
                    raise DatasetError(f"{path}: unreadable shard predictions ({exc.strerror or exc})") from None
                if hashlib.sha256(text.encode()).hexdigest() != doc.get("sha256"):
                    raise DatasetError(f"{path}: changed since its shard was written (sha256 differs from "
                                       f"{shard_paths(out, k)[1].name}); delete both and rerun to predict it again")
                inner = text[1:-1]
                if inner:
                    pred.write(inner if first_pred else ", " + inner)
                    first_pred = False
                for entry in doc["images"]:
                    ids.write(_image_entry(entry) if first_id else ",\n" + _image_entry(entry))
                    first_id = False
            pred.write("]")
            ids.write("\n]" if not first_id else "]")
    return totals
