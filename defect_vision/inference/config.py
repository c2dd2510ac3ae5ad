"""`PredictConfig`: everything that changes what a prediction is (the models aside), checked once."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from defect_vision.devices import cpu_threads
from defect_vision.errors import ConfigError

BACKENDS = ("torch", "onnxruntime", "openvino")  # the checkpoints, or the ONNX files of a `defect-vision export`
MASK_SOURCES = ("sam", "detector", "refine")  # where a detection's mask comes from (detector/refine: a YOLOE -seg)


@dataclass(frozen=True)
class PredictConfig:
    """Everything that changes what a prediction is (the models aside). Never changed once made: derive another
    with dataclasses.replace."""

    conf: float | None = None  # detector confidence for every class (None: see defect_vision.thresholds' rule)
    iou: float = 0.5  # NMS IoU
    max_det: int = 100
    classes: list[str] | None = None  # keep only these class names; names the detector does not know are embedded
    text_encoder: str | None = None  # for new classes names: clip | random (default: the checkpoint's encoder)
    clip: Path | None = None  # CLIP ViT-B-32 file for new names (default weights/clip/ViT-B-32.pt)
    prompts: Path | None = None  # prompts.yaml: phrasings of new names (default: the name itself)
    encoder: Callable | None = field(default=None, repr=False)  # stand-in text encoder (API/tests)
    imgsz: int | None = None  # detector input size (default: the checkpoint's)
    thresholds: Path | None = None  # per-class thresholds the user names (evaluation.calibrate's file)
    run_thresholds: Path | None = None  # the run's thresholds file: used only without `thresholds` and `conf`
    mask_threshold: float = 0.0  # SAM mask logit threshold
    model_type: str | None = None  # SAM model type (default: best.json beside the checkpoint, else vit_b)
    box_only: bool = False  # no SAM: a detection's mask is its box
    masks: str = "sam"  # sam (SAM on the box) | detector (a YOLOE -seg detector's own mask) | refine (SAM, box + that mask)
    device: str = "auto"
    precision: str = "auto"  # autocast dtype on CUDA: auto (fp16) | fp32 | fp16 | bf16
    sam_batch: int | None = None  # images per SAM encoder forward (default: 4 on CUDA, 1 on CPU)
    threads: int | None = None  # CPU threads for the models (default: the cores this process may run on)
    workers: int | None = None  # batches through the models at once (default: default_workers on the CPU with torch, else 1)
    seed: int = 0
    backend: str = "torch"  # torch | onnxruntime | openvino (the last two: the `onnx` export folder, on the CPU)
    onnx: Path | None = None  # a `defect-vision export` folder (backends onnxruntime and openvino; ignored by torch)
    anomaly: Path | None = None  # a `defect-vision train-anomaly` folder: heat maps + `anomaly` detections (issue 21)

    def __post_init__(self):
        self.check()

    def check(self) -> None:
        """ConfigError naming the first field out of range."""
        for name in ("conf", "iou"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ConfigError(f"{{{name}}} {value}: must be within [0, 1]", name)
        if self.max_det < 1:
            raise ConfigError(f"{{max_det}} {self.max_det}: must be >= 1", "max_det")
        for name in ("sam_batch", "threads", "workers", "imgsz"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"{{{name}}} {getattr(self, name)}: must be >= 1", name)
        if self.masks not in MASK_SOURCES:
            raise ConfigError(f"{{masks}} {self.masks}: expected one of {', '.join(MASK_SOURCES)}", "masks")
        if self.backend not in BACKENDS:
            raise ConfigError(f"{{backend}} {self.backend}: expected one of {', '.join(BACKENDS)}", "backend")

    def cpu_split(self, device) -> tuple[int, int]:
        """(model workers, threads each). On the CPU several batches go through the models at once, each on its share
        of the threads (2 cores: 2 workers x 1 thread): no barrier between the cores, so another busy process slows
        one worker down instead of stalling every operator (scripts/bench_vs_loop.py, docs/notes/inference.md).
        CUDA: 1 worker (the GPU batches). The exported backends' sessions are built for this many callers at once:
        1 unless `workers` is given (the CLI gives `default_workers`), so a predictor called from one thread in the
        Python API keeps every core."""
        budget = self.threads or cpu_threads()
        workers = self.workers or (default_workers(budget) if device.type == "cpu" and self.backend == "torch" else 1)
        return workers, (max(1, budget // workers) if workers > 1 else budget)


def default_workers(threads: int) -> int:
    """Model workers for `threads` CPU threads: 2 to 4, the count that leaves the fewest threads idle (the most
    workers on a tie: 6 -> 3 x 2, 8 -> 4 x 2, 10 -> 2 x 5); 1 for one thread."""
    return max(range(min(4, threads), 1, -1), key=lambda w: w * (threads // w)) if threads > 1 else 1


def predict_workers(backend: str, workers: int | None, threads: int | None) -> int | None:
    """The workers `defect-vision predict` asks for: as given; for an exported backend `default_workers` (its
    sessions are built for the workers that will call them), where the Python API's default is one caller."""
    if workers is None and backend != "torch":
        return default_workers(threads or cpu_threads())
    return workers
