"""A prediction run over a source (folder, glob, image, COCO json, CSV) into an output folder: predictions.json (COCO
results, RLE masks), image_ids.json, summary.json, masks/<name>.png and overlays/<name>.png.

The folder is written as a whole into a temporary folder and renamed at the end (io.atomic_dir): never over the
source, never over a folder that is not a previous prediction run (without force), never half-written. The first
failed write stops the run, naming the file and the OS error. Reader -> model workers -> writers: `PredictionRun`."""
from __future__ import annotations

import os
import sys
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from defect_vision.detections import Detections
from defect_vision.devices import intra_op_threads, timed
from defect_vision.errors import ConfigError, DatasetError
from defect_vision.inference.anomaly import anomaly_category_id, anomaly_vocabulary
from defect_vision.inference.backends import check_masks
from defect_vision.inference.config import PredictConfig
from defect_vision.inference.gt_boxes import GtBoxes
from defect_vision.inference.predictor import DefectPredictor
from defect_vision.inference.run_files import (
    encode_image,
    image_entry,
    write_run_annotations,
    write_run_files,
)
from defect_vision.inference.sources import Loaded, Source, prefetch, resolve_source
from defect_vision.inference.summary import RunFacts, Summary, summary_dict
from defect_vision.inference.workers import ModelWorkers
from defect_vision.io import atomic_dir

KIND = "predict"


