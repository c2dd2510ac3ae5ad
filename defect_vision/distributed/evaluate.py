"""MVTec pixel metrics (pixel AUROC, AUPRO, max-F1, region max-F1, image AUROC) of a sharded prediction run, one
shard at a time: each shard's masks feed its own PixelAccumulator (per-score-level pixel counts, never the pixels),
and the accumulators merge exactly, so the figures are those of `evaluate()` on the merged predictions.json
while no process holds more than one shard's masks. Two passes: the distinct scores of every shard first (the
region max-F1 thresholds are quantiles of all of them), then the counts. Locally, or as Ray tasks (`engine="ray"`)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from defect_vision.coco import CocoDataset, load_results
from defect_vision.distributed.merge import check_shards
from defect_vision.distributed.shards import shard_paths
from defect_vision.errors import ConfigError
from defect_vision.evaluation import pixel_metrics
from defect_vision.evaluation.inputs import image_id_map, load_gt, of_image
from defect_vision.evaluation.metrics import EvalConfig
from defect_vision.io import read_json

ENGINES = ("local", "ray")


def _shard_ids(doc: dict, ids: dict[int, int] | None, gt: CocoDataset) -> list[int]:
    """The GT image ids of a shard's predicted images."""
    own = [e["id"] for e in doc["images"] if "skipped" not in e]
    return [ids[i] for i in own if i in ids] if ids is not None else [i for i in own if i in gt.detections]


def shard_scores(out: Path, k: int, gt: CocoDataset, ids: dict[int, int] | None) -> np.ndarray:
    """Distinct scores of shard k's predictions on GT images (what `evaluate` takes its region thresholds from)."""
    path = shard_paths(out, k)[0]
    entries = read_json(path, "shard predictions")
    keep = (lambda i: i in ids) if ids is not None else (lambda i: i in gt.detections)
    return np.unique(np.array([float(e["score"]) for e in entries if keep(e["image_id"])], float))


def shard_pixels(out: Path, k: int, doc: dict, gt: CocoDataset, ids: dict[int, int] | None,
                 thresholds: np.ndarray) -> pixel_metrics.PixelAccumulator:
    """The pixel counts of shard k's images (loaded alone)."""
    acc = pixel_metrics.PixelAccumulator(thresholds)
    predictions = load_results(shard_paths(out, k)[0], gt, ids)
    for gid in _shard_ids(doc, ids, gt):
        im = gt.image(gid)
        pixel_metrics.add_image(acc, gt.detections[gid], of_image(predictions, gt, gid), im)
    return acc


def _rest_pixels(gt: CocoDataset, covered: set[int], thresholds: np.ndarray) -> pixel_metrics.PixelAccumulator:
    """GT images no shard predicted (outside the run, or unreadable there): no prediction, as `evaluate` counts them."""
    acc = pixel_metrics.PixelAccumulator(thresholds)
    for im in gt.images:
        if im.id not in covered:
            pixel_metrics.add_image(acc, gt.detections[im.id], of_image({}, gt, im.id), im)
    return acc


def sharded_pixel_metrics(gt: CocoDataset | Path, out: Path, config: EvalConfig = EvalConfig(), engine: str = "local",
                          address: str | None = None) -> dict:
    """Pixel metrics of the sharded run folder `out` against `gt`, as `evaluate(gt, out/predictions.json)` gives them
    in `pixel` and `image_auroc` (same keys; equal up to float summation order)."""
    if engine not in ENGINES:
        raise ConfigError(f"{{engine}} {engine}: expected one of {', '.join(ENGINES)}", "engine")
    out = Path(out)
    gt = load_gt(gt)
    _, docs = check_shards(out)
    entries = [e for d in docs for e in d["images"]]
    ids = image_id_map(out / "predictions.json", gt, entries, out / "shards")
    covered = {g for d in docs for g in _shard_ids(d, ids, gt)}
    if engine == "ray":
        return _on_ray(gt, out, docs, ids, covered, config, address)
    scores = [shard_scores(out, k, gt, ids) for k in range(len(docs))]
    thresholds = pixel_metrics.region_thresholds(np.concatenate(scores + [[0.0]]), config.region_steps)
    acc = _rest_pixels(gt, covered, thresholds)
    for k, doc in enumerate(docs):
        acc.merge(shard_pixels(out, k, doc, gt, ids, thresholds))
    return acc.result()


def _on_ray(gt: CocoDataset, out: Path, docs: list[dict], ids, covered: set[int], config: EvalConfig,
            address: str | None) -> dict:
    from defect_vision.distributed.cluster import ray_session

    with ray_session(address) as ray:
        scores_task, pixels_task = ray.remote(shard_scores), ray.remote(shard_pixels)
        gt_ref = ray.put(gt)
        scores = ray.get([scores_task.remote(out, k, gt_ref, ids) for k in range(len(docs))])
        thresholds = pixel_metrics.region_thresholds(np.concatenate(scores + [[0.0]]), config.region_steps)
        parts = [pixels_task.remote(out, k, doc, gt_ref, ids, thresholds) for k, doc in enumerate(docs)]
        acc = _rest_pixels(gt, covered, thresholds)
        for part in ray.get(parts):
            acc.merge(part)
    return acc.result()
