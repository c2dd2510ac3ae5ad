"""The model files of a pipeline run folder (runs/<C>): what `--run` and `DefectPredictor.from_run` stand for."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from defect_vision.errors import DatasetError


@dataclass(frozen=True)
class RunModels:
    detector: Path  # <run>/yolo_world/best.pt
    sam: Path  # <run>/sam/best.pth
    thresholds: Path | None  # <run>/thresholds.json when calibrated
    onnx: Path  # <run>/onnx, where `defect-vision export` writes by default


def run_models(run: str | Path) -> RunModels:
    """The files of `run`; DatasetError when it is not a folder (the files themselves are checked by their loaders)."""
    run = Path(run)
    if not run.is_dir():
        raise DatasetError(f"{run}: no such run folder (expected yolo_world/best.pt and sam/best.pth in it)")
    thresholds = run / "thresholds.json"
    return RunModels(run / "yolo_world" / "best.pt", run / "sam" / "best.pth",
                     thresholds if thresholds.is_file() else None, run / "onnx")
