"""The run folder of a SAM fine-tune: may it be written, the start (or resumed) model, and the per-epoch commit.

Every epoch end writes best.pth (when better), last.pth, best.json and resume.pt, each atomically; resume.pt goes
last: it is the epoch's commit point and holds the trained modules (mask decoder, prompt encoder) with the
optimizer/scheduler/scaler state, so a kill between the writes redoes that epoch from the previous one's weights.
"""
from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from segment_anything.modeling import Sam

from defect_vision.errors import DatasetError
from defect_vision.io import (
    MARKER,
    atomic_write_text,
    check_output_dir,
    marker_kind,
    remove_stale_temps,
    torch_save,
)
from defect_vision.models.sam import build_random_sam, default_checkpoint, load_sam
from defect_vision.models.sam_family import ops_for
from defect_vision.training.sam_config import SamTrainConfig
from defect_vision.training.sam_dist import Dist

KIND = "train-sam"  # the marker kind of a run folder
RESUME_FILE = "resume.pt"
TRAINED = ("mask_decoder", "prompt_encoder")  # SAM's modules resume.pt carries (each family's: SamOps.trained)


def cpu_state(module: torch.nn.Module) -> dict:
    return {k: v.detach().to("cpu").clone() for k, v in module.state_dict().items()}


def warn(msg: str) -> None:
    print(f"\n{'!' * 78}\nWARNING: {msg}\n{'!' * 78}\n", file=sys.stderr)


@dataclass
class EpochHistory:
    """Val IoU per epoch and the best so far (epoch 0 = the start model, always the first best)."""

    history: list[dict] = field(default_factory=list)
    best_iou: float = -math.inf
    best_epoch: int = 0

    def add(self, epoch: int, loss: float | None, iou: float, seconds: float) -> bool:
        """Record an epoch; True when it is the new best."""
        improved = not self.history or iou > self.best_iou
        if improved:
            self.best_iou, self.best_epoch = iou, epoch
        self.history.append({"epoch": epoch, "train_loss": loss, "val_iou": iou, "seconds": round(seconds, 3)})
        return improved

    @property
    def epoch(self) -> int:
        return self.history[-1]["epoch"] if self.history else -1


@dataclass
class Start:
    """The model a run starts (or resumes) from."""

    sam: Sam
    weights: str  # "official" | "random-init"
    checkpoint: str | None  # the start weights' file (None from scratch)
    resume: dict | None = None  # resume.pt when continuing a run


def inherited_weights(ckpt: Path) -> str:
    """"official", or what the best.json beside a checkpoint of ours says (a random-init run stays random-init)."""
    try:
        info = json.loads(ckpt.with_name("best.json").read_text())
        return "random-init" if info.get("weights") == "random-init" else "official"
    except (OSError, ValueError, AttributeError):
        return "official"


