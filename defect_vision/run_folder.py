"""The layout of a pipeline run folder (runs/<C>): where each stage writes and what `--run`,
`DefectPredictor.from_run`, the pipeline plan and the report read. Every path of a run is named here once."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from defect_vision.errors import DatasetError


@dataclass(frozen=True)
class RunFolder:
    """The places inside one run folder."""

    root: Path

    @property
    def detector_dir(self) -> Path:
        return self.root / "yolo_world"

    @property
    def detector(self) -> Path:
        return self.detector_dir / "best.pt"

    @property
    def sam_dir(self) -> Path:
        return self.root / "sam"

    @property
    def sam(self) -> Path:
        return self.sam_dir / "best.pth"

    @property
    def sam_embeddings(self) -> Path:
        return self.sam_dir / "embeddings"

    @property
    def thresholds(self) -> Path:
        """Written by calibrate; present only once calibrated."""
        return self.root / "thresholds.json"

    @property
    def onnx(self) -> Path:
        """Where `defect-vision export` writes by default."""
        return self.root / "onnx"

    @property
    def anomaly_dir(self) -> Path:
        """`defect-vision train-anomaly`: anomaly.json + model.pt (predict --anomaly)."""
        return self.root / "anomaly"

    def stage(self, name: str) -> Path:
        """A stage's output folder: predict, predict_val, predict_gt_boxes, eval, eval_gt_boxes, report, openvocab,
        curve."""
        return self.root / name

    def predict_masks(self, source: str) -> Path:
        """The test split predicted with `predict --masks source` (MASK_SOURCES): sam is the pipeline's predict."""
        return self.stage("predict" if source == "sam" else f"predict_masks_{source}")

    def eval_masks(self, source: str) -> Path:
        """The evaluation of predict_masks(source): sam is the pipeline's eval."""
        return self.stage("eval" if source == "sam" else f"eval_masks_{source}")


MASK_SOURCES = ("sam", "detector", "refine")  # predict --masks: SAM on the box, the YOLOE -seg mask, SAM refining it


@dataclass(frozen=True)
class RunModels:
    detector: Path  # <run>/yolo_world/best.pt
    sam: Path  # <run>/sam/best.pth
    thresholds: Path | None  # <run>/thresholds.json when calibrated
    onnx: Path  # <run>/onnx, where `defect-vision export` writes by default


def run_models(run: str | Path) -> RunModels:
    """The model files of `run`; DatasetError when it is not a folder (the files themselves are checked by their
    loaders)."""
    folder = RunFolder(Path(run))
    if not folder.root.is_dir():
        raise DatasetError(f"{folder.root}: no such run folder (expected yolo_world/best.pt and sam/best.pth in it)")
    thresholds = folder.thresholds
    return RunModels(folder.detector, folder.sam, thresholds if thresholds.is_file() else None, folder.onnx)
