"""Leave-one-defect-out (`defect-vision openvocab`): does the fine-tuned detector still find a defect it was never
trained on, by its name? (YOLO-World or YOLOE, the family of the start model; results.json's "detector" names it.)

For each held-out class k: fine-tune on every class but k, with k's images kept out of training entirely (out of
train and val, not even as background: as background they would teach the model that k looks like "nothing"),
then detect on the whole test split with the full vocabulary, k's name included (embedded by the same text
encoder). Per held-out class: box AP50 and mask IoU of k by name, beside the start model's zero-shot figures and
those of the model fine-tuned with every class ("seen"). Writes <out>/results.json, seen_unseen.png, the derived
training sets (data/without_<k>/, with manifest.json) and the runs (models/)."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from defect_vision.errors import DatasetError
from defect_vision.experiments import common
from defect_vision.experiments.measure import SamMasks, box_masks, detect, scores
from defect_vision.experiments.subsets import (
    Export,
    classes_of,
    image_classes,
    without_class,
    write_subset,
)
from defect_vision.training.yolo_world import DetectorTrainConfig

KIND = "openvocab"
HELD_OUT_IMAGES = "kept out of training entirely (out of train and val; not used as background)"


@dataclass
class OpenVocabConfig:
    """One leave-one-defect-out experiment; `train` is the detector fine-tune every run shares (its data, coco
    and out are set per run)."""

    category: str
    export: Export
    out: Path
    train: DetectorTrainConfig
    held_out: list[str] | None = None  # classes to hold out, one run each (default: every class)
    seen: bool = True  # also fine-tune with every class (the "seen" column)
    sam: Path | None = None  # SAM checkpoint for the masks (None: each box is its mask)
    sam_model_type: str | None = None
    conf: float = 0.01  # detector confidence (low: AP needs the low-score detections)
    score_threshold: float = 0.25  # mask IoU counts detections at or above it
    force: bool = False


def masker(config: OpenVocabConfig, device: str):
    """(boxes -> masks function given its embedding cache folder, where the masks come from); a bad --sam fails
    here, before any output is written."""
    if config.sam is None:
        return (lambda cache: box_masks), "boxes (no SAM: each box is its mask)"
    from defect_vision.models.sam import load_sam, model_type_for

    model_type = model_type_for(config.sam, config.sam_model_type)
    sam = load_sam(config.sam, model_type)
    return (lambda cache: SamMasks(sam, model_type, cache, device)), f"sam:{config.sam}"


def run_openvocab(config: OpenVocabConfig) -> dict:
    """The whole experiment; returns results.json's content. Everything is written into a temporary folder that
    replaces config.out at the end: an error or Ctrl-C keeps the previous result."""
    t0 = time.time()
    export, train = config.export, config.train
    common.settle(export)
    export.check()
    classes = classes_of(export.coco)
    held = common.check_classes(config.held_out, classes, "--classes")
    if len(classes) < 2:
        raise DatasetError(f"{export.coco}: leave-one-out needs at least 2 classes (found {', '.join(classes)})")
    encode, encoder_name = common.encoder_of(train)
    detector = common.detector_info(common.start_model(train))  # missing start weights fail before any output
    make_masks, mask_source = masker(config, train.device)
    inputs = common.inputs_of(export, config.sam, None if train.from_scratch else train.model, train.clip)
    with common.output_folder(config.out, KIND, inputs, config.force) as out:
        results = _run(config, out, classes, held, encode, encoder_name, make_masks(out / "sam_embeddings"))
        results = {**results, "detector": detector, "mask_source": mask_source, "seconds": round(time.time() - t0, 1)}
        common.write_results(out, results)
        from defect_vision.evaluation.experiment_plots import seen_unseen_bars

        seen_unseen_bars(results, out / "seen_unseen.png")
    return results


def _run(config: OpenVocabConfig, out: Path, classes: list[str], held: list[str], encode, encoder_name: str,
         masks) -> dict:
    """The runs, written under `out` (the temporary folder); results.json's content but its timing."""
    export, train = config.export, config.train
    gt, vocab = common.eval_split(export)

    def measure(ckpt: Path) -> dict:
        return scores(gt, masks(detect(ckpt, gt, vocab, encode, config.conf, train.imgsz, train.device)),
                      config.score_threshold)

    base, weights = common.zero_shot_model(out / "zero_shot" / "base.pt", train, vocab, encode, encoder_name)
    zero_shot = measure(base)
    seen = measure(common.fine_tune(train, {"data": export.yolo / "data.yaml", "coco": export.coco},
                                    out / "models" / "seen")) if config.seen else None
    images = {s: image_classes(export.coco / f"instances_{s}.json") for s in ("train", "val")}
    rows = []
    for k in held:
        kept = {s: without_class(images[s], k) for s in images}
        trained = [c for c in classes if c != k]
        data = out / "data" / f"without_{k}"
        paths = write_subset(export, data, trained, kept["train"], kept["val"])
        manifest = {"held_out": k, "classes": trained, "train_images": kept["train"], "val_images": kept["val"],
                    "excluded_train_images": sorted(set(images["train"]) - set(kept["train"])),
                    "held_out_images": HELD_OUT_IMAGES}
        (data / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        unseen = measure(common.fine_tune(train, paths, out / "models" / f"without_{k}"))
        rows.append({"class": k, "unseen": unseen["per_class"][k], "zero_shot": zero_shot["per_class"][k],
                     "seen": seen["per_class"][k] if seen else None,
                     "trained_classes": {c: unseen["per_class"][c] for c in trained},
                     "train_images": len(kept["train"]), "excluded_train_images": len(manifest["excluded_train_images"])})
    return {
        "category": config.category, "experiment": KIND, "weights": weights, "text_encoder": encoder_name,
        "detector": None, "held_out_images": HELD_OUT_IMAGES, "mask_source": None, "classes": classes,
        "settings": {"model": str(train.model_cfg if train.from_scratch else train.model), "epochs": train.epochs,
                     "imgsz": train.imgsz, "tune_prompts": train.tune_prompts, "prompt_reg": train.prompt_reg,
                     "prompt_only": train.prompt_only, "conf": config.conf, "score_threshold": config.score_threshold,
                     "seed": train.seed},
        "zero_shot": zero_shot, "seen": seen, "rows": rows, "seconds": None,
    }


def summary_line(results: dict, out: Path) -> str:
    def f(x) -> str:
        return "n/a" if x is None else f"{x:.3f}"

    parts = [f"{r['class']} {f(r['unseen']['ap50'])} (zero-shot {f(r['zero_shot']['ap50'])}, seen "
             f"{f((r['seen'] or {}).get('ap50'))})" for r in results["rows"]]
    return (f"openvocab: {out / 'results.json'}: unseen box AP50 by held-out class: {'; '.join(parts)}; "
            f"{results['detector']['label']}, {results['weights']} weights, {results['seconds']:.0f} s")
