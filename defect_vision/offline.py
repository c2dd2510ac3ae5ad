"""Keep ultralytics offline: no font, AMP-check, hub or analytics traffic and no pip auto-install.

Call `go_offline()` before (or right after) the first `import ultralytics`; it is idempotent.
"""
from __future__ import annotations

import os
from pathlib import Path

_ENV = {"YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "false", "YOLO_VERBOSE": os.environ.get("YOLO_VERBOSE", "true")}
_NETWORK_CALLBACK_MODULES = ("ultralytics.utils.events", "ultralytics.utils.callbacks.platform",
                             "ultralytics.utils.callbacks.hub")
_done = False

for _k, _v in _ENV.items():  # before ultralytics is imported anywhere through this module
    os.environ.setdefault(_k, _v)


def local_font(font: str = "Arial.ttf") -> Path | None:
    """A font file on this machine for ultralytics' plots: the requested one if present, else matplotlib's DejaVu Sans."""
    from matplotlib import font_manager
    from ultralytics.utils import USER_CONFIG_DIR

    name = Path(font).name
    if (USER_CONFIG_DIR / name).exists():
        return USER_CONFIG_DIR / name
    for f in font_manager.fontManager.ttflist:
        if name in f.fname and os.path.exists(f.fname):
            return Path(f.fname)
    fallback = Path(font_manager.findfont("DejaVu Sans", fallback_to_default=True))
    return fallback if fallback.exists() else None


def _no_amp_download_check(model) -> bool:
    """AMP on for CUDA without ultralytics' check, which downloads yolo26n.pt to compare outputs."""
    import torch

    device = next(model.parameters()).device
    return device.type == "cuda" and torch.cuda.is_available()


def go_offline() -> None:
    """Patch the installed ultralytics so that training, validation and prediction never reach the network."""
    global _done
    if _done:
        return
    for k, v in _ENV.items():
        os.environ[k] = v
    import ultralytics.data.utils as data_utils
    import ultralytics.engine.trainer as trainer_mod
    import ultralytics.utils as uutils
    import ultralytics.utils.checks as checks
    import ultralytics.utils.events as events
    import ultralytics.utils.plotting as plotting

    # the module-level ONLINE flags were computed at import; force them off wherever they were copied
    for mod in (uutils, checks, events):
        if hasattr(mod, "ONLINE"):
            mod.ONLINE = False
    checks.AUTOINSTALL = False
    uutils.AUTOINSTALL = False
    events.events.enabled = False
    # fonts: check_det_dataset() and the plotters would HEAD/GET github for Arial.ttf
    for mod in (checks, data_utils, plotting):
        if hasattr(mod, "check_font"):
            mod.check_font = local_font
    trainer_mod.check_amp = _no_amp_download_check

    _done = True


def strip_network_callbacks(obj) -> None:
    """Remove analytics, hub and platform callbacks from a trainer/validator/predictor's callback lists."""
    for event, funcs in obj.callbacks.items():
        obj.callbacks[event] = [f for f in funcs if getattr(f, "__module__", "") not in _NETWORK_CALLBACK_MODULES]
