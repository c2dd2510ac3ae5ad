"""A sharded prediction run folder, written in place so that it can be resumed: `run.json` (the run id and the shard
plan), and per shard `shards/predictions-<k>.json` (COCO results) committed by `shards/shard-<k>.json` (its image
entries, counts, the predictions file's sha256 and the run id), written last and atomically. A shard is complete
exactly when its shard file is there and names this run; masks/ and overlays/ are shared with the whole run."""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from defect_vision.errors import DatasetError
from defect_vision.io import (
    atomic_dir,
    atomic_path,
    check_output_dir,
    marker_kind,
    read_json,
    remove_stale_temps,
)

KIND = "predict"  # the same marker kind as the single-process run: either engine may replace the other's folder
RUN_FILE = "run.json"
SHARDS = "shards"
SHARD_FILE = re.compile(r"^shard-(\d+)\.json$")


def fingerprint(path: Path | str | None) -> list | None:
    """What identifies an input file cheaply: resolved path, size, modification time (None for no file)."""
    if path is None:
        return None
    p = Path(path)
    if not p.exists():
        raise DatasetError(f"{p}: missing (no such file)")
    st = p.stat()
    return [str(p.resolve()), st.st_size, st.st_mtime_ns]


def run_id(settings: dict) -> str:
    """A short hash of everything that decides a run's outputs (images, models, options)."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class ShardPlan:
    """The run's shards: image ids (ascending) per shard, so shard k's ids all precede shard k+1's."""

    run_id: str
    shard_size: int
    shards: list[list[int]]

    @classmethod
    def of(cls, rid: str, ids: list[int], shard_size: int) -> ShardPlan:
        ids = sorted(ids)
        return cls(rid, shard_size, [ids[i:i + shard_size] for i in range(0, len(ids), shard_size)])

    def to_dict(self) -> dict:
        """run.json's plan: per shard [first id, last id, images]."""
        return {"run_id": self.run_id, "shard_size": self.shard_size,
                "shards": [[s[0], s[-1], len(s)] for s in self.shards], "images": sum(map(len, self.shards))}


def shard_paths(out: Path, k: int) -> tuple[Path, Path]:
    """(shards/predictions-<k>.json, shards/shard-<k>.json)."""
    folder = Path(out) / SHARDS
    return folder / f"predictions-{k:05d}.json", folder / f"shard-{k:05d}.json"


def holds_run(out: Path, plan: ShardPlan) -> bool:
    """`out` is a prediction run folder of this very run (same run id): resume it."""
    out = Path(out)
    if marker_kind(out) != KIND:
        return False
    try:
        return json.loads((out / RUN_FILE).read_text()).get("run_id") == plan.run_id
    except (OSError, ValueError, AttributeError):
        return False


def open_run(out: Path, plan: ShardPlan, settings: dict, inputs: list[Path], force: bool) -> bool:
    """True when `out` already holds this run (holds_run): resume it, after removing temporary files of killed
    runs. Otherwise make `out` a fresh run folder holding run.json, replacing it as a whole under the rules of
    io.check_output_dir (kind "predict": never over an input, never over a folder that is not a previous
    prediction run unless `force`), and return False."""
    out = Path(out)
    check_output_dir(out, KIND, inputs, force)
    if holds_run(out, plan):
        remove_stale_temps(out)
        remove_stale_temps(out / SHARDS)
        return True
    with atomic_dir(out, KIND, inputs, force) as tmp:
        (tmp / SHARDS).mkdir()
        (tmp / RUN_FILE).write_text(json.dumps({**plan.to_dict(), "engine": "ray", "settings": settings}, indent=1) + "\n")
    return False


def write_shard(out: Path, k: int, rid: str, images: list[dict], predictions: list[dict], stats: dict) -> None:
    """Commit shard k: its COCO results first, then the shard file that makes it complete (both atomic)."""
    pred_path, shard_path = shard_paths(out, k)
    text = json.dumps(predictions)
    with atomic_path(pred_path) as tmp:
        tmp.write_text(text)
    doc = {"run_id": rid, "shard": k, "predictions": pred_path.name, "entries": len(predictions),
           "sha256": hashlib.sha256(text.encode()).hexdigest(), "images": images, "stats": stats}
    with atomic_path(shard_path, durable=True) as tmp:
        tmp.write_text(json.dumps(doc))


def read_shard(out: Path, k: int) -> dict | None:
    """Shard k's shard file, or None when it is absent or unreadable (an incomplete shard)."""
    path = shard_paths(out, k)[1]
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def complete_shards(out: Path, plan: ShardPlan) -> dict[int, dict]:
    """The shards of `plan` already complete in `out` (shard file of this run, the planned images)."""
    done = {}
    for k, ids in enumerate(plan.shards):
        doc = read_shard(out, k)
        if doc and doc.get("run_id") == plan.run_id and [e.get("id") for e in doc.get("images", [])] == ids \
                and shard_paths(out, k)[0].is_file():
            done[k] = doc
    return done


def read_run(out: Path) -> dict:
    """run.json of a sharded run folder; DatasetError naming it when missing or malformed."""
    path = Path(out) / RUN_FILE
    doc = read_json(path, "sharded run file (written by predict --engine ray)")
    if not isinstance(doc, dict) or not isinstance(doc.get("run_id"), str) or not isinstance(doc.get("shards"), list):
        raise DatasetError(f"{path}: not a sharded run file (expected run_id and shards)")
    return doc


def shard_files(out: Path) -> dict[int, Path]:
    """Every shard file in `out`/shards by shard number."""
    folder = Path(out) / SHARDS
    found = {}
    for p in sorted(folder.iterdir()) if folder.is_dir() else []:
        m = SHARD_FILE.match(p.name)
        if m:
            found[int(m.group(1))] = p
    return found
