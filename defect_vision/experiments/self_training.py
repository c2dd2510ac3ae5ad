"""Self-training with class-adaptive pseudo-label thresholds (`train-detector --unlabelled DIR`), and the SAM
stage's pseudo-instances (`train-sam --pseudo FILE`).

Detector: round 0 fine-tunes on the labels as train-detector always does; each round r = 1..R predicts on the
unlabelled images with round r-1's best.pt (through the prediction spine, box-only), keeps the detections above
their class's threshold (training.self_training.class_thresholds), writes labels + pseudo-labels as a new YOLO
dataset under the run folder (data/round_<r>/yolo) and fine-tunes again FROM THE START WEIGHTS (a fresh student
each round, as in Noisy Student / STAC: the teacher's errors reach the student only through its pseudo-labels, and
each round trains exactly as many epochs as the labels-only run it is compared with). The run folder gets the last
round's best.pt + best.json (where train-detector always writes them), pseudo_labels.json (per round: thresholds,
per-class counts, the images used and their pseudo boxes) and rounds/round_<r>/ (each round's own run folder).
Everything is written in a temporary folder that replaces the run folder only when the last round has finished.

SAM: the pseudo boxes of the last round get masks from the SAM train-sam starts from; an instance is kept only
where its mask agrees with its box (IoU of the box with the mask's tight box >= `min_agreement`), and the kept
ones are added to the training prompts as extra instances."""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from defect_vision.detections import Detections, ImageInfo
from defect_vision.errors import ConfigError, DatasetError
from defect_vision.experiments.common import output_folder
from defect_vision.io import atomic_write_text, read_json
from defect_vision.training.detector_checkpoints import KIND
from defect_vision.training.detector_data import (
    dataset_root,
    image_folders,
    read_data_yaml,
    split_images,
)
from defect_vision.training.self_training import (
    MIN_AGREEMENT,
    SelfTrainConfig,
    box_mask_agreement,
    class_thresholds,
    keep_confident,
    labelled_instances,
    reference_share,
    write_pseudo_dataset,
)
from defect_vision.training.yolo_world import DetectorTrainConfig, finetune_detector

LOG = logging.getLogger("defect_vision.self_training")
PSEUDO_FILE = "pseudo_labels.json"


def unlabelled_images(config: SelfTrainConfig, data_yaml: Path, data: dict) -> list[ImageInfo]:
    """The unlabelled images; DatasetError when one of them is a val image (it would be trained on: the val score
    that picks the best epoch would lie). Labelled train images among them are dropped (they have labels)."""
    from defect_vision.inference.sources import resolve_source

    images = resolve_source(config.unlabelled).images
    val = {p.resolve() for p in split_images(data_yaml, data, "val")[1]}
    leak = [im.path for im in images if im.path in val]
    if leak:
        raise DatasetError(f"{config.unlabelled}: {len(leak)} unlabelled image(s) are validation images (e.g. "
                           f"{leak[0]}); take them out of the unlabelled folder")
    train = {p.resolve() for p in split_images(data_yaml, data, "train")[1]}
    return [im for im in images if im.path not in train]


def teacher_predictions(best: Path, images: list[ImageInfo], config: SelfTrainConfig, device: str, imgsz: int,
                        progress: bool = True, batch: int = 8) -> list[Detections]:
    """The teacher's boxes (score >= config.floor) on every image, each stamped with its image and size."""
    from tqdm import tqdm

    from defect_vision.inference.config import PredictConfig
    from defect_vision.inference.predictor import DefectPredictor, image_info
    from defect_vision.inference.sources import read_source_image

    predictor = DefectPredictor(best, None, PredictConfig(conf=config.floor, box_only=True, device=device,
                                                          imgsz=imgsz, workers=1))
    out = []
    for start in tqdm(range(0, len(images), batch), desc="pseudo-label", unit="batch", disable=None if progress else True):
        loaded = [read_source_image(im) for im in images[start : start + batch]]
        bad = next((x for x in loaded if x.error), None)
        if bad is not None:
            raise DatasetError(bad.error)
        for x, det in zip(loaded, predictor.detect([x.pixels for x in loaded])):
            det.image = image_info(x.image, x.pixels)
            out.append(det)
    return out


