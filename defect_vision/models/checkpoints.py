"""Tell checkpoint files apart without unpickling them: an ultralytics model, a SAM state_dict, or something else."""
from __future__ import annotations

import zipfile
from pathlib import Path

ULTRALYTICS, SAM, STATE_DICT, UNKNOWN, UNREADABLE = "ultralytics", "sam", "state_dict", "unknown", "unreadable"
# the SAM sizes models/sam.py builds (here, without torch, so --help and the configs stay light); one tuple: a new SAM
# family adds its types here
MODEL_TYPES = ("vit_b", "vit_l", "vit_h", "vit_tiny")


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
    if b"ultralytics" in data:
        return ULTRALYTICS
    if b"image_encoder." in data and b"mask_decoder." in data:
        return SAM
    if b"collections\nOrderedDict" in data or b"_rebuild_tensor" in data:
        return STATE_DICT
    return UNKNOWN
