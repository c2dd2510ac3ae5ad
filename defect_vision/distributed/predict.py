"""`predict --engine ray`: the single-process prediction run (inference/run.py) as a Ray Data pipeline over a
cluster, written as resumable shards and merged into the same predictions.json, image_ids.json, masks/ and
overlays/. A rerun of the same command (same images, models, options) skips the shards already complete, so an
interrupted run loses at most the shards in flight; a killed model actor is restarted by Ray and its batch retried."""
from __future__ import annotations

import json
import math
import shutil
import sys
import time
from collections import Counter
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace

from defect_vision.devices import Timings
from defect_vision.distributed.cluster import ray_session
from defect_vision.distributed.merge import ShardTotals, merge_shards
from defect_vision.distributed.pipeline import Resources, plan_resources, predictions
from defect_vision.distributed.progress import ShardProgress, completion_rate
from defect_vision.distributed.shards import (
    KIND,
    ShardPlan,
    complete_shards,
    fingerprint,
    holds_run,
    open_run,
    run_id,
    write_shard,
)
from defect_vision.errors import ConfigError, DatasetError, error_from_text
from defect_vision.inference.config import PredictConfig
from defect_vision.inference.run import (
    RunOptions,
    category_mismatch,
    ground_truth,
    required_models,
    result_vocabulary,
    run_mode,
)
from defect_vision.inference.run_files import (
    ImageFiles,
    anomaly_entry,
    image_entry,
    write_run_annotations,
)
from defect_vision.inference.sources import Source, resolve_source
from defect_vision.inference.summary import RunFacts, Summary, jsonable, summary_dict
from defect_vision.io import atomic_write_text, check_output_dir, output_place


@dataclass
class RayOptions:
    """Where and how wide a sharded run goes (what it predicts: PredictConfig; how it reads/writes: RunOptions)."""

    num_workers: int | None = None  # model actors, one model copy each (default: one per GPU used, else 1)
    num_gpus: float | None = None  # GPUs for the model actors in all (default: the cluster's, unless --device cpu)
    cpus_per_worker: float | None = None  # default: 1 beside a GPU; CPU-only: the cluster's CPUs shared out
    address: str | None = None  # a running cluster (host:port, auto, ray://host:port); default: a local one
    shard_size: int = 256  # images per shard (the unit of resume)
    split_stages: bool | None = None  # read/encode as CPU task stages (default: when the actors have GPUs)
    progress_every: float = 10.0  # seconds between progress lines


@dataclass
class ShardedSummary(Summary):
    shards: int = 0
    shards_resumed: int = 0
    images_this_run: int = 0  # images read by this invocation, skipped ones included (the rest: resumed shards)
    resources: str = ""
    duplicates: int = 0  # results of an image that arrived twice (dropped: each image is written once)
    workers: dict = field(default_factory=dict)  # images per worker (host:pid) in this run
    first_result_s: float | None = None  # this run: seconds to the first result (workers started, models loaded)
    steady_images_per_s: float | None = None  # this run, once the workers run (progress.completion_rate)

    @property
    def images_per_s(self) -> float:
        return self.images_this_run / self.timings.wall if self.timings.wall > 0 else 0.0

    def line(self, out: Path) -> str:
        resumed = f", {self.shards_resumed} of {self.shards} shards resumed" if self.shards_resumed else ""
        return (f"predicted {self.images} images{self.skipped_text()} in {self.shards} shards{resumed}; this run: "
                f"{self.images_this_run} images in {self.timings.wall:.1f} s ({self.images_per_s:.2f} img/s); "
                f"{self.detections_text()}; SAM encoder ran on {self.sam_encoder_calls} images -> {out}")


@dataclass
class _Result:
    """One image's result as the driver keeps it until its shard is complete."""

    error: str
    height: int = 0
    width: int = 0
    predictions: list = field(default_factory=list)
    names: list = field(default_factory=list)
    anomaly_score: float | None = None  # predict --anomaly: the image's map score


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 4)


def _settings(detector, sam, config: PredictConfig, options: RunOptions, source: Source) -> dict:
    """What decides the outputs (the run id hashes it with the image list); files by path, size and mtime."""
    return {"config": jsonable(asdict(config)), "detector": fingerprint(detector), "sam": fingerprint(sam),
            "thresholds": fingerprint(config.thresholds), "run_thresholds": fingerprint(config.run_thresholds), "gt_boxes": fingerprint(options.gt_boxes),
            "onnx": fingerprint(config.onnx) if config.backend != "torch" else None,
            "save_overlays": options.save_overlays, "source": {"kind": source.kind, "origin": source.origin}}


def _input_rows(source: Source, plan: ShardPlan, pending: list[int]) -> list[dict]:
    by_id = {im.id: im for im in source.images}
    rows = []
    for k in pending:
        for i in plan.shards[k]:
            img = by_id[i]
            rows.append({"id": i, "shard": k, "path": str(img.path), "file_name": img.file_name,
                         "height": -1 if img.height is None else img.height,
                         "width": -1 if img.width is None else img.width})
    return rows


