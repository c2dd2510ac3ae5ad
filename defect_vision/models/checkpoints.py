"""Tell checkpoint files apart without unpickling them: an ultralytics model, a SAM state_dict, a SAM 2 file, or
something else."""
from __future__ import annotations

import zipfile
from pathlib import Path

ULTRALYTICS, SAM, STATE_DICT, UNKNOWN, UNREADABLE = "ultralytics", "sam", "state_dict", "unknown", "unreadable"
# the SAM sizes models/sam.py builds (here, without torch, so --help and the configs stay light); one tuple: a new SAM
# family adds its types here
# `*_test` are small random-init configs of a family for tests and demos (like vit_tiny)
SAM_TYPES = ("vit_b", "vit_l", "vit_h", "vit_tiny", "mobile_sam", "mobile_sam_test")
SAM2_TYPES = ("sam2.1_t", "sam2.1_s", "sam2.1_b+", "sam2.1_l", "sam2_t", "sam2_s", "sam2_b+", "sam2_l", "sam2.1_test")
MODEL_TYPES = SAM_TYPES + SAM2_TYPES
SAM2 = "sam2"  # the kind of a SAM 2 checkpoint ({"model": state_dict}, Meta's format)


def family(model_type: str) -> str:
    """"sam" (segment_anything's Sam: ViT or MobileSAM's TinyViT encoder) or "sam2" (SAM 2 / 2.1, Hiera encoder)."""
    return SAM2 if model_type in SAM2_TYPES else SAM


def sniff_checkpoint(path: Path) -> str:
    """Kind of a torch.save file, read from its pickle's text (module and key names) only."""
    try:
        with zipfile.ZipFile(path) as zf:
            pkl = next((n for n in zf.namelist() if n.endswith("data.pkl")), None)
            if pkl is None:
                return UNREADABLE
            data = zf.read(pkl)
    except (zipfile.BadZipFile, OSError):
        return UNREADABLE
    # SAM key names first: ultralytics' own SAM 2 files may carry its name in their metadata
    if b"image_encoder.trunk." in data and b"sam_mask_decoder." in data:
        return SAM2
    if b"image_encoder." in data and b"mask_decoder." in data and b"ultralytics.nn" not in data:
        return SAM
    if b"ultralytics" in data:
        return ULTRALYTICS
    if b"collections\nOrderedDict" in data or b"_rebuild_tensor" in data:
        return STATE_DICT
    return UNKNOWN
