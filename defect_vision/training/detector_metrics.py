"""Box metrics of a detector fine-tune: the zero-shot start model, a saved checkpoint, and the per-epoch history."""
from __future__ import annotations

import csv
from pathlib import Path

from defect_vision.offline import strip_network_callbacks
from defect_vision.training.detector_config import DetectorTrainConfig


def box_metrics(validator, names: list[str]) -> dict:
    """{map50, map50_95, per_class {name: {ap50, ap50_95} | null}} from a finished ultralytics DetectionValidator."""
    box = validator.metrics.box
    per_class = {n: None for n in names}
    for i, c in enumerate(validator.metrics.ap_class_index):
        per_class[names[int(c)]] = {"ap50": round(float(box.ap50[i]), 4), "ap50_95": round(float(box.ap[i]), 4)}
    return {"map50": round(float(box.map50), 4), "map50_95": round(float(box.map), 4), "per_class": per_class}


def validator_class(segment: bool):
    """ultralytics' validator of a detector (a YOLOE -seg one: masks too; never the YOLOE validators, which encode
    the names with MobileCLIP)."""
    from ultralytics.models.yolo.detect import DetectionValidator
    from ultralytics.models.yolo.segment import SegmentationValidator

    return SegmentationValidator if segment else DetectionValidator


def evaluate_start_model(start, config: DetectorTrainConfig, names: list[str], embeddings, device: str,
                         save_dir: Path) -> dict:
    """Zero-shot baseline: the start model (detector_model.StartModel) with the defect prompts' embeddings, on the
    val split."""
    import torch
    from ultralytics.nn.tasks import (
        WorldModel,
        YOLOEModel,
        YOLOESegModel,
        load_checkpoint,
    )
    from ultralytics.utils.torch_utils import init_seeds

    from defect_vision.models.detector import YOLOE
    from defect_vision.training.world_trainer import set_class_embeddings

    init_seeds(config.seed)
    if config.from_scratch:
        build = (YOLOESegModel if start.segment else YOLOEModel) if start.family == YOLOE else WorldModel
        model = build(start.spec, nc=len(names), verbose=False)
    else:
        model = load_checkpoint(start.spec, device="cpu")[0]
    model = model.float().eval()
    set_class_embeddings(model, names, embeddings)
    validator = validator_class(start.segment)(save_dir=save_dir, args=dict(
        data=str(config.data), split="val", imgsz=config.imgsz, batch=config.batch, device=device, plots=False,
        save_json=False, half=False, workers=min(config.workers, 2), verbose=False, seed=config.seed))
    strip_network_callbacks(validator)
    with torch.no_grad():
        validator(model=model)
    return box_metrics(validator, names)


def validate_checkpoint(path: Path, data: Path, names: list[str], imgsz: int, batch: int, device: str, workers: int,
                        seed: int, plots: bool, save_dir: Path, segment: bool = False) -> dict:
    """Box metrics of a saved checkpoint on the val split, as ultralytics' final validation computes them (used
    when that validation did not run in this process: an interrupted final step, or DDP workers)."""
    validator = validator_class(segment)(save_dir=save_dir, args=dict(
        model=str(path), data=str(data), split="val", imgsz=imgsz, batch=batch * 2, device=device, plots=plots,
        save_json=False, half=False, workers=min(workers, 2), verbose=False, seed=seed,
        rect=True))  # the trainer's val loader: rectangular batches (batch x 2), which change the letterbox
    strip_network_callbacks(validator)
    validator(model=str(path))
    return box_metrics(validator, names)


def read_history(results_csv: Path) -> list[dict]:
    """Per-epoch {epoch, loss (box+cls+dfl), map50, map50_95} from ultralytics' results.csv (one row per epoch:
    should an epoch appear twice, its last row counts)."""
    if not results_csv.is_file():
        return []
    rows = {}
    with open(results_csv) as f:
        for row in csv.DictReader(f):
            row = {k.strip(): v for k, v in row.items()}
            epoch = int(float(row["epoch"]))
            rows[epoch] = {
                "epoch": epoch,
                "loss": round(sum(float(row[k]) for k in ("train/box_loss", "train/cls_loss", "train/dfl_loss")), 5),
                "map50": round(float(row.get("metrics/mAP50(B)", "nan")), 4),
                "map50_95": round(float(row.get("metrics/mAP50-95(B)", "nan")), 4),
            }
    return [rows[e] for e in sorted(rows)]