def _shard_stats(results: list[_Result], rows_stats: list[dict], model: dict) -> dict:
    dets = Counter(n for r in results if not r.error for n in r.names)
    counters, seconds = Counter(), Counter()
    for s in rows_stats:
        counters.update(s.get("counters", {}))
        seconds.update(s.get("seconds", {}))
    return {"images": sum(not r.error for r in results), "skipped": [r.error for r in results if r.error],
            "detections": dict(dets), "images_with_detections": sum(bool(r.names) for r in results if not r.error),
            "counters": dict(counters), "seconds": dict(seconds), "model": model}


class _Driver:
    """Receives result rows, writes masks/overlays, commits each shard once all its images are in."""

    def __init__(self, out: Path, source: Source, plan: ShardPlan, options: RunOptions, progress: ShardProgress,
                 known_names: list[str] | None):
        self.out, self.source, self.plan, self.options, self.progress = out, source, plan, options, progress
        self.open: dict[int, dict[int, _Result]] = {}
        self.committed: set[int] = set()
        self.stats: dict[int, list[dict]] = {}
        self.model: dict = {}
        self.known_names = known_names  # GT class names in --gt-boxes mode
        self.duplicates = 0
        self.workers: Counter = Counter()  # images per worker (host:pid) in this run
        self.done_at: list[float] = []  # when a worker finished each image (wall clock)
        self.by_id = {im.id: im for im in source.images}

    def _model_seen(self, text: str) -> None:
        if self.model or not text:
            return
        self.model = json.loads(text)
        names = self.known_names if self.known_names is not None else self.model.get("class_names", [])
        ids = None if self.known_names is not None else self.model.get("category_ids")
        self.model["warnings"] = self.model.get("warnings", []) + category_mismatch(self.source, names, ids)
        for w in self.model["warnings"]:
            print(f"warning: {w}", file=sys.stderr)

    def take(self, row: dict) -> None:
        if row["fatal"]:
            raise error_from_text(str(row["fatal"]))  # a ConfigError stays one: the CLI names its flags
        self._model_seen(str(row["model"]))
        k, i = int(row["shard"]), int(row["id"])
        if k in self.committed or i in self.open.get(k, {}):  # a retried batch's copy: each image is written once
            self.duplicates += 1
            return
        got = self.open.setdefault(k, {})
        if row["stats"]:
            self.stats.setdefault(k, []).append(json.loads(row["stats"]))
        seconds = {"load": float(row["load_s"]), "write": float(row["write_s"])}
        self.stats.setdefault(k, []).append({"seconds": seconds})
        if row["error"]:
            if self.options.strict:
                raise DatasetError(str(row["error"]))
            print(f"warning: skipped: {row['error']}", file=sys.stderr)
            got[i] = _Result(str(row["error"]))
        else:
            t0 = time.perf_counter()
            files = ImageFiles([], [], row["mask"], row["overlay"] if self.options.save_overlays else None,
                               row.get("anomaly_map") or None)
            files.write(self.out, self.source.names[i])
            seconds["write"] += time.perf_counter() - t0
            score = float(row.get("anomaly_score", math.nan))
            got[i] = _Result("", int(row["image_h"]), int(row["image_w"]), json.loads(row["predictions"]),
                             json.loads(row["names"]), None if math.isnan(score) else score)
        self.workers[str(row["worker"])] += 1
        self.done_at.append(float(row["done_at"]))
        self.progress.update(images=1)
        if len(got) == len(self.plan.shards[k]):
            self._commit(k)

    def _commit(self, k: int) -> None:
        got = self.open.pop(k)
        self.committed.add(k)
        entries, preds, results = [], [], []
        for i in self.plan.shards[k]:
            r, img = got[i], self.by_id[i]
            entry = image_entry(img, self.source.names[i], (r.height, r.width), r.error or None)
            entries.append(anomaly_entry(entry, r.anomaly_score))
            preds += [] if r.error else r.predictions
            results.append(r)
        write_shard(self.out, k, self.plan.run_id, entries, preds, _shard_stats(results, self.stats.pop(k, []), self.model))
        self.progress.update(shards=1)


