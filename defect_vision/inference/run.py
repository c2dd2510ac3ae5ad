"""A prediction run over a source (folder, glob, image, COCO json) into an output folder: predictions.json (COCO
results, RLE masks), image_ids.json, summary.json, masks/<name>.png and overlays/<name>.png.

The folder is written as a whole into a temporary folder and renamed at the end (io.atomic_dir): never over the
source, never over a folder that is not a previous prediction run (without force), never half-written. The first
failed write stops the run, naming the file and the OS error."""
from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from defect_vision.coco import load_coco
from defect_vision.detections import Detections, ImageInfo
from defect_vision.devices import Timings, intra_op_threads, timed
from defect_vision.errors import DatasetError
from defect_vision.inference.predictor import DefectPredictor, class_filter
from defect_vision.inference.sources import Loaded, Source, prefetch, resolve_source
from defect_vision.inference.workers import ModelWorkers
from defect_vision.inference.writers import finish_masks, label_mask, overlay, write_png
from defect_vision.io import atomic_dir

KIND = "predict"


@dataclass
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

    def writer_threads(self) -> int:
        return max(1, self.writers or min(4, (os.cpu_count() or 2) // 2))

    def batch_size(self, device: torch.device) -> int:
        """Images per detector forward: 4 on CUDA; 1 on the CPU, where a batch is no faster per image and the
        workers already keep every core busy."""
        return self.batch or (4 if device.type == "cuda" else 1)


@dataclass
class Summary:
    images: int = 0  # images predicted
    skipped: list[str] = field(default_factory=list)  # one message per unreadable image
    detections: Counter = field(default_factory=Counter)  # class name -> count
    images_with_detections: int = 0
    sam_encoder_calls: int = 0  # images through SAM's image encoder
    sam_encoder_batches: int = 0  # image-encoder forwards
    sam_decoder_calls: int = 0
    detector_calls: int = 0
    parallel: dict = field(default_factory=dict)  # batch, model workers, torch threads per worker
    timings: Timings = field(default_factory=Timings)
    warnings: list[str] = field(default_factory=list)

    @property
    def images_per_s(self) -> float:
        return self.images / self.timings.wall if self.timings.wall > 0 else 0.0

    def line(self, out: Path) -> str:
        per_class = ", ".join(f"{k} {v}" for k, v in sorted(self.detections.items())) or "none"
        skipped = f" ({len(self.skipped)} unreadable skipped)" if self.skipped else ""
        return (f"predicted {self.images} images{skipped} in {self.timings.wall:.1f} s ({self.images_per_s:.2f} img/s): "
                f"{sum(self.detections.values())} detections ({per_class}); SAM encoder ran on "
                f"{self.sam_encoder_calls} images -> {out}")


class GtBoxes:
    """Ground-truth boxes of a COCO json, looked up by image id (same json as the source) or by resolved path."""

    def __init__(self, path: Path, source: Source):
        self.coco = load_coco(path, masks=False)
        by_path = {im.path: im.id for im in self.coco.images}
        same = source.kind == "coco" and Path(source.origin).resolve() == Path(path).resolve()
        self.gt_id = {img.id: (img.id if same else by_path.get(img.path)) for img in source.images}
        if not any(v is not None for v in self.gt_id.values()):
            raise DatasetError(f"{path}: none of the source images is in this json (matched by path under info.image_root)")

    @property
    def class_names(self) -> list[str]:
        return self.coco.class_names

    def detections_for(self, image: ImageInfo) -> Detections:
        gt_id = self.gt_id.get(image.id)
        if gt_id is None:
            return Detections.empty(class_names=self.coco.class_names, category_ids=self.coco.category_ids)
        gt = self.coco.detections[gt_id]
        return Detections(gt.xyxy.copy(), gt.class_id.copy(), np.ones(len(gt)), class_names=gt.class_names,
                          category_ids=gt.category_ids)


def _category_mismatch(source: Source, names: list[str], category_ids: list[int] | None) -> list[str]:
    """Warn when a COCO source's categories differ from the model's classes (ids would not mean the same)."""
    if source.coco is None or not source.coco.categories:
        return []
    ids = category_ids or list(range(1, len(names) + 1))
    cats = {int(c["id"]): (c.get("name"), c.get("prompt")) for c in source.coco.categories}
    bad = [f"{cid}: model '{n}' vs json {cats.get(cid, ('missing',))[0]!r}" for cid, n in zip(ids, names)
           if n not in cats.get(cid, ())]
    return [f"{source.origin}: category ids differ from the model's classes ({'; '.join(bad)})"] if bad else []


def predict_run(predictor: DefectPredictor, source: str | Path | Source, out: Path,
                options: RunOptions | None = None) -> Summary:
    """Predict every image of `source` into the folder `out`; DatasetError when no image could be predicted."""
    from tqdm import tqdm

    options = options or RunOptions()
    for name in ("batch", "writers"):
        if getattr(options, name) is not None and getattr(options, name) < 1:
            raise DatasetError(f"--{name} {getattr(options, name)}: must be >= 1")
    source = source if isinstance(source, Source) else resolve_source(source)
    summary = Summary(timings=predictor.timings)
    gt = GtBoxes(options.gt_boxes, source) if options.gt_boxes is not None else None
    if gt is None and predictor.detector is None:
        raise DatasetError("--detector: required unless --gt-boxes gives the boxes")
    names = gt.class_names if gt is not None else predictor.class_names
    gt_filter = class_filter(predictor.config.classes, names) if gt is not None else None
    summary.warnings += predictor.thresholds.warnings
    summary.warnings += _category_mismatch(source, names, None if gt is not None else predictor.category_ids)
    for w in summary.warnings:
        print(f"warning: {w}", file=sys.stderr)
    inputs = source.inputs() + ([options.gt_boxes] if options.gt_boxes else [])
    t = summary.timings
    results: list[Detections] = []
    ids: list[dict] = []
    threads = options.writer_threads()
    size = options.batch_size(predictor.device)
    workers, threads_each = predictor.config.cpu_split(predictor.device)
    summary.parallel = {"batch": size, "workers": workers, "torch_threads_per_worker": threads_each}
    with atomic_dir(out, KIND, inputs, options.force) as tmp, \
            ThreadPoolExecutor(max_workers=threads, thread_name_prefix="writer") as writer:
        pending: list[Future] = []

        def check_writes(wait: bool = False, limit: int = 2 * threads) -> None:
            """Raise the first failed write now (a full disk stops the run at once), not at the end; keep at most
            `limit` images (pixels and mask crops) queued for the writers."""
            while pending and (wait or pending[0].done() or len(pending) >= limit):
                pending.pop(0).result()

        def write(loaded: Loaded, det: Detections) -> None:
            with timed(t, "write"):
                finish_masks(det)  # RLEs from the mask crops, here rather than between GPU batches
                h, w = loaded.pixels.shape[:2]
                name = source.names[loaded.image.id]
                write_png(tmp / "masks" / f"{name}.png", label_mask(det, h, w))
                if options.save_overlays:
                    write_png(tmp / "overlays" / f"{name}.png", overlay(loaded.pixels, det))
                det.data.pop("mask_crops", None)  # predictions.json needs the RLEs only

        def infer(batch: list[Loaded]) -> list[Detections]:
            """The models on one batch (in a model worker when there are several)."""
            if gt is not None:
                dets = [gt.detections_for(b.image) for b in batch]
                if gt_filter is not None:
                    dets = [d[np.isin(d.class_id, gt_filter)] for d in dets]
            else:
                dets = predictor.detect([b.pixels for b in batch])
            for loaded, det in zip(batch, dets):
                img = loaded.image
                det.image = ImageInfo(img.id, img.file_name, *loaded.pixels.shape[:2], img.path)
            return predictor.segment_batch([b.pixels for b in batch], dets, finish=False)

        def emit(batch: list[Loaded], dets: list[Detections]) -> None:
            """A finished batch, in source order: to the writers and the summary."""
            for loaded, det in zip(batch, dets):
                results.append(det)
                check_writes()
                pending.append(writer.submit(write, loaded, det))
                summary.images += 1
                summary.images_with_detections += int(len(det) > 0)
                summary.detections.update(det.names)
                bar.update(1)

        def drain(limit: int) -> None:
            """Emit finished batches in order, waiting for the oldest while more than `limit` are in flight."""
            while inflight and (len(inflight) > limit or inflight[0][1].done()):
                done, future = inflight.popleft()
                emit(done, future.result())

        def submit(batch: list[Loaded]) -> None:
            if workers == 1:  # in this thread (CUDA's current device and streams are per thread)
                future: Future = Future()
                future.set_result(infer(batch))
            else:
                future = models.submit(infer, batch)
            inflight.append((batch, future))
            drain(workers)

        t0 = time.perf_counter()
        batch: list[Loaded] = []
        inflight: deque[tuple[list[Loaded], Future]] = deque()
        with ModelWorkers(workers if workers > 1 else 0) as models, intra_op_threads(threads_each), \
                tqdm(total=len(source.images), desc="predict", unit="img", disable=not options.progress) as bar:
            for loaded in prefetch(source.images, max(options.prefetch, size * workers)):
                t.load += loaded.load_s
                entry = {"id": loaded.image.id, "file_name": loaded.image.file_name, "path": str(loaded.image.path)}
                if loaded.pixels is None:
                    if options.strict:
                        raise DatasetError(loaded.error)
                    print(f"warning: skipped: {loaded.error}", file=sys.stderr)
                    summary.skipped.append(loaded.error)
                    ids.append({**entry, "skipped": loaded.error})
                    bar.update(1)
                    continue
                h, w = loaded.pixels.shape[:2]
                ids.append({**entry, "height": h, "width": w, "mask": f"masks/{source.names[loaded.image.id]}.png"})
                batch.append(loaded)
                if len(batch) == size:
                    submit(batch)
                    batch = []
            if batch:
                submit(batch)
            drain(0)
            check_writes(wait=True)
        if summary.images == 0:
            first = summary.skipped[0] if summary.skipped else "no image"
            raise DatasetError(f"no image could be predicted ({len(summary.skipped)} unreadable; first: {first})")
        t.wall = time.perf_counter() - t0
        t.settle()
        if predictor.segmenter is not None:
            summary.sam_encoder_calls = predictor.segmenter.encoder_calls
            summary.sam_encoder_batches = getattr(predictor.segmenter, "encoder_batches", summary.sam_encoder_calls)
            summary.sam_decoder_calls = predictor.segmenter.decoder_calls
        summary.detector_calls = predictor.detector.calls if predictor.detector is not None else 0
        predictions = [e for det in sorted(results, key=lambda d: d.image.id) for e in det.to_coco()]
        (tmp / "predictions.json").write_text(json.dumps(predictions))
        (tmp / "image_ids.json").write_text(json.dumps(ids, indent=1))
        mode = "gt_boxes" if gt is not None else ("box_only" if predictor.segmenter is None else "detector+sam")
        (tmp / "summary.json").write_text(json.dumps(_summary_dict(summary, predictor, source, names, mode, options), indent=2))
    return summary


def _summary_dict(s: Summary, predictor: DefectPredictor, source: Source, names: list[str], mode: str,
                  options: RunOptions) -> dict:
    ids = predictor.category_ids if mode != "gt_boxes" and predictor.category_ids else list(range(1, len(names) + 1))
    dtype = predictor.dtype
    jsonable = lambda d: {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}  # noqa: E731
    return {
        "images": s.images, "skipped": s.skipped, "images_with_detections": s.images_with_detections,
        "detections": sum(s.detections.values()), "detections_per_class": dict(sorted(s.detections.items())),
        "categories": {str(k): v for k, v in zip(ids, names)},
        "sam_encoder_calls": s.sam_encoder_calls, "sam_encoder_batches": s.sam_encoder_batches,
        "sam_decoder_calls": s.sam_decoder_calls,
        "detector_calls": s.detector_calls, "images_per_s": round(s.images_per_s, 4), "parallel": s.parallel,
        "timings_s": s.timings.as_dict(), "device": str(predictor.device),
        "autocast": str(dtype).replace("torch.", "") if dtype else None,
        "source": {"kind": source.kind, "origin": source.origin}, "mode": mode,
        "config": jsonable(asdict(predictor.config)), "options": jsonable(asdict(options)),
        "warnings": s.warnings,
    }