class Checkpointer:
    """Owns the run folder `out`: checks it may be written, reads resume.pt, and commits each epoch (rank 0 writes,
    every rank waits for it)."""

    def __init__(self, out: Path, d: Dist | None = None):
        self.out = Path(out)
        self.d = d or Dist()

    @property
    def resume_path(self) -> Path:
        return self.out / RESUME_FILE

    def read_resume(self, config: SamTrainConfig) -> dict | None:
        """resume.pt of the run in `out` when `config.resume` and it exists; DatasetError when it is unreadable or
        the run was started with other settings."""
        if not config.resume:
            return None
        if not self.resume_path.is_file():
            if self.d.main:
                print(f"note: {self.resume_path} not found; starting a new run", file=sys.stderr)
            return None
        try:
            state = torch.load(self.resume_path, map_location="cpu", weights_only=True)
            started = state["config"]
        except Exception as exc:  # noqa: BLE001 - any unpickling problem is a bad file
            raise DatasetError(f"{self.resume_path}: not a readable resume.pt ({exc.__class__.__name__}); "
                               "start a new run without --resume") from None
        for key, now in config.resume_settings().items():
            if started.get(key, now) != now:
                raise DatasetError(f"{self.resume_path}: run was started with --{key.replace('_', '-')} "
                                   f"{started[key]}, not {now}")
        return state

    def check_new(self, config: SamTrainConfig) -> None:
        """OutputError unless `out` may hold a new run: absent, empty, a previous train-sam run or --force; never a
        folder that holds or lies inside the prompts."""
        check_output_dir(self.out, KIND, inputs=[config.prompts], force=config.force)

    def open(self, new: bool) -> None:
        """Make the folder a train-sam run folder (marker), drop temporary files of killed runs and, for a new run,
        the previous run's resume.pt (a kill before this run's first commit must not resume that one)."""
        if self.d.main:
            self.out.mkdir(parents=True, exist_ok=True)
            remove_stale_temps(self.out)
            if marker_kind(self.out) != KIND:
                atomic_write_text(self.out / MARKER, json.dumps({"kind": KIND}) + "\n")
            if new:
                self.resume_path.unlink(missing_ok=True)
        self.d.barrier()

    def save(self, sam: Sam, progress: EpochHistory, summary: dict, improved: bool, training: dict) -> None:
        """Commit the epoch `progress` ends with: best.pth (when improved), last.pth, best.json, then resume.pt
        (with `training`: optimizer, scheduler, scaler states and what the resumed run needs)."""
        if self.d.main:
            ops = ops_for(sam)
            weights = ops.save_format(cpu_state(sam))  # the family's file format (SAM 2: {"model": state_dict})
            if improved:
                torch_save(weights, self.out / "best.pth")
            torch_save(weights, self.out / "last.pth")
            atomic_write_text(self.out / "best.json", json.dumps(summary, indent=2) + "\n")
            torch_save({"epoch": progress.epoch, **training, "best_iou": progress.best_iou,
                               "best_epoch": progress.best_epoch, "history": progress.history,
                               **{name: cpu_state(getattr(sam, name)) for name in ops.trained}},
                              self.resume_path)  # written last: the commit point of the epoch
        self.d.barrier()


def load_start(config: SamTrainConfig, resume: dict | None, main: bool = True) -> Start:
    """The start model: the resumed run's (frozen encoder from last.pth, trained parts from resume.pt), a seeded
    random init (--from-scratch), or --checkpoint / the official weights of --model-type."""
    if resume is not None:
        sam = load_sam(config.out / "last.pth", config.model_type)
        for name in ops_for(sam).trained:
            if name in resume:  # resume.pt is the commit point: last.pth may already hold the next, unfinished epoch
                getattr(sam, name).load_state_dict(resume[name])
        return Start(sam, resume["weights"], resume["checkpoint"], resume)
    if config.from_scratch:
        if main:
            warn(f"--from-scratch: {config.model_type} SAM with RANDOM weights. The masks will be meaningless; "
                 "use this for smoke tests only, never for results.")
        return Start(build_random_sam(config.model_type, config.seed), "random-init", None)
    ckpt = config.checkpoint or default_checkpoint(config.model_type)
    return Start(load_sam(ckpt, config.model_type), inherited_weights(Path(ckpt)), str(ckpt))


def resume_training_state(optimizer, scheduler, scaler, resume: dict) -> EpochHistory:
    """Load the optimizer/scheduler/scaler states of resume.pt; the progress it recorded. A run started on the CPU
    saved its disabled GradScaler as {}: resumed on a GPU, the enabled scaler starts from its initial scale (its
    load_state_dict({}) would raise)."""
    optimizer.load_state_dict(resume["optimizer"])
    scheduler.load_state_dict(resume["scheduler"])
    if resume.get("scaler"):
        scaler.load_state_dict(resume["scaler"])
    return EpochHistory(resume["history"], resume["best_iou"], resume["best_epoch"])