def _counts(dets: list[Detections], names: list[str]) -> dict[str, int]:
    ids = np.concatenate([d.class_id for d in dets]) if dets else np.zeros(0, np.int64)
    return {n: int((ids == k).sum()) for k, n in enumerate(names)}


def _boxes_entry(det: Detections) -> dict:
    return {"path": str(det.image.path), "file_name": det.image.file_name, "height": det.image.height,
            "width": det.image.width, "boxes": np.round(det.xyxy, 2).tolist(), "classes": det.names,
            "scores": [float(v) for v in det.score]}


def pseudo_round(teacher: Path, images: list[ImageInfo], config: SelfTrainConfig, labelled: dict[str, int],
                 device: str, imgsz: int, progress: bool) -> tuple[list[Detections], dict]:
    """One round's pseudo-labels (the images with at least one) and its pseudo_labels.json entry (without the
    student's metrics)."""
    names = list(labelled)
    dets = teacher_predictions(teacher, images, config, device, imgsz, progress)
    scores = {n: np.concatenate([d.score[d.class_id == k] for d in dets]) if dets else np.zeros(0)
              for k, n in enumerate(names)}
    thresholds = class_thresholds(scores, labelled, config.conf, config.rule, config.floor)
    kept = [k for k in (keep_confident(d, thresholds) for d in dets) if len(k)]
    head, rho = reference_share(scores, labelled, config.conf)
    entry = {"thresholds": thresholds, "reference_class": head, "reference_share": round(rho, 4),
             "detections_per_class": {n: len(s) for n, s in scores.items()},
             "pseudo_per_class": _counts(kept, names), "images_used": len(kept), "images_seen": len(dets),
             "images": [_boxes_entry(d) for d in kept]}
    return kept, entry


def _val_metrics(meta: dict) -> dict:
    ft = (meta.get("metrics") or {}).get("fine_tuned") or {}
    return {"val_map50": ft.get("map50"), "val_map50_95": ft.get("map50_95")}


def self_train(train: DetectorTrainConfig, config: SelfTrainConfig, round0: Path | None = None,
               progress: bool = True) -> dict:
    """The whole self-training run into `train.out`; returns its best.json content (a `self_training` block
    added). `round0`: a finished labels-only run folder of the same settings to start from (experiments: the
    baseline's own run) instead of training round 0 again."""
    if train.resume:
        raise ConfigError("{resume}: not with {unlabelled} (a self-training run is written whole or not at all; "
                          "run it again)", "resume", "unlabelled")
    t0 = time.time()
    data = read_data_yaml(train.data)
    images = unlabelled_images(config, train.data, data)
    if not images:
        raise DatasetError(f"{config.unlabelled}: no unlabelled images left (all are labelled train images)")
    labelled = labelled_instances(train.data)
    inputs = [train.data.parent, dataset_root(train.data, data), train.coco, config.unlabelled,
              *image_folders(train.data, data), *([] if train.from_scratch else [train.model])]
    if round0 is not None:
        inputs.append(round0)
    record = {"settings": {"rule": config.rule, "conf": config.conf, "floor": config.floor, "rounds": config.rounds,
                           "unlabelled": str(config.unlabelled), "restart": "start weights"},
              "unlabelled_images": len(images), "labelled_per_class": labelled, "rounds": []}
    with output_folder(train.out, KIND, inputs, train.force) as tmp:
        if round0 is None:
            meta = finetune_detector(replace(train, out=tmp / "rounds" / "round_0", force=True, resume=False))
            teacher = tmp / "rounds" / "round_0" / "best.pt"
        else:
            meta, teacher = read_json(round0 / "best.json", "best.json"), round0 / "best.pt"
        name = "rounds/round_0/best.pt" if round0 is None else str(round0 / "best.pt")  # in the run folder, or given
        record["rounds"].append({"round": 0, "teacher": None, "model": name, **_val_metrics(meta)})
        for r in range(1, config.rounds + 1):
            LOG.info("self-training round %d/%d: pseudo-labelling %d images with %s", r, config.rounds, len(images),
                     teacher)
            kept, entry = pseudo_round(teacher, images, config, labelled, train.device, train.imgsz, progress)
            LOG.info("round %d: thresholds %s; pseudo-labels %s on %d images", r, entry["thresholds"],
                     entry["pseudo_per_class"], entry["images_used"])
            if not kept:  # the student would train on the labels alone: the teacher's own data
                LOG.warning("round %d: no pseudo-label reached its threshold; the teacher stays (lower --pseudo-conf?)", r)
                record["rounds"].append({"round": r, "teacher": name, "model": name, "trained": False,
                                         **_val_metrics(meta), **entry})
                continue
            data_yaml = write_pseudo_dataset(train.data, tmp / "data" / f"round_{r}" / "yolo", kept)
            student = tmp / "rounds" / f"round_{r}"
            meta = finetune_detector(replace(train, data=data_yaml, out=student, force=True, resume=False))
            record["rounds"].append({"round": r, "teacher": name, "model": (name := f"rounds/round_{r}/best.pt"),
                                     "trained": True, **_val_metrics(meta), **entry})
            teacher = student / "best.pt"
        shutil.copy2(teacher, tmp / "best.pt")
        atomic_write_text(tmp / PSEUDO_FILE, json.dumps(record, indent=1) + "\n")
        summary = {k: v for k, v in record.items() if k != "rounds"}
        summary["rounds"] = [{k: v for k, v in e.items() if k != "images"} for e in record["rounds"]]
        final = Path(os.path.realpath(train.out))  # where the temporary folder goes: the data path named from there
        data_path = Path(meta.get("data", ""))
        if data_path.is_relative_to(tmp.resolve()):
            meta["data"] = str(final / data_path.relative_to(tmp.resolve()))
        meta = {**meta, "self_training": summary, "seconds": round(time.time() - t0, 1)}
        atomic_write_text(tmp / "best.json", json.dumps(meta, indent=2) + "\n")
    return meta


