"""Build a Segment Anything model: the official vit_b/l/h from weights/, the project's small `vit_tiny`, MobileSAM
(`mobile_sam`: TinyViT encoder + SAM's prompt encoder and decoder, `mobile_sam_test` its small config) and, through
defect_vision.models.sam2, SAM 2 / 2.1 (`sam2.1_t` ... `sam2_l`, `sam2.1_test`).

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
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from segment_anything import sam_model_registry
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)
from segment_anything.utils.transforms import ResizeLongestSide as SamResizeLongestSide

from defect_vision.errors import ConfigError, DatasetError
from defect_vision.models.checkpoints import (
    MODEL_TYPES,
    SAM,
    SAM2,
    ULTRALYTICS,
    family,
    sniff_checkpoint,
)

OFFICIAL_CHECKPOINTS = {  # file names of the released checkpoints (Meta's; MobileSAM's; Meta's SAM 2 in models/sam2.py)
    "vit_b": "sam_vit_b_01ec64.pth",
    "vit_l": "sam_vit_l_0b3195.pth",
    "vit_h": "sam_vit_h_4b8939.pth",
    "mobile_sam": "mobile_sam.pt",
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
    """weights/<official file name> for vit_b/l/h, mobile_sam and sam2*; DatasetError for a type without one
    (vit_tiny and the other test configs)."""
    official = official_checkpoints()
    if model_type not in official:
        raise ConfigError(f"{{model_type}} {model_type}: {model_type} has no official checkpoint; pass {{checkpoint}} PATH "
                           "or {from_scratch}", "model_type", "checkpoint", "from_scratch")
    return WEIGHTS_DIR / official[model_type]


def official_checkpoints() -> dict[str, str]:
    """model type -> the released checkpoint's file name, every family."""
    from defect_vision.models.sam2 import OFFICIAL_CHECKPOINTS as SAM2_OFFICIAL

    return {**OFFICIAL_CHECKPOINTS, **SAM2_OFFICIAL}


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


@dataclass(frozen=True)
class TinyVitSpec:
    """MobileSAM's TinyViT image encoder (ultralytics' TinyViT, the module names of MobileSAM's mobile_sam.pt)."""

    embed_dims: tuple[int, ...] = (64, 128, 160, 320)  # the last must be 320: TinyViT's last stage keeps its stride
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (2, 4, 5, 10)
    img_size: int = 1024


MOBILE_SAM = TinyVitSpec()
MOBILE_SAM_TEST = TinyVitSpec((16, 32, 64, 320), (1, 1, 1, 1), (1, 1, 2, 5), 512)  # a 32x32 grid, as vit_tiny


