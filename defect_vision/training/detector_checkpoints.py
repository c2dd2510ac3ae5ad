"""The run folder of a detector fine-tune: may it be written (never over its inputs, the images the export links
to included), its state marker, what --resume does, and the final best.pt + best.json (each written atomically)."""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from defect_vision.errors import DatasetError
from defect_vision.io import (
    MARKER,
    atomic_write_text,
    check_output_dir,
    remove_stale_temps,
    torch_save,
)
from defect_vision.training.detector_config import DetectorTrainConfig
from defect_vision.training.detector_data import dataset_root, image_folders

LOG = logging.getLogger("defect_vision.yolo_world")
KIND = "train-detector"  # the output folder's marker kind


def check_run_folder(config: DetectorTrainConfig, data: dict) -> None:
    """OutputError unless `config.out` may hold a new run: never the export, the COCO folder, the start weights or
    a folder the export's images really live in (they are symlinks into the category), `force` or not."""
    inputs = [config.data.parent, dataset_root(config.data, data), config.coco]
    inputs += [] if config.from_scratch else [config.model]
    check_output_dir(config.out, KIND, inputs=inputs + image_folders(config.data, data), force=config.force)


def read_run_state(out: Path) -> str | None:
    """'training' | 'finished' from the run folder's marker, or None (no marker, or one written before states)."""
    try:
        data = json.loads((out / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data.get("state") if isinstance(data, dict) and data.get("kind") == KIND else None


def write_run_state(out: Path, state: str) -> None:
    atomic_write_text(out / MARKER, json.dumps({"kind": KIND, "state": state,
                                                "written": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n")


@dataclass
class ResumePlan:
    """What --resume does: "train" (continue from `ckpt`, ultralytics' resume) or "finalize" (training finished,
    only the final validation and best.pt/best.json are missing). `source` is the checkpoint file read."""

    action: str
    source: Path
    ckpt: dict
    epochs: int


def _training_done(ckpt: dict) -> bool:
    """True when ultralytics would not train any further epoch from this checkpoint: the optimizer was stripped
    (final step reached), the last epoch was saved, or early stopping (patience) had fired."""
    if ckpt.get("optimizer") is None:
        return True
    args = ckpt.get("train_args") or {}
    done = int(ckpt.get("epoch", -1)) + 1
    if done >= int(args.get("epochs", 0)):
        return True
    patience, stopper = args.get("patience"), ckpt.get("stopper") or {}
    return bool(patience) and stopper.get("best_epoch") is not None and done - int(stopper["best_epoch"]) >= patience


def plan_resume(out: Path) -> ResumePlan:
    """Inspect (without writing) the interrupted run in `out`; DatasetError when there is nothing to resume."""
    from defect_vision.training.world_trainer import load_checkpoint_dict

    wdir = out / "weights"
    last, best = wdir / "last.pt", wdir / "best.pt"
    if not last.is_file():
        raise DatasetError(f"{last}: nothing to resume (no interrupted run in {out})")
    source, ckpt = last, load_checkpoint_dict(last)
    if ckpt is None:
        source, ckpt = best, load_checkpoint_dict(best)
        if ckpt is None:
            raise DatasetError(f"{last}: not a readable checkpoint (truncated by a kill?), and no readable {best} "
                               f"to fall back to; start a new run without --resume")
    epochs = int((ckpt.get("train_args") or {}).get("epochs", 0))
    if _training_done(ckpt):
        state = read_run_state(out)
        finished = state == "finished" if state else (out / "best.json").is_file() and (out / "best.pt").is_file()
        if finished:
            raise DatasetError(f"{last}: the run in {out} finished ({epochs} epochs); nothing to resume "
                               "(start a new run without --resume, or raise --epochs in a new --out)")
        return ResumePlan("finalize", source, ckpt, epochs)
    return ResumePlan("train", source, ckpt, epochs)


def repair_for_resume(out: Path, plan: ResumePlan) -> None:
    """Make weights/last.pt and weights/best.pt consistent before ultralytics resumes from last.pt: an unreadable
    last.pt is replaced by best.pt, an unreadable or stale best.pt by last.pt (warnings say what was lost), and
    results.csv loses the rows of epochs that were logged but not saved."""
    from defect_vision.training.world_trainer import (
        copy_atomic,
        load_checkpoint_dict,
        save_atomic,
    )

    wdir = out / "weights"
    last, best = wdir / "last.pt", wdir / "best.pt"
    ckpt = plan.ckpt
    epoch = int(ckpt.get("epoch", -1)) + 1  # 1-based, as results.csv
    if plan.source == best:
        LOG.warning("%s: unreadable (truncated by a kill?); resuming from %s (epoch %d): later epochs are trained "
                    "again", last, best, epoch)
        copy_atomic(best, last)
    elif plan.action == "train":
        fitness = (ckpt.get("train_metrics") or {}).get("fitness")
        best_ckpt = load_checkpoint_dict(best)
        last_is_best = fitness is not None and ckpt.get("best_fitness") == fitness
        if best_ckpt is None:
            if last_is_best:
                LOG.warning("%s: missing or unreadable (truncated by a kill?); epoch %d was the best so far: "
                            "rewritten from %s", best, epoch, last)
            else:
                LOG.warning("%s: missing or unreadable (truncated by a kill?); the best epoch's weights are lost. "
                            "best.pt restarts from %s (epoch %d, fitness %.4g) and later epochs replace it when "
                            "better", best, last, epoch, fitness if fitness is not None else float("nan"))
                ckpt["best_fitness"] = fitness
                ckpt["stopper"] = {**(ckpt.get("stopper") or {}), "best_fitness": fitness or 0.0, "best_epoch": epoch}
                save_atomic(ckpt, last)
            copy_atomic(last, best)
        elif last_is_best and best_ckpt.get("epoch") != ckpt.get("epoch"):
            LOG.warning("%s: from epoch %s, but epoch %d was the best (interrupted between the two saves): "
                        "rewritten from %s", best, int(best_ckpt.get("epoch", -2)) + 1, epoch, last)
            copy_atomic(last, best)
    if plan.action == "train":  # a training checkpoint: its epoch is the last one saved
        trim_results(out / "results.csv", epoch)


def open_run_folder(out: Path, plan: ResumePlan | None) -> None:
    """Create `out`, remove stale temporary files, mark it 'training' and ready its checkpoints: a new run's
    predecessors removed (they must not be resumed into it), a resumed run's repaired."""
    out.mkdir(parents=True, exist_ok=True)
    for folder in (out, out / "weights"):
        remove_stale_temps(folder)
    write_run_state(out, "training")
    if plan is None:
        for stale in ("last.pt", "best.pt"):
            (out / "weights" / stale).unlink(missing_ok=True)
    else:
        repair_for_resume(out, plan)


def finished_checkpoint(out: Path) -> dict:
    """Make weights/best.pt a readable final checkpoint (optimizer stripped), falling back to last.pt with a
    warning when best.pt is missing or unreadable; strip last.pt too (so a later --resume says "finished").
    Returns best.pt's checkpoint dict."""
    from defect_vision.training.world_trainer import (
        copy_atomic,
        load_checkpoint_dict,
        strip_optimizer_atomic,
    )

    wdir = out / "weights"
    last, best = wdir / "last.pt", wdir / "best.pt"
    last_ckpt = load_checkpoint_dict(last)
    if last_ckpt is not None and last_ckpt.get("optimizer") is not None:
        last_ckpt = strip_optimizer_atomic(last) or last_ckpt
    best_ckpt = load_checkpoint_dict(best)
    if best_ckpt is None:
        if last_ckpt is None:
            raise DatasetError(f"{wdir}: neither best.pt nor last.pt is a readable checkpoint; start a new run")
        LOG.warning("%s: missing or unreadable (truncated by a kill?); the final model is %s, the last epoch's "
                    "weights", best, last)
        copy_atomic(last, best)
        best_ckpt = load_checkpoint_dict(best)
    elif best_ckpt.get("optimizer") is not None:
        best_ckpt = strip_optimizer_atomic(best) or best_ckpt
    return best_ckpt


def save_final(ckpt: dict, out: Path, meta: dict) -> None:
    """<out>/best.pt (ultralytics checkpoint + our metadata) and <out>/best.json, each written atomically."""
    ckpt = dict(ckpt)
    keys = ("classes", "category_ids", "prompts", "text_encoder", "weights", "data_hash", "phrasings",
            "prompt_template", "category", "prompt_tuning", "family", "segment")
    ckpt["defect_vision"] = {k: meta[k] for k in keys if k in meta}
    torch_save(ckpt, out / "best.pt")
    atomic_write_text(out / "best.json", json.dumps(meta, indent=2) + "\n")


def trim_results(results_csv: Path, last_epoch: int) -> int:
    """Drop results.csv rows after `last_epoch` (1-based): epochs logged but not saved before an interruption are
    trained again on resume and would otherwise appear twice. Returns the number of rows dropped."""
    if not results_csv.is_file():
        return 0
    lines = results_csv.read_text().splitlines(keepends=True)
    if not lines:
        return 0
    kept = [lines[0]]
    for line in lines[1:]:
        try:
            epoch = int(float(line.split(",", 1)[0]))
        except ValueError:
            continue  # a half-written row (killed inside the append)
        if epoch <= last_epoch:
            kept.append(line)
    dropped = len(lines) - len(kept)
    if dropped:
        atomic_write_text(results_csv, "".join(kept))
        LOG.warning("%s: dropped %d row(s) after epoch %d (trained but not saved before the interruption; "
                    "they are trained again)", results_csv, dropped, last_epoch)
    return dropped
