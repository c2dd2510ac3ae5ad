"""What both experiments share: the output folder, the text encoder, the zero-shot start model, one detector
fine-tune on a derived training set, and the results file."""
from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import replace
from pathlib import Path

from defect_vision.coco import CocoDataset, load_coco
from defect_vision.data.source import load_phrasings
from defect_vision.errors import DatasetError
from defect_vision.experiments.measure import Vocabulary, base_checkpoint
from defect_vision.experiments.subsets import Export
from defect_vision.io import MARKER, atomic_write_text, check_output_dir
from defect_vision.models.prompts import Encoder, ensemble, make_encoder, templated
from defect_vision.training.yolo_world import DetectorTrainConfig, finetune_detector, start_model, text_encoder_device

LOG = logging.getLogger("defect_vision.experiments")


def fresh_output(out: Path, kind: str, export: Export, force: bool) -> None:
    """Make `out` an empty `kind` folder: refused (one line) unless absent, empty, a previous `kind` output, or
    forced; never a folder holding the data."""
    inputs = [export.coco, export.yolo] + ([export.sam] if export.sam else [])
    check_output_dir(out, kind, inputs=inputs, force=force)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    atomic_write_text(out / MARKER, json.dumps({"kind": kind, "written": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n")


def encoder_of(train: DetectorTrainConfig) -> tuple[Encoder, str]:
    """(the text encoder every run of the experiment uses, its name): the stand-in of `train.encoder`, else
    --text-encoder/--clip (a missing CLIP file fails here, before any training)."""
    if train.encoder is not None:
        return train.encoder, "custom"
    from defect_vision.devices import ultralytics_device

    encode, info = make_encoder(train.text_encoder, train.clip, train.embedding_cache,
                                text_encoder_device(ultralytics_device(train.device)))
    return encode, info["encoder"]


def eval_split(export: Export) -> tuple[CocoDataset, Vocabulary]:
    """The test ground truth and the full vocabulary (every class, with prompts.yaml's phrasings when present)."""
    gt = load_coco(export.coco / "instances_test.json")
    prompts = export.coco / "prompts.yaml"
    return gt, Vocabulary.of(gt, load_phrasings(prompts, "prompts") if prompts.is_file() else None)


def zero_shot_model(path: Path, train: DetectorTrainConfig, vocab: Vocabulary, encode: Encoder,
                    encoder_name: str) -> tuple[Path, str]:
    """(the start model with the full vocabulary saved at `path`, its weights tag "official" | "random-init")."""
    spec, weights = start_model(train)
    phr = templated([vocab.phrasings[n] for n in vocab.names], train.prompt_template, train.category)
    meta = {"text_encoder": encoder_name, "prompt_template": train.prompt_template, "category": train.category,
            "weights": weights, "phrasings": phr}
    return base_checkpoint(path, spec, train.from_scratch, vocab, ensemble(encode, phr), train.imgsz, train.seed, meta), weights


def fine_tune(train: DetectorTrainConfig, paths: dict, out: Path, **changes) -> Path:
    """One detector fine-tune on a derived training set (subsets.write_subset's paths); its best.pt."""
    prompts = paths["coco"] / "prompts.yaml"
    config = replace(train, data=paths["data"], coco=paths["coco"], prompts=prompts if prompts.is_file() else None,
                     out=out, resume=False, force=True, eval_zero_shot=False, **changes)
    finetune_detector(config)
    return out / "best.pt"


def write_results(out: Path, results: dict) -> Path:
    atomic_write_text(out / "results.json", json.dumps(results, indent=2) + "\n")
    return out / "results.json"


def check_classes(wanted: list[str] | None, classes: list[str], what: str) -> list[str]:
    """`wanted` (default: all classes), each a class of the dataset."""
    wanted = list(wanted or classes)
    unknown = [c for c in wanted if c not in classes]
    if unknown:
        raise DatasetError(f"{what} {' '.join(unknown)}: not a class of the dataset (classes: {', '.join(classes)})")
    return wanted
