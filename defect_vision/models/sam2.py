"""Build a SAM 2 / 2.1 model (Hiera image encoder) with the architecture ultralytics ships
(`ultralytics.models.sam.modules`: Hiera, FpnNeck, SAM2Model, ...), in Meta's file format.

Meta's checkpoints (`sam2.1_hiera_tiny.pt`, ...) and ultralytics' (`sam2.1_t.pt`, ...) are both `{"model": state_dict}`
with the same key names (ultralytics' module tree mirrors Meta's `SAM2Base`), so one loader reads both, and the files
the trainer writes (`save_format`) load unchanged in Meta's `sam2.build_sam.build_sam2`. `sam2.1_test` is a small
random-init config for tests (256 px input, a 4-block Hiera).

The image path of Meta's `SAM2ImagePredictor` is reproduced by `Sam2Ops` (defect_vision.models.sam_family): the image
resized to a square (no aspect kept), ImageNet normalisation of [0, 1] pixels, `forward_image` + no_mem_embed, and
boxes as two corner points labelled 2 and 3.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")

import torch

OFFICIAL_CHECKPOINTS = {  # Meta's released file names (https://github.com/facebookresearch/sam2#model-description)
    "sam2.1_t": "sam2.1_hiera_tiny.pt", "sam2.1_s": "sam2.1_hiera_small.pt",
    "sam2.1_b+": "sam2.1_hiera_base_plus.pt", "sam2.1_l": "sam2.1_hiera_large.pt",
    "sam2_t": "sam2_hiera_tiny.pt", "sam2_s": "sam2_hiera_small.pt",
    "sam2_b+": "sam2_hiera_base_plus.pt", "sam2_l": "sam2_hiera_large.pt",
}
ULTRALYTICS_NAMES = {"sam2.1_t.pt": "sam2.1_t", "sam2.1_s.pt": "sam2.1_s", "sam2.1_b.pt": "sam2.1_b+", "sam2.1_l.pt": "sam2.1_l",
                     "sam2_t.pt": "sam2_t", "sam2_s.pt": "sam2_s", "sam2_b.pt": "sam2_b+", "sam2_l.pt": "sam2_l"}


@dataclass(frozen=True)
class HieraSpec:
    """One SAM 2 size: Hiera trunk settings (as in Meta's configs/sam2*/sam2*_hiera_*.yaml) and the input size."""

    embed_dim: int
    num_heads: int
    stages: tuple[int, ...]
    global_att_blocks: tuple[int, ...]
    window_spec: tuple[int, ...] = (8, 4, 14, 7)
    window_pos_embed_bkg_spatial_size: tuple[int, int] = (7, 7)
    image_size: int = 1024

    @property
    def channels(self) -> list[int]:
        """The FPN neck's backbone_channel_list (deepest stage first)."""
        return [self.embed_dim * 2**i for i in reversed(range(len(self.stages)))]


_T = HieraSpec(96, 1, (1, 2, 7, 2), (5, 7, 9))
_S = HieraSpec(96, 1, (1, 2, 11, 2), (7, 10, 13))
_B = HieraSpec(112, 2, (2, 3, 16, 3), (12, 16, 20), window_pos_embed_bkg_spatial_size=(14, 14))
_L = HieraSpec(144, 2, (2, 6, 36, 4), (23, 33, 43), window_spec=(8, 4, 16, 8))
SPECS = {"t": _T, "s": _S, "b+": _B, "l": _L}
TEST_SPEC = HieraSpec(16, 1, (1, 1, 2, 1), (3,), image_size=256)  # a global block may not start a stage


def spec_of(model_type: str) -> tuple[HieraSpec, bool]:
    """(Hiera spec, is SAM 2.1) of a SAM 2 model type."""
    if model_type == "sam2.1_test":
        return TEST_SPEC, True
    version, size = model_type.split("_", 1)
    return SPECS[size], version == "sam2.1"


def build_sam2(model_type: str):
    """A random-init ultralytics SAM2Model of `model_type` on CPU in eval mode (the 2.1 flags as Meta's 2.1 configs)."""
    from ultralytics.models.sam.modules.encoders import (
        FpnNeck,
        Hiera,
        ImageEncoder,
        MemoryEncoder,
    )
    from ultralytics.models.sam.modules.memory_attention import (
        MemoryAttention,
        MemoryAttentionLayer,
    )
    from ultralytics.models.sam.modules.sam import SAM2Model

    spec, v21 = spec_of(model_type)
    image_encoder = ImageEncoder(
        trunk=Hiera(embed_dim=spec.embed_dim, num_heads=spec.num_heads, stages=spec.stages,
                    global_att_blocks=spec.global_att_blocks, window_spec=spec.window_spec,
                    window_pos_embed_bkg_spatial_size=spec.window_pos_embed_bkg_spatial_size),
        neck=FpnNeck(d_model=256, backbone_channel_list=spec.channels, fpn_top_down_levels=[2, 3],
                     fpn_interp_model="nearest"),
        scalp=1,
    )
    model = SAM2Model(
        image_encoder=image_encoder,
        memory_attention=MemoryAttention(d_model=256, pos_enc_at_input=True, num_layers=4, layer=MemoryAttentionLayer()),
        memory_encoder=MemoryEncoder(out_dim=64),
        num_maskmem=7, image_size=spec.image_size, sigmoid_scale_for_mem_enc=20.0, sigmoid_bias_for_mem_enc=-10.0,
        use_mask_input_as_output_without_sam=True, directly_add_no_mem_embed=True, use_high_res_features_in_sam=True,
        multimask_output_in_sam=True, iou_prediction_use_sigmoid=True, use_obj_ptrs_in_encoder=True,
        add_tpos_enc_to_obj_ptrs=True, only_obj_ptrs_in_the_past_for_eval=True, pred_obj_scores=True,
        pred_obj_scores_mlp=True, fixed_no_obj_ptr=True, multimask_output_for_tracking=True,
        use_multimask_token_for_obj_ptr=True, multimask_min_pt_num=0, multimask_max_pt_num=1,
        use_mlp_for_obj_ptr_proj=True, compile_image_encoder=False,
        no_obj_embed_spatial=v21, proj_tpos_enc_in_obj_ptrs=v21, use_signed_tpos_enc_to_obj_ptrs=v21,
        sam_mask_decoder_extra_args={"dynamic_multimask_via_stability": True, "dynamic_multimask_stability_delta": 0.05,
                                     "dynamic_multimask_stability_thresh": 0.98},
    )
    model.image_encoder.img_size = spec.image_size  # what the shared code reads as the encoder's input size
    return model.eval()


def is_sam2(model) -> bool:
    return type(model).__name__ == "SAM2Model"


def state_of(obj, path: Path) -> dict:
    """The state_dict inside a SAM 2 file ({"model": state_dict}); ValueError naming what the file is otherwise."""
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: not a SAM 2 checkpoint (a {type(obj).__name__}, expected {{\"model\": state_dict}})")  # noqa: TRY004
    if "model" not in obj:
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            what = "SAM 2" if any(k.startswith("image_encoder.trunk.") for k in obj) else "SAM"
            raise ValueError(f"{path}: a plain {what} state_dict without the 'model' key (SAM 2 files are "
                             "{\"model\": state_dict}, as Meta's sam2.1_hiera_*.pt)")
        raise ValueError(f"{path}: a SAM 2 checkpoint needs a 'model' key (found {', '.join(map(str, list(obj)[:5]))})")
    state = obj["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: its 'model' entry is not a state_dict of tensors")
    return state


def save_format(state: dict) -> dict:
    """What a SAM 2 checkpoint file holds: Meta's {"model": state_dict}."""
    return {"model": state}


def guess_sam2_type(state: dict) -> str | None:
    """The SAM 2 model type whose Hiera width, depth and version fit a state_dict (None if unknown)."""
    try:
        width = state["image_encoder.trunk.patch_embed.proj.weight"].shape[0]
        depth = 1 + max(int(k.split(".")[3]) for k in state if k.startswith("image_encoder.trunk.blocks."))
    except (KeyError, ValueError, AttributeError, IndexError):
        return None
    v21 = "no_obj_embed_spatial" in state
    for model_type in (("sam2.1_t", "sam2.1_s", "sam2.1_b+", "sam2.1_l", "sam2.1_test") if v21
                       else ("sam2_t", "sam2_s", "sam2_b+", "sam2_l")):
        spec, _ = spec_of(model_type)
        if (spec.embed_dim, sum(spec.stages)) == (width, depth):
            return model_type
    return None
