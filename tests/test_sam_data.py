"""Reading the SAM prompts JSON as Detections, box jitter, and targets in SAM's low-res frame."""
from __future__ import annotations

import json

import numpy as np
import pytest
from segment_anything.utils.transforms import ResizeLongestSide

from defect_vision.detections import Detections
from defect_vision.errors import DatasetError
from defect_vision.masks import encode_rle
from defect_vision.training.sam_data import (
    jitter_boxes,
    load_prompts,
    lowres_target,
    padded_points,
)


def _write_prompts(path, root, boxes=((10, 20, 30, 60),), h=100, w=80, category_ids=None):
    mask = np.zeros((h, w), bool)
    insts = []
    for k, (x0, y0, x1, y1) in enumerate(boxes):
        m = mask.copy()
        m[y0:y1, x0:x1] = True
        insts.append({"annotation_id": k + 11, "category_id": (category_ids or [7] * len(boxes))[k], "box": [x0, y0, x1, y1],
                      "points": [[x0 + 1, y0 + 1]], "point_labels": [1], "mask": encode_rle(m)})
    data = {"info": {"category": "toy", "image_root": str(root)},
            "categories": [{"id": 7, "name": "scratch"}, {"id": 3, "name": "hole"}],
            "images": [{"id": 1, "file_name": "test/hole/000.png", "height": h, "width": w, "defect_type": "hole",
                        "instances": insts},
                       {"id": 2, "file_name": "train/good/000.png", "height": h, "width": w, "instances": []}]}
    path.write_text(json.dumps(data))
    return path


def test_load_prompts_gives_one_detections_per_image(tmp_path):
    path = _write_prompts(tmp_path / "prompts_train.json", tmp_path / "root", boxes=((10, 20, 30, 60), (50, 5, 70, 15)),
                          category_ids=[7, 3])
    ps = load_prompts(path)
    assert ps.category == "toy" and len(ps.images) == 2 and ps.num_instances == 2
    assert ps.class_names == ["hole", "scratch"] and ps.category_ids == [3, 7]  # class index = categories sorted by id
    assert [det.image.id for det in ps.with_instances] == [1]
    det, good = ps.images
    assert isinstance(det, Detections) and len(good) == 0 and good.image.is_good and not det.image.is_good
    assert det.image.path == (tmp_path / "root" / "test/hole/000.png").resolve()
    assert (det.image.file_name, det.image.height, det.image.width) == ("test/hole/000.png", 100, 80)
    assert det.image.extra == {"defect_type": "hole"}
    assert det.xyxy.tolist() == [[10, 20, 30, 60], [50, 5, 70, 15]] and det.score.tolist() == [1.0, 1.0]
    assert det.class_id.tolist() == [1, 0] and det.category_id.tolist() == [7, 3] and det.names == ["scratch", "hole"]
    assert det.data["annotation_id"].tolist() == [11, 12]
    assert det.data["points"][1].tolist() == [[51.0, 6.0]] and det.data["point_labels"][0].tolist() == [1]
    assert det.masks.shape == (2, 100, 80) and det.masks[0].sum() == 20 * 40 and det.masks[0][20, 10]
    assert det.area.tolist() == [800, 200]
    # subsets keep the per-instance extras in step
    second = det[np.array([False, True])]
    assert second.data["annotation_id"].tolist() == [12] and second.data["points"][0].tolist() == [[51.0, 6.0]]


