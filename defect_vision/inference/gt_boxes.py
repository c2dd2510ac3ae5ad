"""Ground-truth boxes as a detector: the boxes of a COCO json's annotations (score 1), for the segmentation upper
bound (`predict --gt-boxes`)."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from defect_vision.coco import load_coco
from defect_vision.detections import Detections, ImageInfo
from defect_vision.errors import DatasetError
from defect_vision.inference.interfaces import BoxDetector


class GtBoxes(BoxDetector):
    """The annotations of a COCO json, looked up by image id (when it is the source json itself) or by resolved path
    (`ids`: source image id -> the json's id, from `match`)."""

    def __init__(self, path: Path, ids: dict[int, int | None]):
        self.path = Path(path)
        self.coco = load_coco(self.path, masks=False)
        self.class_names = self.coco.class_names
        self.category_ids = None  # a json's own category ids stay in its Detections
        self.gt_id = ids
        self.calls = 0

    @classmethod
    def match(cls, path: Path, images: Sequence[ImageInfo], same_json: bool) -> GtBoxes:
        """The json's boxes for `images` (the run's source); DatasetError when it shares none of them."""
        gt = cls(path, {})
        by_path = {im.path: im.id for im in gt.coco.images}
        gt.gt_id = {img.id: (img.id if same_json else by_path.get(img.path)) for img in images}
        if not any(v is not None for v in gt.gt_id.values()):
            raise DatasetError(f"{path}: none of the source images is in this json (matched by path under info.image_root)")
        return gt

    def boxes_of(self, image_id: int) -> Detections:
        """The boxes of the source image `image_id` (none when the json does not have it)."""
        gt_id = self.gt_id.get(image_id)
        if gt_id is None:
            return Detections.empty(class_names=self.coco.class_names, category_ids=self.coco.category_ids)
        gt = self.coco.detections[gt_id]
        return Detections(gt.xyxy.copy(), gt.class_id.copy(), np.ones(len(gt)), class_names=gt.class_names,
                          category_ids=gt.category_ids)

    def predict(self, images, conf, iou, max_det, classes, timings, infos=None) -> list[Detections]:
        """The boxes of each image (`infos` name them), only the class indices `classes`; conf, NMS and max_det do
        not apply to annotations."""
        if infos is None:
            raise DatasetError(f"{self.path}: ground-truth boxes need the images' ids")
        dets = [self.boxes_of(info.id) for info in infos]  # no detector call: `calls` stays 0
        return [d[np.isin(d.class_id, classes)] for d in dets] if classes is not None else dets
