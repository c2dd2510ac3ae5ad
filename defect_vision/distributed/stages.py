"""The stages of the Ray Data prediction pipeline, as plain batch functions over columns (no Ray import here):
read/decode -> models (detector, then SAM; `PredictWorker`, one per actor, loaded once) -> encode (RLEs, label and
overlay PNGs, COCO entries). The encode step is the single-process writer's own code (finish_masks, label_mask,
overlay, png_bytes, Detections.to_coco), so the files are the same bytes."""
from __future__ import annotations

import json
import os
import pickle
import socket
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from defect_vision.detections import Detections, ImageInfo
from defect_vision.errors import DatasetError, error_text
from defect_vision.inference.anomaly import anomaly_category_id
from defect_vision.inference.gt_boxes import GtBoxes
from defect_vision.inference.predictor import DefectPredictor, PredictConfig
from defect_vision.inference.run_files import encode_image
from defect_vision.inference.sources import read_source_image
from defect_vision.inference.summary import COUNTERS

NO_PIXELS = np.zeros((0, 0, 3), np.uint8)  # the pixels column of an unreadable image
STAGES = ("detector", "sam_encoder", "sam_decoder")  # the predictor's timed stages


def _column(values: list) -> np.ndarray:
    """A batch column of Python objects (bytes, str, arrays) that numpy must not turn into fixed-width strings."""
    out = np.empty(len(values), object)
    out[:] = values
    return out


def read_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Read/decode stage: add `pixels` (RGB uint8; 0x0 when unreadable), `error` (why unreadable, else "") and
    `load_s`, with the single-process reader (same checks, same messages)."""
    pixels, errors, seconds = [], [], []
    for i in range(len(batch["id"])):
        h, w = int(batch["height"][i]), int(batch["width"][i])
        info = ImageInfo(int(batch["id"][i]), str(batch["file_name"][i]), h if h >= 0 else None, w if w >= 0 else None,
                         Path(str(batch["path"][i])))
        loaded = read_source_image(info)
        pixels.append(NO_PIXELS if loaded.pixels is None else loaded.pixels)
        errors.append(loaded.error or "")
        seconds.append(loaded.load_s)
    return {**batch, "pixels": _column(pixels), "error": _column(errors), "load_s": np.array(seconds, float)}


def encode_one(det: Detections, pixels: np.ndarray | None, height: int, width: int) -> dict:
    """The files of one predicted image as row columns: COCO entries (JSON text), label-mask PNG, overlay PNG (b""
    without), class names (JSON text); encoded by the single-process run's own code (run_files.encode_image)."""
    score = det.image.extra.get("anomaly_score") if det.image is not None else None
    files = encode_image(det, pixels, height, width)
    return {"predictions": json.dumps(files.predictions), "mask": files.mask_png, "overlay": files.overlay_png or b"",
            "names": json.dumps(files.names), "anomaly_map": files.anomaly_png or b"",
            "anomaly_score": np.nan if score is None else float(score)}


def encode_rows(batch: dict[str, np.ndarray], dets: list[Detections | None], overlays: bool) -> dict[str, np.ndarray]:
    """The batch with its files added (an unreadable image, or a model error, gets none); `write_s` on row 0."""
    t0 = time.perf_counter()
    out = {k: [] for k in ("predictions", "mask", "overlay", "names", "anomaly_map", "anomaly_score")}
    for i, det in enumerate(dets):
        if det is None:
            row = {"predictions": "[]", "mask": b"", "overlay": b"", "names": "[]", "anomaly_map": b"",
                   "anomaly_score": np.nan}
        else:
            row = encode_one(det, batch["pixels"][i] if overlays else None, int(batch["image_h"][i]), int(batch["image_w"][i]))
        for k in out:
            out[k].append(row[k])
    rest = {k: v for k, v in batch.items() if k not in ("det", "pixels")}
    write_s = np.zeros(len(dets))
    if len(dets):
        write_s[0] = time.perf_counter() - t0
    return {**rest, **{k: _column(v) for k, v in out.items()}, "write_s": write_s}


def encode_batch(batch: dict[str, np.ndarray], overlays: bool) -> dict[str, np.ndarray]:
    """Encode stage (CPU tasks beside GPU model actors): `det` (pickled Detections with mask crops) -> the files."""
    dets = [pickle.loads(d) if len(d) else None for d in batch["det"]]
    return encode_rows(batch, dets, overlays)