def test_bad_prompts_files_name_the_file(tmp_path):
    with pytest.raises(DatasetError, match=r"prompts_val.json: no such prompts file"):
        load_prompts(tmp_path / "prompts_val.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DatasetError, match=rf"{bad}: not valid JSON"):
        load_prompts(bad)
    p = _write_prompts(tmp_path / "p.json", tmp_path)
    good = json.loads(p.read_text())
    cases = {
        "box": ([30, 20, 10, 60], r"bad instance \(ValueError: box \[30, 20, 10, 60\] must be \[x0, y0, x1, y1\]"),  # x1 < x0
        "mask": ({"size": [50, 50], "counts": "PPYo0"}, r"bad instance \(ValueError: mask is 50x50 but the image is 80x100"),
        "category_id": (99, r"unknown category id 99 \(known: \[3, 7\]\)"),
        "point_labels": ([1, 0], r"bad instance \(ValueError: 1 points but 2 point_labels"),
    }
    for field, (value, message) in cases.items():
        data = json.loads(json.dumps(good))
        data["images"][0]["instances"][0][field] = value
        p.write_text(json.dumps(data))
        with pytest.raises(DatasetError, match=rf"p.json: image 1 \(test/hole/000.png\): {message}"):
            load_prompts(p)
    p.write_text(json.dumps({"images": []}))
    with pytest.raises(DatasetError, match=r"p.json: not a SAM prompts file \(missing or bad field 'image_root'\)"):
        load_prompts(p)


def test_jitter_stays_inside_the_image_with_the_stated_spread():
    rng = np.random.default_rng(0)
    h, w = 120, 200
    box = np.array([[60.0, 40.0, 100.0, 100.0]])  # 40 wide, 60 high: std 4 and 6 px, well below the 20 px cap
    out = np.concatenate([jitter_boxes(box, h, w, rng) for _ in range(4000)])
    delta = out - box
    assert delta.std(0) == pytest.approx([4.0, 6.0, 4.0, 6.0], rel=0.06)
    assert np.abs(delta.mean(0)).max() < 0.3
    # a big box near the border: noise capped at 20 px, result clipped into the image, never inverted
    edge = np.array([[0.0, 0.0, 190.0, 118.0]])
    out = np.concatenate([jitter_boxes(edge, h, w, rng) for _ in range(2000)])
    assert np.abs(out - edge).max() <= 20.0 + 1e-9
    assert (out[:, [0, 1]] >= 0).all() and (out[:, 2] <= w).all() and (out[:, 3] <= h).all()
    assert (out[:, 2] > out[:, 0]).all() and (out[:, 3] > out[:, 1]).all()
    assert np.abs(out - edge)[:, 2].std() > 5  # the cap binds: std 19 px before clipping


def test_lowres_target_lines_up_with_sam_postprocessing():
    """A target in the low-res frame, upsampled the way Sam.postprocess_masks does, gives the mask back."""
    import torch
    import torch.nn.functional as F

    h, w, size = 90, 150, 256
    mask = np.zeros((h, w), bool)
    mask[30:60, 40:100] = True
    low = lowres_target(mask, size, 64)
    assert low.shape == (64, 64) and 0 <= low.min() and low.max() <= 1
    newh, neww = ResizeLongestSide.get_preprocess_shape(h, w, size)
    up = F.interpolate(torch.from_numpy(low)[None, None] * 20 - 10, (size, size), mode="bilinear", align_corners=False)
    back = F.interpolate(up[..., :newh, :neww], (h, w), mode="bilinear", align_corners=False)[0, 0] > 0
    iou = (back.numpy() & mask).sum() / (back.numpy() | mask).sum()
    assert iou > 0.9


def test_padded_points_marks_padding_as_not_a_point(tmp_path):
    det = load_prompts(_write_prompts(tmp_path / "p.json", tmp_path, boxes=((10, 20, 30, 60), (50, 5, 70, 15)))).images[0]
    det.data["points"][1], det.data["point_labels"][1] = np.array([[55.0, 8.0], [60.0, 10.0]]), np.array([1, 0])
    coords, labels = padded_points(det)
    assert coords.shape == (2, 2, 2) and labels.tolist() == [[1, -1], [1, 0]]
    assert coords[1].tolist() == [[55.0, 8.0], [60.0, 10.0]] and coords[0, 0].tolist() == [11.0, 21.0]
