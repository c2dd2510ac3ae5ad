"""Build a Segment Anything model: the official vit_b/l/h from weights/, or the project's small `vit_tiny`.

`vit_tiny` (for tests and the demo) is built with segment_anything's own classes: a small ViT image
encoder (256 px input, patch 8: a 32x32 embedding grid) and the REAL prompt encoder and mask decoder
(prompt_embed_dim 256). Importing this module registers it in `segment_anything.sam_model_registry`,
so `sam_model_registry["vit_tiny"](checkpoint=path)` loads our checkpoints like the official ones.

The one place where SAM models are made: `build_sam` (low level, CheckpointError/ValueError),
`build_random_sam` (seeded random init), `load_sam` (a checkpoint with one-line DatasetErrors naming the file),
`model_type_for` / `guess_model_type` (which type a checkpoint is), `default_checkpoint` (weights/<official>) and
`ResizeLongestSide` (SAM's input resize, never to a 0-px side).
Training (defect_vision.training.sam) and inference (defect_vision.inference.segmenter) both use them.
"""
from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import torch
from segment_anything import sam_model_registry
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from segment_anything.utils.transforms import ResizeLongestSide as SamResizeLongestSide

from defect_vision.errors import DatasetError
from defect_vision.models.checkpoints import MODEL_TYPES, ULTRALYTICS, sniff_checkpoint

OFFICIAL_CHECKPOINTS = {  # file names of Meta's released checkpoints
    "vit_b": "sam_vit_b_01ec64.pth",
    "vit_l": "sam_vit_l_0b3195.pth",
    "vit_h": "sam_vit_h_4b8939.pth",
}
WEIGHTS_DIR = Path("weights")
DOWNLOAD_HINT = "get it with scripts/download_weights.sh (or https://github.com/facebookresearch/segment-anything#model-checkpoints)"


class ResizeLongestSide(SamResizeLongestSide):
    """segment_anything's resize of the longest side to the encoder's size, with each side at least 1 px: SAM's own
    rounds the short side of a line-scan strip (5000x1) to 0 px, which no resize accepts. Every other size is
    unchanged."""

    @staticmethod
    def get_preprocess_shape(oldh: int, oldw: int, long_side_length: int) -> tuple[int, int]:
        newh, neww = SamResizeLongestSide.get_preprocess_shape(oldh, oldw, long_side_length)
        return max(1, newh), max(1, neww)


class CheckpointError(FileNotFoundError):
    """A SAM checkpoint is missing or does not fit the model type; the message names the file."""


def default_checkpoint(model_type: str) -> Path:
    """weights/<official file name> for vit_b/l/h; DatasetError for a type without one (vit_tiny)."""
    if model_type not in OFFICIAL_CHECKPOINTS:
        raise DatasetError(f"--model-type {model_type}: {model_type} has no official checkpoint; pass --checkpoint PATH "
                           "or --from-scratch")
    return WEIGHTS_DIR / OFFICIAL_CHECKPOINTS[model_type]


TINY_IMAGE_SIZE, TINY_PATCH = 256, 8


def build_sam_vit_tiny(checkpoint: str | Path | None = None) -> Sam:
    """The project's small SAM: 2-block ViT (embed 64, patch 8: a 32x32 embedding grid on 256 px input, so
    small defects span several tokens) + the official prompt encoder and mask decoder (prompt_embed_dim 256)."""
    prompt_embed_dim, image_size, patch = 256, TINY_IMAGE_SIZE, TINY_PATCH
    grid = image_size // patch
    sam = Sam(
        image_encoder=ImageEncoderViT(
            img_size=image_size,
            patch_size=patch,
            embed_dim=64,
            depth=2,
            num_heads=2,
            mlp_ratio=4,
            out_chans=prompt_embed_dim,
            qkv_bias=True,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            use_rel_pos=True,
            window_size=8,
            global_attn_indexes=(1,),
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=prompt_embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(image_size, image_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=prompt_embed_dim, mlp_dim=2048, num_heads=8),
            transformer_dim=prompt_embed_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    sam.eval()
    if checkpoint is not None:
        sam.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    return sam


sam_model_registry.setdefault("vit_tiny", build_sam_vit_tiny)


def load_state_dict(path: Path) -> dict:
    """A plain state_dict from a .pth file (CPU); CheckpointError naming the file when missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: SAM checkpoint not found; {DOWNLOAD_HINT}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling problem is a bad file
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({exc.__class__.__name__})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: not a plain state_dict of tensors")
    return state


def build_sam(model_type: str, checkpoint: str | Path | None) -> Sam:
    """A SAM of `model_type` on CPU in eval mode; `checkpoint=None` gives random init (from scratch)."""
    if model_type not in MODEL_TYPES:
        raise ValueError(f"unknown SAM model type '{model_type}' (choose from {', '.join(MODEL_TYPES)})")
    sam = sam_model_registry[model_type](checkpoint=None)
    if checkpoint is not None:
        state = load_state_dict(Path(checkpoint))
        try:
            sam.load_state_dict(state)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[1:2] or [str(exc)[:200]]
            raise CheckpointError(f"{checkpoint}: does not fit SAM model type '{model_type}' ({first[0].strip()})") from None
    return sam.eval()


def build_random_sam(model_type: str, seed: int = 0) -> Sam:
    """A random-init SAM of `model_type` (torch's global RNG seeded with `seed` first: the same seed, the same model)."""
    torch.manual_seed(seed)
    return build_sam(model_type, None)


DEFAULT_MODEL_TYPE = "vit_b"


def model_type_for(checkpoint: Path, model_type: str | None) -> str:
    """--model-type if given, else the one in best.json beside the checkpoint (defect_vision.training.sam writes it), else vit_b."""
    if model_type:
        return model_type
    meta = Path(checkpoint).with_name("best.json")
    try:
        found = json.loads(meta.read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        found = None
    return found if found in MODEL_TYPES else DEFAULT_MODEL_TYPE


def load_sam(checkpoint: Path, model_type: str) -> Sam:
    """build_sam(model_type, checkpoint) with one-line errors naming the file (a detector given as --sam included)."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        if checkpoint.name in OFFICIAL_CHECKPOINTS.values():
            raise DatasetError(f"{checkpoint}: SAM checkpoint not found; {DOWNLOAD_HINT}")
        raise DatasetError(f"{checkpoint}: SAM checkpoint not found (expected a SAM best.pth state_dict)")
    if sniff_checkpoint(checkpoint) == ULTRALYTICS:
        raise DatasetError(f"{checkpoint}: this is an ultralytics (YOLO-World) checkpoint, not a SAM state_dict "
                           f"(give it as --detector)")
    try:
        return build_sam(model_type, checkpoint)
    except (CheckpointError, ValueError) as exc:
        msg = str(exc) if str(exc).startswith(str(checkpoint)) else f"{checkpoint}: {exc}"
        msg = msg if len(msg) <= 300 else msg[:297] + "..."
        guess = guess_model_type(checkpoint)
        if guess and guess != model_type:
            msg += f"; it looks like a {guess} checkpoint: try --model-type {guess}"
        raise DatasetError(msg) from None


def guess_model_type(checkpoint: Path) -> str | None:
    """The SAM model type whose encoder depth and width fit a state_dict (None if unreadable or unknown)."""
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
        width = state["image_encoder.patch_embed.proj.weight"].shape[0]
        depth = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("image_encoder.blocks."))
    except Exception:  # noqa: BLE001 - only a hint
        return None
    return {(768, 12): "vit_b", (1024, 24): "vit_l", (1280, 32): "vit_h", (64, 2): "vit_tiny"}.get((width, depth))