def summary_line(meta: dict, out: Path) -> str:
    """The line a finished self-training run prints after train-detector's own."""
    st = meta["self_training"]
    def val(e: dict) -> str:
        return "n/a" if e["val_map50"] is None else f"{e['val_map50']:.3f}"

    rounds = "; ".join(f"round {e['round']}: " + (f"labels only, val mAP50 {val(e)}" if e["round"] == 0 else
                       f"pseudo-labels {e['pseudo_per_class']} on {e['images_used']}/{e['images_seen']} images, "
                       f"val mAP50 {val(e)}" + ("" if e.get("trained", True) else " (none: not trained)"))
                       for e in st["rounds"])
    return f"self-training ({st['settings']['rule']}): {out / PSEUDO_FILE}: {rounds}"


# ------------------------------------------------------------------------------------------ SAM stage
def pseudo_file(path: Path) -> Path:
    """A detector run folder or its pseudo_labels.json -> the file; DatasetError when there is none."""
    path = Path(path)
    found = path / PSEUDO_FILE if path.is_dir() else path
    if not found.is_file():
        raise DatasetError(f"{found}: no such file (train-detector --unlabelled writes {PSEUDO_FILE} in its run folder)")
    return found


def pseudo_detections(path: Path, names: list[str], category_ids: list[int]) -> list[Detections]:
    """The last round's pseudo boxes of a pseudo_labels.json, as Detections over the prompts' classes."""
    record = read_json(path, PSEUDO_FILE)
    try:
        images = record["rounds"][-1]["images"]
        out = []
        for i, im in enumerate(images, 1):
            unknown = sorted(set(im["classes"]) - set(names))
            if unknown:
                raise DatasetError(f"{path}: class {unknown[0]} is not a class of the SAM prompts ({', '.join(names)})")
            info = ImageInfo(i, im["file_name"], int(im["height"]), int(im["width"]), Path(im["path"]))
            out.append(Detections(np.asarray(im["boxes"], np.float64).reshape(-1, 4),
                                  [names.index(c) for c in im["classes"]], im["scores"], image=info,
                                  class_names=names, category_ids=category_ids))
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise DatasetError(f"{path}: not a {PSEUDO_FILE} ({exc.__class__.__name__}: {exc})") from None
    return out


