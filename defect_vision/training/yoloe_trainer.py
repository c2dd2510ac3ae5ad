"""The YOLOE variant of DefectWorldTrainer: the same recipe (class embeddings supplied, never MobileCLIP; frozen,
tuned or prompt-only; atomic checkpoints; balanced sampling), with a YOLOEModel / YOLOESegModel. The text pathway
stays open: every batch carries the classes' text vectors (`txt_feats`), the head projects them (`reprta`), and the
checkpoint keeps the unfused head, so new names still work after fine-tuning (ultralytics' YOLOEPETrainer fuses
the classes into the head: closed-set). Validators are the plain detect/segment ones: the YOLOE validators would
encode the names with MobileCLIP (a download)."""
from __future__ import annotations

from copy import copy

from defect_vision.training.world_trainer import DefectWorldTrainer  # isort: skip  (switches ultralytics offline first)

from ultralytics.models.yolo.detect import DetectionValidator  # noqa: E402, I001
from ultralytics.models.yolo.segment import SegmentationValidator  # noqa: E402
from ultralytics.nn.tasks import YOLOEModel, YOLOESegModel  # noqa: E402
from ultralytics.utils import RANK  # noqa: E402


class DefectYOLOETrainer(DefectWorldTrainer):
    """DefectWorldTrainer over a YOLOE model; task "segment" (a -seg model, polygon labels) also trains the masks."""

    def build_model(self, cfg=None, weights=None, verbose: bool = True):
        seg = self.args.task == "segment"
        model = (YOLOESegModel if seg else YOLOEModel)(
            cfg["yaml_file"] if isinstance(cfg, dict) else cfg, ch=self.data["channels"],
            nc=min(self.data["nc"], 80), verbose=verbose and RANK == -1)  # nc: text slots per image, as ultralytics
        if weights:
            model.load(weights)
        return model

    def get_validator(self):
        validator = SegmentationValidator if self.args.task == "segment" else DetectionValidator
        return validator(self.test_loader, save_dir=self.save_dir, args=copy(self.args), _callbacks=self.callbacks)