def build_mobile_sam(spec: TinyVitSpec = MOBILE_SAM, checkpoint: str | Path | None = None) -> Sam:
    """MobileSAM: segment_anything's Sam with ultralytics' TinyViT image encoder (MobileSAM's settings) and SAM's
    prompt encoder and mask decoder; 16x downsampling (64x64 embeddings at 1024 px)."""
    from ultralytics.models.sam.modules.tiny_encoder import TinyViT

    grid = spec.img_size // 16
    encoder = TinyViT(img_size=spec.img_size, in_chans=3, num_classes=1000, embed_dims=list(spec.embed_dims),
                      depths=list(spec.depths), num_heads=list(spec.num_heads), window_sizes=[7, 7, 14, 7],
                      mlp_ratio=4.0, drop_rate=0.0, drop_path_rate=0.0, use_checkpoint=False, mbconv_expand_ratio=4.0,
                      local_conv_size=3, layer_lr_decay=0.8)
    sam = Sam(
        image_encoder=encoder,
        prompt_encoder=PromptEncoder(embed_dim=256, image_embedding_size=(grid, grid),
                                     input_image_size=(spec.img_size, spec.img_size), mask_in_chans=16),
        mask_decoder=MaskDecoder(num_multimask_outputs=3,
                                 transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
                                 transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    if checkpoint is not None:
        sam.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    return sam.eval()  # eval() also refreshes TinyViT's cached attention biases from the loaded weights


sam_model_registry.setdefault("mobile_sam", partial(build_mobile_sam, MOBILE_SAM))
sam_model_registry.setdefault("mobile_sam_test", partial(build_mobile_sam, MOBILE_SAM_TEST))


def read_checkpoint(path: Path, what: str = "SAM"):
    """The object a .pth file holds (CPU, tensors only); CheckpointError naming the file when missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: {what} checkpoint not found; {DOWNLOAD_HINT}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling problem is a bad file
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({exc.__class__.__name__})") from None


def load_state_dict(path: Path) -> dict:
    """A plain state_dict from a .pth file (CPU); CheckpointError naming the file when missing or unreadable."""
    state = read_checkpoint(path)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: not a plain state_dict of tensors")
    return state


def load_sam2_state(path: Path) -> dict:
    """The state_dict of a SAM 2 file ({"model": state_dict}); CheckpointError naming the file and what it is."""
    from defect_vision.models.sam2 import state_of

    obj = read_checkpoint(path, "SAM 2")
    try:
        return state_of(obj, Path(path))
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None


def build_sam(model_type: str, checkpoint: str | Path | None):
    """A SAM of `model_type` on CPU in eval mode (segment_anything's Sam; ultralytics' SAM2Model for sam2*);
    `checkpoint=None` gives random init (from scratch)."""
    if model_type not in MODEL_TYPES:
        raise ValueError(f"unknown SAM model type '{model_type}' (choose from {', '.join(MODEL_TYPES)})")
    if family(model_type) == SAM2:
        from defect_vision.models.sam2 import build_sam2

        sam = build_sam2(model_type)
        state = load_sam2_state(Path(checkpoint)) if checkpoint is not None else None
    else:
        sam = sam_model_registry[model_type](checkpoint=None)
        state = load_state_dict(Path(checkpoint)) if checkpoint is not None else None
    if state is not None:
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
        if checkpoint.name in official_checkpoints().values():
            raise DatasetError(f"{checkpoint}: SAM checkpoint not found; {DOWNLOAD_HINT}")
        raise DatasetError(f"{checkpoint}: SAM checkpoint not found (expected a SAM best.pth state_dict)")
    kind = sniff_checkpoint(checkpoint)
    if kind == ULTRALYTICS:
        raise ConfigError(f"{checkpoint}: this is an ultralytics (YOLO-World) checkpoint, not a SAM state_dict "
                           f"(give it as {{detector}})", "detector")
    if kind in (SAM, SAM2) and kind != family(model_type):
        guess = guess_model_type(checkpoint)
        what = f"a {guess} checkpoint" if guess else ("a SAM 2 checkpoint" if kind == SAM2 else "a SAM state_dict")
        raise ConfigError(f"{checkpoint}: {what}, not of the {family(model_type)} family of {{model_type}} {model_type}"
                           + (f"; try {{model_type}} {guess}" if guess else ""), "model_type")
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
        if isinstance(state.get("model"), dict):
            from defect_vision.models.sam2 import guess_sam2_type

            return guess_sam2_type(state["model"])
        if "image_encoder.layers.0.blocks.0.conv1.c.weight" in state:  # TinyViT
            first = state["image_encoder.patch_embed.seq.2.c.weight"].shape[0]
            return {MOBILE_SAM.embed_dims[0]: "mobile_sam", MOBILE_SAM_TEST.embed_dims[0]: "mobile_sam_test"}.get(first)
        width = state["image_encoder.patch_embed.proj.weight"].shape[0]
        depth = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("image_encoder.blocks."))
    except Exception:  # noqa: BLE001 - only a hint
        return None
    return {(768, 12): "vit_b", (1024, 24): "vit_l", (1280, 32): "vit_h", (64, 2): "vit_tiny"}.get((width, depth))