def agreeing_instances(dets: list[Detections], sam, model_type: str, cache_dir: Path, device: str,
                       min_agreement: float) -> tuple[list[Detections], dict]:
    """The pseudo boxes with their SAM masks where box and mask agree, and {offered, kept} per class."""
    from defect_vision.experiments.measure import SamMasks

    names = dets[0].class_names if dets else []
    masks = SamMasks(sam, model_type, cache_dir, device)
    masked = masks({k: d for k, d in enumerate(dets)})
    kept = []
    for det in masked.values():
        ok = box_mask_agreement(det.xyxy, det.rle) >= min_agreement if len(det) else np.zeros(0, bool)
        if ok.any():
            rle = [r for r, keep in zip(det.rle, ok) if keep]
            sub = det[ok]
            sub.rle, sub.mask = rle, None
            kept.append(sub)
    return kept, {"offered_per_class": _counts(dets, names), "kept_per_class": _counts(kept, names)}


def _rle_json(rle: dict) -> dict:
    counts = rle["counts"]
    return {"size": list(rle["size"]), "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}


def write_pseudo_prompts(prompts: Path, out: Path, kept: list[Detections]) -> None:
    """out/prompts_train.json = the prompts' train images + one image entry per pseudo-labelled image (its kept
    instances, masks as RLE); out/prompts_val.json = the prompts' own (copied)."""
    data = read_json(prompts / "prompts_train.json", "SAM prompts")
    next_image = max((int(im["id"]) for im in data["images"]), default=0) + 1
    next_ann = 1 + max((int(i.get("annotation_id", 0)) for im in data["images"] for i in im.get("instances", [])),
                       default=0)
    added = []
    for det in kept:
        instances = []
        for box, cat, rle in zip(det.xyxy, det.category_id, det.rle):
            instances.append({"box": [round(float(v), 2) for v in box], "category_id": int(cat),
                              "annotation_id": next_ann, "mask": _rle_json(rle), "pseudo": True})
            next_ann += 1
        added.append({"id": next_image, "file_name": str(det.image.path), "height": det.image.height,
                      "width": det.image.width, "is_good": False, "instances": instances, "pseudo": True})
        next_image += 1
    out.mkdir(parents=True, exist_ok=True)
    (out / "prompts_train.json").write_text(json.dumps({**data, "images": data["images"] + added}))
    shutil.copy2(prompts / "prompts_val.json", out / "prompts_val.json")


def finetune_sam_with_pseudo(config, pseudo: Path, min_agreement: float = MIN_AGREEMENT) -> dict:
    """train-sam --pseudo: the prompts plus the agreeing pseudo-instances, then the usual fine-tune; returns its
    best.json (with a `pseudo` block; `data.prompts` the prompts given)."""
    from defect_vision.training.sam import finetune_sam
    from defect_vision.training.sam_checkpoints import Checkpointer, load_start
    from defect_vision.training.sam_data import load_prompts

    if not 0 <= min_agreement <= 1:
        raise ConfigError(f"{{pseudo_agreement}} {min_agreement}: must be within [0, 1]", "pseudo_agreement")
    if config.resume:
        raise ConfigError("{resume}: not with {pseudo} (start the run again)", "resume", "pseudo")
    source = pseudo_file(pseudo)
    train_set = load_prompts(config.prompts / "prompts_train.json")
    names = [str(c["name"]) for c in train_set.categories]
    dets = pseudo_detections(source, names, [int(c["id"]) for c in train_set.categories])
    run = Checkpointer(config.out)
    run.check_new(config)  # before anything is written; then the folder is a train-sam run (the cache goes in it)
    run.open(new=True)
    start = load_start(config, None)
    kept, counts = agreeing_instances(dets, start.sam, config.model_type, config.cache_dir, config.device, min_agreement)
    LOG.info("pseudo-instances: %s of %s agree with their mask (IoU >= %.2f)", counts["kept_per_class"],
             counts["offered_per_class"], min_agreement)
    with tempfile.TemporaryDirectory(prefix=f".{config.out.name}.pseudo-", dir=config.out.resolve().parent) as tmp:
        write_pseudo_prompts(config.prompts, Path(tmp), kept)
        result = finetune_sam(replace(config, prompts=Path(tmp), force=True))
    result["data"]["prompts"] = str(config.prompts)
    result["pseudo"] = {"file": str(source), "min_agreement": min_agreement, **counts,
                        "images": len(kept), "instances": int(sum(len(d) for d in kept))}
    atomic_write_text(config.out / "best.json", json.dumps(result, indent=2) + "\n")
    return result
