"""`defect-vision select`'s folder: the prediction spine (predict_run) on every unlabelled image at a low
confidence, each image scored (inference/selection.py), the top N with their pre-annotations (the detections at the
thresholds, formats/annotations.py), linked or copied into images/, and selection.csv, candidates.csv, summary.json.
Written as a whole into a temporary folder and renamed at the end (io.atomic_dir), never over an input."""
from __future__ import annotations

import csv
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from defect_vision.inference.predictor import DefectPredictor
from defect_vision.inference.run import RunOptions, predict_run
from defect_vision.inference.run_files import run_detections
from defect_vision.inference.selection import (
    TERMS,
    Candidate,
    SelectConfig,
    dhash,
    rank,
    ranked,
    rarity,
    score_image,
)
from defect_vision.inference.sources import Source, resolve_source
from defect_vision.io import atomic_dir
from defect_vision.thresholds import ClassThresholds

KIND = "select"
COLUMNS = ("rank", "image", "score", "reason", *TERMS, "detections", "shown", "path")


@dataclass(frozen=True)
class SelectOptions:
    """What the folder holds besides the ranking."""

    annotations: tuple[str, ...] = ("labelstudio", "cvat", "fiftyone")  # formats/annotations.py TOOLS
    copy: bool = False  # copy the picked images into images/ (default: symlinks)
    model_version: str = "defect-vision"
    force: bool = False
    image_root: str | None = None  # Label Studio's prefix before each image's name (default: the name in images/)


def _gray(path: Path):
    import cv2

    return cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)


def _hash(c: Candidate) -> int:
    gray = _gray(c.image.path)
    return dhash(gray) if gray is not None else c.image.id  # unreadable by the hash: never a duplicate


def _place(src: Path, dst: Path, copy: bool) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if copy:
        shutil.copy2(src, dst)
    else:
        os.symlink(Path(src).resolve(), dst)


def _rows(cands: list[Candidate]) -> list[dict]:
    return [{"rank": r, "image": c.image.file_name, "score": c.score, "reason": c.reason, **c.terms,
             "detections": c.detections, "shown": c.shown, "path": str(c.image.path),
             "selected": int(c.selected), "near_duplicate_of": c.near_duplicate_of or ""}
            for r, c in enumerate(cands, 1)]


def _write_csv(path: Path, rows: list[dict], columns: tuple[str, ...]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def select_images(predictor: DefectPredictor, source: str | Path | Source, out: Path, config: SelectConfig,
                  thresholds: ClassThresholds, counts: dict[str, int] | None, options: RunOptions | None = None,
                  select: SelectOptions | None = None, inputs: tuple[Path, ...] = ()) -> dict:
    """Score every image of `source` with `predictor` (its PredictConfig.conf: the candidates' confidence) against
    `thresholds`, and write the top `config.budget` into `out`; returns summary.json's content. `inputs`: files the
    folder must never hold (the models, the thresholds file)."""
    options, select = options or RunOptions(), select or SelectOptions()
    t0 = time.perf_counter()
    source = source if isinstance(source, Source) else resolve_source(source)
    rare = rarity(counts, predictor.class_names)
    with atomic_dir(out, KIND, [*source.inputs(), *inputs], select.force) as tmp:
        run = predict_run(predictor, source, tmp / "predictions", replace(options, force=False, save_overlays=False))
        dets = run_detections(tmp / "predictions", predictor.class_names, predictor.category_ids)
        names = {im.id: source.names[im.id] for im in source.images}
        cands = [score_image(d, names[d.image.id], thresholds, rare, counts, config.weights) for d in dets]
        picked = rank(cands, config.budget, config.near_duplicate, _hash, config.seed)
        by_id = {d.image.id: d for d in dets}
        shown = []
        for c in picked:
            det = thresholds.apply(by_id[c.image.id])  # the detections a person corrects: those at the thresholds
            file_name = c.name + Path(c.image.file_name).suffix
            _place(c.image.path, tmp / "images" / file_name, select.copy)
            det.image = replace(c.image, file_name=file_name, path=tmp / "images" / file_name)
            shown.append(det)
        files = []
        if select.annotations:
            from defect_vision.formats.annotations import write_annotations

            files = [Path(p).name for p in write_annotations(shown, tmp, select.annotations, select.model_version,
                                                             image_root=select.image_root)]
        _write_csv(tmp / "selection.csv", _rows(picked), COLUMNS)
        _write_csv(tmp / "candidates.csv", _rows(ranked(cands, config.seed)),
                   (*COLUMNS, "selected", "near_duplicate_of"))
        summary = {
            "budget": config.budget, "selected": len(picked), "candidates": len(cands),
            "near_duplicates_skipped": sum(c.near_duplicate_of is not None for c in cands),
            "images": [{"rank": r, "image": c.image.file_name, "file": f"images/{c.name}{Path(c.image.file_name).suffix}",
                        "path": str(c.image.path), "score": c.score, "reason": c.reason, **c.terms} for r, c in enumerate(picked, 1)],
            "reasons": {k: sum(c.reason.startswith(p) for c in picked)
                        for k, p in (("uncertainty", "uncertain"), ("disagreement", "mask/box"), ("rarity", "rare"))},
            "config": {**asdict(config), "conf_floor": predictor.config.conf},
            "thresholds": thresholds.describe(predictor.class_names),
            "labelled_counts": counts, "annotations": files, "copy": select.copy,
            "model_version": select.model_version, "source": {"kind": source.kind, "origin": source.origin},
            "predict": {"images": run.images, "skipped": run.skipped}, "seconds": round(time.perf_counter() - t0, 1),
        }
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def summary_line(summary: dict, out: Path) -> str:
    reasons = ", ".join(f"{k} {v}" for k, v in summary["reasons"].items() if v) or "none"
    return (f"selected {summary['selected']} of {summary['candidates']} images (dominant term: {reasons}; "
            f"{summary['near_duplicates_skipped']} near-duplicates skipped) -> {out}")