class PredictWorker:
    """Model stage: a DefectPredictor loaded once per actor (with `gt`, ground-truth boxes as its detector); each
    call runs `DefectPredictor.run_batch` on the readable images, `detect_batch` at a time (the local run's batch, so
    both engines compute the same numbers), and, with `encode`, also writes the results (CPU-only runs: the cores
    are the limit, a separate stage would only copy). A model that cannot be loaded (DatasetError) comes back as
    the `fatal` column of every row, so the driver reports it in one line."""

    def __init__(self, detector: str | None, sam: str | None, config: PredictConfig, encode: bool, overlays: bool,
                 gpus: float, threads: int, gt: GtBoxes | None = None, detect_batch: int | None = None):
        import torch

        if gpus <= 0 and threads > 0:
            torch.set_num_threads(threads)
        device = "cuda" if gpus > 0 else "cpu"  # Ray gives the actor its GPU as cuda:0 (CUDA_VISIBLE_DEVICES)
        self.encode, self.overlays, self.fatal = encode, overlays, ""
        self.worker = f"{socket.gethostname()}:{os.getpid()}"  # which actor (process) predicted a row
        try:
            # the actor's share of the cores, all for its one stream of batches (exported backends' sessions too)
            cpu_threads = threads if gpus <= 0 and threads > 0 else None
            self.predictor = DefectPredictor(detector, sam, replace(config, device=device, threads=cpu_threads, workers=1))
            if gt is not None:
                self.predictor = self.predictor.with_detector(gt)
        except (DatasetError, OSError) as exc:  # e.g. a missing or wrong checkpoint: one line in the driver
            self.predictor, self.fatal = None, error_text(exc)
        self.detect_batch = detect_batch or (4 if gpus > 0 else 1)
        self.describe = json.dumps(self._describe())

    def _describe(self) -> dict:
        p = self.predictor
        if p is None:
            return {}
        return {"class_names": p.class_names, "category_ids": p.category_ids, "device": str(p.device),
                "autocast": str(p.dtype).replace("torch.", "") if p.dtype else None, "warnings": p.thresholds.warnings,
                "thresholds": p.thresholds.describe(p.class_names),
                "anomaly": None if p.anomaly is None else p.anomaly.describe(
                    anomaly_category_id(p.class_names, p.category_ids))}

    def _predict(self, batch: dict[str, np.ndarray], ok: list[int]) -> list[Detections]:
        """run_batch over the readable rows `ok`, detect_batch images at a time."""
        dets: list[Detections] = []
        for start in range(0, len(ok), self.detect_batch):
            rows = ok[start : start + self.detect_batch]
            infos = [ImageInfo(int(batch["id"][i]), str(batch["file_name"][i]), path=Path(str(batch["path"][i]))) for i in rows]
            dets += self.predictor.run_batch([batch["pixels"][i] for i in rows], infos, finish=False)
        return dets

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["id"])
        fatal = [self.fatal] * n
        dets: list[Detections | None] = [None] * n
        p = self.predictor
        before = p.counters() if p is not None else {}
        seconds = {s: getattr(p.timings, s) for s in STAGES} if p is not None else {}
        ok = [i for i in range(n) if not batch["error"][i]] if p is not None else []
        if ok:
            for i, det in zip(ok, self._predict(batch, ok)):
                dets[i] = det
            p.timings.settle()
        sizes = [batch["pixels"][i].shape[:2] for i in range(n)]
        out = {k: v for k, v in batch.items() if k != "pixels"}
        out.update(fatal=_column(fatal), image_h=np.array([s[0] for s in sizes], np.int64),
                   image_w=np.array([s[1] for s in sizes], np.int64), model=_column([self.describe] * n),
                   worker=_column([self.worker] * n))
        stats = [""] * n
        if p is not None and n:
            after = p.counters()
            stats[0] = json.dumps({"counters": {k: after[k] - before[k] for k in COUNTERS},
                                   "seconds": {s: getattr(p.timings, s) - seconds[s] for s in STAGES}})
        out["stats"] = _column(stats)
        if self.overlays:
            out["pixels"] = batch["pixels"]
        if self.encode:
            out = encode_rows(out, dets, self.overlays)
        else:
            out["det"] = _column([pickle.dumps(d) if d is not None else b"" for d in dets])
        out["done_at"] = np.full(n, time.time())  # wall clock: throughput once the workers run (completion_rate)
        return out