@dataclass(frozen=True)
class RunOptions:
    """How a run reads and writes (what it predicts is the predictor's PredictConfig)."""

    batch: int | None = None  # images per detector forward (default: 4 on CUDA, 1 on the CPU)
    save_overlays: bool = False
    gt_boxes: Path | None = None  # COCO json: SAM on its ground-truth boxes instead of the detector
    strict: bool = False  # an unreadable image is an error (default: skipped with a warning)
    prefetch: int = 4
    force: bool = False
    progress: bool = True
    writers: int | None = None  # writer threads (RLEs, PNGs, overlays); default: half the CPU cores, 1 to 4
    annotations: tuple[str, ...] = ()  # labelling tools to write pre-annotations for (formats/annotations.py TOOLS)
    image_root_url: str | None = None  # Label Studio data.image prefix (default: the file name relative to the source)
    model_version: str = "defect-vision"  # the model's name in the pre-annotations

    def __post_init__(self):
        for name in ("batch", "writers", "prefetch"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{{{name}}} {value}: must be >= 1", name)
        if self.annotations:
            from defect_vision.formats.annotations import check_tools

            check_tools(self.annotations)  # an unknown tool or a missing library fails before any prediction

    def writer_threads(self) -> int:
        return max(1, self.writers or min(4, (os.cpu_count() or 2) // 2))

    def batch_size(self, device) -> int:
        """Images per detector forward: 4 on CUDA; 1 on the CPU, where a batch is no faster per image and the
        workers already keep every core busy. Both engines use it, so their numerics are the same."""
        return self.batch or (4 if device.type == "cuda" else 1)


def required_models(detector: Path | None, sam: Path | None, config: PredictConfig, options: RunOptions
                    ) -> tuple[Path | None, Path | None]:
    """The one check of which model files a run needs, for either engine: (detector, sam) to load, None where the
    run needs none (ground-truth boxes need no detector, box_only no SAM, an exported backend reads `onnx`)."""
    check_masks(config, options.gt_boxes is None)
    if config.backend != "torch":
        if config.onnx is None:
            raise ConfigError(f"{{onnx}}: required with {{backend}} {config.backend} (a folder written by "
                              "defect-vision export)", "onnx", "backend")
    else:
        if options.gt_boxes is None and detector is None:
            raise ConfigError("{detector}: required unless {gt_boxes} gives the boxes", "detector", "gt_boxes")
        if needs_sam(config) and sam is None:
            raise ConfigError("{sam}: required unless {box_only} or {masks} detector", "sam", "box_only", "masks")
    return None if options.gt_boxes is not None else detector, sam if needs_sam(config) else None


def needs_sam(config: PredictConfig) -> bool:
    """A SAM checkpoint is read unless the masks are the boxes (box_only) or the detector's own (masks detector)."""
    return not config.box_only and config.masks != "detector"


def run_mode(config: PredictConfig, options: RunOptions) -> str:
    """summary.json's `mode`, for either engine: where the boxes and the masks come from."""
    if options.gt_boxes is not None:
        return "gt_boxes"
    if config.box_only:
        return "box_only"
    return "detector_masks" if config.masks == "detector" else "detector+sam"


def result_vocabulary(names: list[str], model_ids: list[int] | None, gt: GtBoxes | None, anomaly: bool
                      ) -> tuple[list[str], list[int] | None]:
    """The classes and category ids of a run's predictions.json, for either engine: the ground-truth json's with
    --gt-boxes, else the model's; with --anomaly, plus `anomaly` (inference/anomaly.py's rule)."""
    names, ids = (gt.class_names, gt.coco.category_ids) if gt is not None else (names, model_ids)
    if anomaly:
        names, ids = anomaly_vocabulary(Detections.empty(class_names=list(names), category_ids=ids))
    return list(names), ids


def category_mismatch(source: Source, names: list[str], category_ids: list[int] | None) -> list[str]:
    """Warn when a COCO source's categories differ from the model's classes (ids would not mean the same)."""
    if source.coco is None or not source.coco.categories:
        return []
    ids = category_ids or list(range(1, len(names) + 1))
    cats = {int(c["id"]): (c.get("name"), c.get("prompt")) for c in source.coco.categories}
    bad = [f"{cid}: model '{n}' vs json {cats.get(cid, ('missing',))[0]!r}" for cid, n in zip(ids, names)
           if n not in cats.get(cid, ())]
    return [f"{source.origin}: category ids differ from the model's classes ({'; '.join(bad)})"] if bad else []


def ground_truth(path: Path, source: Source) -> GtBoxes:
    """The json's boxes for the source's images: by id when it is the source json itself, else by path."""
    same = source.kind == "coco" and Path(source.origin).resolve() == Path(path).resolve()
    return GtBoxes.match(path, source.images, same)


def run_facts(predictor: DefectPredictor, source: Source, options: RunOptions) -> RunFacts:
    mode = run_mode(predictor.config, options)
    dtype = predictor.dtype
    return RunFacts(predictor.class_names, predictor.category_ids, str(predictor.device),
                    str(dtype).replace("torch.", "") if dtype else None, {"kind": source.kind, "origin": source.origin},
                    mode, predictor.config, options, predictor.thresholds.describe(predictor.class_names))


@dataclass
class PredictionRun:
    """Reader -> model workers -> writers over one source into one temporary folder; results leave the models in
    source order, so the files do not depend on the number of workers."""

    predictor: DefectPredictor
    source: Source
    folder: Path  # the temporary output folder
    options: RunOptions
    summary: Summary
    writer: ThreadPoolExecutor
    models: ModelWorkers
    workers: int
    results: list[Detections] = field(default_factory=list)
    entries: list[dict] = field(default_factory=list)  # image_ids.json
    writes: deque = field(default_factory=deque)  # pending writer futures, oldest first
    inflight: deque = field(default_factory=deque)  # (batch, future of its Detections), oldest first
    bar: object = None

    def write(self, loaded: Loaded, det: Detections) -> None:
        """A writer thread: the image's files (RLEs from the crops, PNGs)."""
        with timed(self.summary.timings, "write"):
            h, w = loaded.pixels.shape[:2]
            files = encode_image(det, loaded.pixels if self.options.save_overlays else None, h, w)
            files.write(self.folder, self.source.names[loaded.image.id])

    def check_writes(self, wait: bool = False) -> None:
        """Raise the first failed write now (a full disk stops the run at once), not at the end; keep at most two
        images (pixels and mask crops) queued per writer."""
        limit = 2 * self.options.writer_threads()
        while self.writes and (wait or self.writes[0].done() or len(self.writes) >= limit):
            self.writes.popleft().result()

    def infer(self, batch: list[Loaded]) -> list[Detections]:
        """The models on one batch (in a model worker when there are several)."""
        return self.predictor.run_batch([b.pixels for b in batch], [b.image for b in batch], finish=False)

    def emit(self, batch: list[Loaded], dets: list[Detections]) -> None:
        """A finished batch, in source order: to the writers and the summary."""
        for loaded, det in zip(batch, dets):
            self.results.append(det)
            self.check_writes()
            self.writes.append(self.writer.submit(self.write, loaded, det))
            self.summary.count(det.names)
            self.bar.update(1)

    def drain(self, limit: int) -> None:
        """Emit finished batches in order, waiting for the oldest while more than `limit` are in flight."""
        while self.inflight and (len(self.inflight) > limit or self.inflight[0][1].done()):
            batch, future = self.inflight.popleft()
            self.emit(batch, future.result())

    def submit(self, batch: list[Loaded]) -> None:
        if self.workers == 1:  # in this thread (CUDA's current device and streams are per thread)
            future: Future = Future()
            future.set_result(self.infer(batch))
        else:
            future = self.models.submit(self.infer, batch)
        self.inflight.append((batch, future))
        self.drain(self.workers)

    def skip(self, loaded: Loaded) -> None:
        if self.options.strict:
            raise DatasetError(loaded.error)
        print(f"warning: skipped: {loaded.error}", file=sys.stderr)
        self.summary.skipped.append(loaded.error)
        self.entries.append(image_entry(loaded.image, "", error=loaded.error))
        self.bar.update(1)

    def read(self, size: int) -> None:
        """Every image of the source through the models, `size` per batch."""
        batch: list[Loaded] = []
        for loaded in prefetch(self.source.images, max(self.options.prefetch, size * self.workers)):
            self.summary.timings.load += loaded.load_s
            if loaded.pixels is None:
                self.skip(loaded)
                continue
            name = self.source.names[loaded.image.id]
            self.entries.append(image_entry(loaded.image, name, loaded.pixels.shape[:2]))
            batch.append(loaded)
            if len(batch) == size:
                self.submit(batch)
                batch = []
        if batch:
            self.submit(batch)
        self.drain(0)
        self.check_writes(wait=True)


def predict_run(predictor: DefectPredictor, source: str | Path | Source, out: Path,
                options: RunOptions | None = None) -> Summary:
    """Predict every image of `source` into the folder `out`; DatasetError when no image could be predicted."""
    from tqdm import tqdm

    options = options or RunOptions()
    source = source if isinstance(source, Source) else resolve_source(source)
    gt = ground_truth(options.gt_boxes, source) if options.gt_boxes is not None else None
    if gt is not None:
        predictor = predictor.with_detector(gt)
    predictor.require_detector()
    summary = Summary(timings=predictor.timings)
    summary.warnings += predictor.thresholds.warnings
    summary.warnings += category_mismatch(source, predictor.class_names,
                                          None if options.gt_boxes is not None else predictor.category_ids)
    if predictor.anomaly is not None and source.coco is not None:
        predictor.anomaly.check_category(source.coco.info.get("category"), str(source.origin))
    for w in summary.warnings:
        print(f"warning: {w}", file=sys.stderr)
    inputs = source.inputs() + ([options.gt_boxes] if options.gt_boxes else [])
    inputs += [predictor.anomaly.folder] if predictor.anomaly is not None else []
    size = options.batch_size(predictor.device)
    workers, threads_each = predictor.config.cpu_split(predictor.device)
    summary.parallel = {"batch": size, "workers": workers, "torch_threads_per_worker": threads_each}
    t0 = time.perf_counter()
    with atomic_dir(out, KIND, inputs, options.force) as tmp, \
            ThreadPoolExecutor(max_workers=options.writer_threads(), thread_name_prefix="writer") as writer, \
            ModelWorkers(workers if workers > 1 else 0) as models, intra_op_threads(threads_each), \
            tqdm(total=len(source.images), desc="predict", unit="img", disable=not options.progress) as bar:
        run = PredictionRun(predictor, source, tmp, options, summary, writer, models, workers, bar=bar)
        run.read(size)
        if summary.images == 0:
            first = summary.skipped[0] if summary.skipped else "no image"
            raise DatasetError(f"no image could be predicted ({len(summary.skipped)} unreadable; first: {first})")
        summary.timings.wall = time.perf_counter() - t0
        summary.timings.settle()
        summary.set_counters(predictor.counters())
        doc = summary_dict(summary, run_facts(predictor, source, options))
        if predictor.anomaly is not None:
            doc["anomaly"] = predictor.anomaly.describe(anomaly_category_id(predictor.class_names, predictor.category_ids))
        write_run_files(tmp, run.results, run.entries, doc)
        write_run_annotations(tmp, *result_vocabulary(predictor.class_names, predictor.category_ids, gt,
                                                      predictor.anomaly is not None),
                              options.annotations, options.model_version, options.image_root_url)
    return summary


def predict_files(detector: Path | None, sam: Path | None, config: PredictConfig, source: str | Path | Source, out: Path,
                  options: RunOptions | None = None) -> Summary:
    """The local engine from model files: check which files the run needs, load them, predict_run."""
    options = options or RunOptions()
    detector, sam = required_models(detector, sam, config, options)
    return predict_run(DefectPredictor(detector, sam, config), source, out, options)
