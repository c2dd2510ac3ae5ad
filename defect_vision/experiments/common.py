"""What both experiments share: the output folder, the text encoder, the zero-shot start model, one detector
fine-tune on a derived training set, and the results file."""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from defect_vision.coco import CocoDataset, load_coco
from defect_vision.data.source import load_phrasings
from defect_vision.errors import DatasetError
from defect_vision.experiments.measure import Vocabulary, base_checkpoint
from defect_vision.experiments.subsets import Export
from defect_vision.io import atomic_dir, atomic_write_text, complete_pending, read_json
from defect_vision.models.prompts import Encoder, ensemble, make_encoder, templated
from defect_vision.training.detector_text import check_prompt_classes
from defect_vision.training.yolo_world import (
    DetectorTrainConfig,
    finetune_detector,
    start_model,
    text_encoder_device,
)

LOG = logging.getLogger("defect_vision.experiments")


def settle(export: Export) -> None:
    """Complete (or refuse, one line) a convert commit left pending on the exports, before they are read: the
    formats of one export never on different splits."""
    for folder in (export.coco, export.yolo, export.sam):
        if folder is not None:
            complete_pending(folder)


def inputs_of(export: Export, *files: Path | None) -> list[Path]:
    """What the experiment reads and its output may never hold: the exports, the folders their images come from
    (the COCO files' image_root), and `files` (checkpoints, prompts; None skipped)."""
    found = [export.coco, export.yolo] + ([export.sam] if export.sam else [])
    for split in ("train", "val", "test"):
        data = read_json(export.coco / f"instances_{split}.json", "COCO json")
        info = data.get("info") if isinstance(data, dict) else None
        if isinstance(info, dict) and info.get("image_root"):
            found.append(Path(info["image_root"]))
    return list(dict.fromkeys([*found, *(Path(f) for f in files if f is not None)]))


@contextmanager
def output_folder(out: Path, kind: str, inputs: list[Path], force: bool) -> Iterator[Path]:
    """A fresh temporary `kind` folder beside `out` that replaces it when the experiment ends (refused, one line,
    unless `out` is absent, empty, a previous `kind` output, or forced; never a folder holding an input). On an
    error or Ctrl-C it is removed and the previous result stays as it was."""
    with atomic_dir(out, kind, inputs=inputs, force=force) as tmp:
        yield tmp
        _retarget(tmp, Path(os.path.realpath(out)))


def _retarget(tmp: Path, final: Path) -> None:
    """The derived training sets' data.yaml name their absolute folder: from the temporary one to the final one."""
    import yaml

    for data_yaml in tmp.glob("data/*/yolo/data.yaml"):
        data = yaml.safe_load(data_yaml.read_text())
        path = Path(data.get("path", ""))
        if path.is_relative_to(tmp.resolve()):
            data["path"] = str(final / path.relative_to(tmp.resolve()))
            data_yaml.write_text(yaml.safe_dump(data, sort_keys=False))


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
    table = load_phrasings(prompts, "prompts") if prompts.is_file() else None
    if table is not None:
        check_prompt_classes(table, gt.class_names, prompts)  # as train-detector: a name the data lacks is refused
    return gt, Vocabulary.of(gt, table)


def detector_info(start) -> dict:
    """results.json's "detector": the family every run of the experiment fine-tunes (a StartModel of
    training.detector_model), so its tables say whether they measure YOLO-World or YOLOE."""
    from defect_vision.models.detector import FAMILY_NAMES

    name = FAMILY_NAMES[start.family]
    return {"family": start.family, "name": name, "segment": bool(start.segment),
            "label": name + (" -seg" if start.segment else ""), "start": start.spec, "weights": start.weights}


def zero_shot_model(path: Path, train: DetectorTrainConfig, vocab: Vocabulary, encode: Encoder,
                    encoder_name: str) -> tuple[Path, str]:
    """(the start model with the full vocabulary saved at `path`, its weights tag "official" | "random-init")."""
    start = start_model(train)
    phr = templated([vocab.phrasings[n] for n in vocab.names], train.prompt_template, train.category)
    meta = {"text_encoder": encoder_name, "prompt_template": train.prompt_template, "category": train.category,
            "weights": start.weights, "phrasings": phr, "family": start.family}
    return (base_checkpoint(path, start, train.from_scratch, vocab, ensemble(encode, phr), train.imgsz, train.seed,
                            meta), start.weights)


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