def ray_predict_run(detector: str | Path | None, sam: str | Path | None, config: PredictConfig,
                    source: str | Path | Source, out: Path, options: RunOptions | None = None,
                    ray_options: RayOptions | None = None) -> ShardedSummary:
    """Predict every image of `source` into `out` on a Ray cluster, in shards; resume a previous run of the same
    settings; merge the shards into the single-process outputs. DatasetError when no image could be predicted."""
    options, ro = options or RunOptions(), ray_options or RayOptions()
    if config.workers is not None or config.threads is not None:
        raise ConfigError("{workers}/{threads}: only with the local engine (ray: {num_workers}, {cpus_per_worker})",
                          "workers", "threads", "num_workers", "cpus_per_worker")
    for name in ("shard_size", "num_workers"):
        if getattr(ro, name) is not None and getattr(ro, name) < 1:
            raise ConfigError(f"{{{name}}} {getattr(ro, name)}: must be >= 1", name)
    detector, sam = required_models(detector, sam, config, options)
    source = source if isinstance(source, Source) else resolve_source(source)
    out = Path(out)
    gt = ground_truth(options.gt_boxes, source) if options.gt_boxes is not None else None
    settings = _settings(detector, sam, config, options, source)
    images = [[im.id, str(im.path), im.file_name] for im in source.images]
    plan = ShardPlan.of(run_id({**settings, "images": images, "shard_size": ro.shard_size}), [im.id for im in source.images],
                   ro.shard_size)
    inputs = source.inputs() + ([options.gt_boxes] if options.gt_boxes else [])
    check_output_dir(out, KIND, inputs, options.force)  # before any cluster is started
    done = complete_shards(out, plan) if holds_run(out, plan) else {}
    summary = ShardedSummary(timings=Timings(), shards=len(plan.shards), shards_resumed=len(done))
    t0 = time.perf_counter()
    res = None
    with ray_session(ro.address) if len(done) < len(plan.shards) else nullcontext() as ray:
        if ray is not None:  # connected and sized before the folder is touched: a bad address leaves nothing
            res = plan_resources(ray.cluster_resources(), config, ro.num_workers, ro.num_gpus, ro.cpus_per_worker,
                                 ro.split_stages)
        resumed = open_run(out, plan, settings, inputs, options.force)
        pending = [k for k in range(len(plan.shards)) if k not in done]
        if pending:
            rows = _input_rows(source, plan, pending)
            progress = ShardProgress(len(rows), len(plan.shards), len(done), ro.progress_every, options.progress)
            driver = _Driver(out, source, plan, options, progress, gt.class_names if gt is not None else None)
            if options.progress:
                print(f"predict: {len(rows)} images in {len(pending)} shards ({len(done)} already complete); "
                      f"{res.describe()}", file=sys.stderr)
            device = SimpleNamespace(type="cuda" if res.gpus_per_worker > 0 else "cpu")
            try:
                for row in predictions(ray, rows, None if detector is None else str(detector),
                                       None if sam is None else str(sam), config, options.batch or 4,
                                       options.save_overlays, res, gt, options.batch_size(device)):
                    driver.take(row)
            except BaseException:
                if not resumed and progress.shards_done == 0:  # nothing to resume: leave nothing (a bad model, ^C)
                    shutil.rmtree(output_place(out), ignore_errors=True)
                raise
            if driver.open:
                raise DatasetError(f"{out}: the pipeline ended with {len(driver.open)} shard(s) incomplete; rerun "
                                   "to finish them")
            summary.images_this_run, summary.duplicates, summary.workers = progress.done, driver.duplicates, dict(driver.workers)
            summary.first_result_s, summary.steady_images_per_s = progress.first_result_s, completion_rate(driver.done_at)
    summary.timings.wall = time.perf_counter() - t0
    totals = merge_shards(out)
    _fill(summary, totals, res)
    names = gt.class_names if gt is not None else totals.model.get("class_names", [])
    vocabulary = result_vocabulary(totals.model.get("class_names", []), totals.model.get("category_ids"), gt,
                                   config.anomaly is not None)
    write_run_annotations(out, *vocabulary, options.annotations, options.model_version, options.image_root_url)
    doc = _summary_dict(summary, totals, config, options, ro, source, names, gt is not None, plan)
    atomic_write_text(out / "summary.json", json.dumps(doc, indent=2))
    return summary


def _fill(summary: ShardedSummary, totals: ShardTotals, res: Resources | None) -> None:
    summary.images, summary.skipped = totals.images, totals.skipped
    summary.detections, summary.images_with_detections = totals.detections, totals.images_with_detections
    summary.set_counters(totals.counters)
    for k, v in totals.seconds.items():
        setattr(summary.timings, k, v)
    summary.warnings = totals.model.get("warnings", [])
    summary.resources = res.describe() if res is not None else "no worker started (every shard was complete)"


def _summary_dict(s: ShardedSummary, totals: ShardTotals, config: PredictConfig, options: RunOptions, ro: RayOptions,
                  source: Source, names: list[str], gt_mode: bool, plan: ShardPlan) -> dict:
    mode = run_mode(config, options)
    facts = RunFacts(names, None if gt_mode else totals.model.get("category_ids"), totals.model.get("device"),
                     totals.model.get("autocast"), {"kind": source.kind, "origin": source.origin}, mode, config, options,
                     totals.model.get("thresholds"))
    described = totals.model.get("anomaly")  # said by an actor when it started: its counters mean nothing here
    anomaly = {"anomaly": {k: v for k, v in described.items() if k not in ("images", "seconds")}} if described else {}
    return {
        **summary_dict(s, facts, parallel=False), **anomaly,
        "engine": {"name": "ray", "run_id": plan.run_id, "shards": s.shards, "shards_resumed": s.shards_resumed,
                   "shard_size": plan.shard_size, "images_this_run": s.images_this_run, "resources": s.resources,
                   "first_result_s": _round(s.first_result_s), "steady_images_per_s": _round(s.steady_images_per_s),
                   "duplicates_dropped": s.duplicates, "images_per_worker": s.workers, "options": asdict(ro)},
    }
