"""The settings of a SAM fine-tune (`defect-vision train-sam` builds one from its options)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from defect_vision.errors import ConfigError
from defect_vision.models.checkpoints import MODEL_TYPES

RESUME_KEYS = ("model_type", "epochs", "seed", "batch_images", "train_prompt_encoder")  # must match to --resume


@dataclass
class SamTrainConfig:
    """Defaults are the CLI's; `prompts` and `out` are given (the CLI derives them from --category)."""

    prompts: Path  # folder with prompts_{train,val}.json
    out: Path  # run folder: best.pth, last.pth, best.json, resume.pt
    category: str = ""  # recorded in best.json (default: the prompts folder's name)
    cache_dir: Path | None = None  # embedding cache (default: <out>/embeddings)
    model_type: str = "vit_b"
    checkpoint: Path | None = None  # start weights (default: weights/<official file of model_type>)
    from_scratch: bool = False  # random-init SAM (smoke runs only)
    epochs: int = 10
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup: float = 0.05  # linear warm-up as a fraction of all steps, then cosine to 0
    clip_grad: float = 1.0  # gradient norm clipping (0: off)
    batch_images: int = 4  # images per optimizer step (all instances of each)
    jitter: float = 0.1  # box noise std as a fraction of the box side
    jitter_max: float = 20.0  # box noise clipped to this many pixels
    points: bool = False  # also prompt with the instances' points
    train_prompt_encoder: bool = False
    multimask: bool = False
    mask_threshold: float = 0.0  # logit threshold of val masks (SamPredictor's)
    device: str = "auto"
    resident_mb: float = 8192  # cached embeddings held on the training device (the rest read from disk per step)
    resume: bool = False  # continue the run in `out` after its last finished epoch
    force: bool = False  # write into an `out` that is not a previous train-sam output
    seed: int = 0
    quiet: bool = False  # no progress bars

    def __post_init__(self) -> None:
        self.prompts, self.out = Path(self.prompts), Path(self.out)
        self.cache_dir = Path(self.cache_dir) if self.cache_dir is not None else self.out / "embeddings"
        self.checkpoint = Path(self.checkpoint) if self.checkpoint is not None else None
        self.category = self.category or self.prompts.name
        if self.model_type not in MODEL_TYPES:
            raise ConfigError(f"{{model_type}} {self.model_type}: unknown (choose from {', '.join(MODEL_TYPES)})", "model_type")
        if self.from_scratch and self.checkpoint is not None:
            raise ConfigError(f"{{checkpoint}} {self.checkpoint}: not allowed with {{from_scratch}}", "checkpoint", "from_scratch")
        if self.epochs < 0 or self.batch_images < 1:
            raise ConfigError(f"{{epochs}} must be >= 0 and {{batch_images}} >= 1 (got {self.epochs}, {self.batch_images})", "epochs", "batch_images")

    def resume_settings(self) -> dict:
        """The settings a resumed run must share with the run it continues."""
        return {key: getattr(self, key) for key in RESUME_KEYS}
