"""Mask -> instances, with hand-checked numbers: boxes, areas, component counts, polygons, RLE, points."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from defect_vision.data.records import mask_to_instances
from defect_vision.masks import (
    component_polygons,
    decode_rle,
    encode_rle,
    inner_point,
    polygons_to_mask,
)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_rectangle_blob_has_its_hand_computed_box_area_and_centre_point():
    mask = np.zeros((40, 50), bool)
    mask[10:20, 5:12] = True  # rows 10..19, columns 5..11
    (inst,), dropped = mask_to_instances(mask, "hole")
    assert inst.bbox == (5, 10, 7, 10)
    assert inst.xyxy == (5, 10, 12, 20)
    assert inst.area == 70
    assert dropped == 0
    assert inst.category == "hole"
    assert inst.point in ((8.0, 14.0), (8.0, 15.0))  # the middle of the distance plateau (rows 13..16, column 8)
    assert list(mask_utils.toBbox({**inst.rle, "counts": inst.rle["counts"].encode()})) == [5, 10, 7, 10]


def test_components_are_8_connected_and_specks_below_min_area_are_dropped():
    mask = np.zeros((30, 30), bool)
    mask[2:6, 2:6] = True  # 16 px
    mask[6, 6] = True  # touches the square only diagonally: same component (8-connectivity)
    mask[20:25, 20:24] = True  # 20 px, a second component
    mask[0, 29] = True  # a 1-px speck
    mask[28:30, 0:2] = True  # a 4-px speck
    instances, dropped = mask_to_instances(mask, "stain", min_area=5)
    assert dropped == 2
    assert sorted(i.area for i in instances) == [17, 20]
    assert sorted(i.bbox for i in instances) == [(2, 2, 5, 5), (20, 20, 4, 5)]
    instances, dropped = mask_to_instances(mask, "stain", min_area=1)
    assert (len(instances), dropped) == (4, 0)


def test_rle_is_exact_and_round_trips_with_str_counts():
    rng = np.random.default_rng(0)
    mask = rng.random((33, 47)) > 0.5
    rle = encode_rle(mask)
    assert isinstance(rle["counts"], str) and rle["size"] == [33, 47]
    assert np.array_equal(decode_rle(rle), mask)
    assert np.array_equal(decode_rle({"size": rle["size"], "counts": rle["counts"].encode()}), mask)
    uncompressed = {"size": [2, 3], "counts": [1, 2, 3]}  # column-major: 1 off, 2 on, 3 off
    assert decode_rle(uncompressed).tolist() == [[False, True, False], [True, False, False]]


@pytest.mark.parametrize("shape", ["disk", "ring", "line", "u", "dot"])
def test_polygons_reproduce_the_component_when_rasterised_by_pycocotools(shape):
    mask = np.zeros((64, 64), np.uint8)
    if shape == "disk":
        cv2.circle(mask, (30, 30), 12, 1, -1)
    elif shape == "ring":  # a hole: COCO polygons have none, so the ring is cut into hole-free pieces
        cv2.circle(mask, (30, 30), 20, 1, -1)
        cv2.circle(mask, (30, 30), 8, 0, -1)
    elif shape == "line":  # 1 px wide
        cv2.line(mask, (5, 5), (55, 40), 1, 1)
    elif shape == "u":
        mask[10:50, 10:20] = mask[10:50, 40:50] = mask[40:50, 10:50] = 1
    else:
        mask[7, 9] = 1
    mask = mask.astype(bool)
    rings = component_polygons(mask)
    assert rings and all(len(r) >= 6 and len(r) % 2 == 0 for r in rings)
    raster = polygons_to_mask(rings, 64, 64)
    assert np.array_equal(raster, mask)  # exact, 1-px lines included
    if shape == "ring":
        assert len(rings) >= 2 and not raster[30, 30]


def test_polygons_of_a_shifted_instance_are_in_image_coordinates():
    mask = np.zeros((100, 120), bool)
    mask[60:70, 90:110] = True
    (inst,), _ = mask_to_instances(mask, "scratch")
    xs, ys = np.asarray(inst.polygons[0][0::2]), np.asarray(inst.polygons[0][1::2])
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (90, 110, 60, 70)  # pixel edges
    assert np.array_equal(polygons_to_mask(inst.polygons, 100, 120), mask)
    assert np.array_equal(decode_rle(inst.rle), mask)


def test_inner_point_is_the_distance_transform_maximum_and_lies_inside():
    mask = np.zeros((50, 50), np.uint8)
    cv2.circle(mask, (20, 25), 10, 1, -1)
    mask[25, 30:48] = 1  # a thin tail must not attract the point
    x, y = inner_point(mask.astype(bool))
    assert (x, y) == (20.0, 25.0)
    crescent = np.zeros((60, 60), np.uint8)
    cv2.circle(crescent, (30, 30), 20, 1, -1)
    cv2.circle(crescent, (40, 30), 18, 0, -1)
    (inst,), _ = mask_to_instances(crescent.astype(bool), "crack")
    px, py = inst.point
    assert crescent[int(py), int(px)] == 1  # the centroid (about x = 19) would not be


def test_label_components_matches_opencv_stats_for_few_and_many_components():
    from defect_vision.masks import label_components

    rng = np.random.default_rng(1)
    for density in (0.002, 0.3):  # a few components, then hundreds (OpenCV's own stats path)
        mask = (rng.random((120, 90)) < density).astype(np.uint8)
        mask[40:60, 10:30] = 1
        n, labels, stats = label_components(mask)
        n_cv, labels_cv, stats_cv, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        assert n == n_cv and np.array_equal(labels, labels_cv) and np.array_equal(stats[1:], stats_cv[1:])
        assert (n > 17) == (density > 0.1)


def test_masks_are_binarised_with_greater_than_zero(tmp_path):
    from defect_vision.data.images import read_mask

    gray = np.zeros((20, 30), np.uint8)
    gray[2:5, 3:9] = 254  # some MVTec-like sets use 254
    gray[10, 10:13] = [1, 128, 255]  # anti-aliased edge values
    cv2.imwrite(str(tmp_path / "g.png"), gray)
    assert read_mask(tmp_path / "g.png").sum() == 18 + 3
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[4:6, 4:6, 2] = 200  # any channel counts
    cv2.imwrite(str(tmp_path / "c.png"), rgb)
    mask = read_mask(tmp_path / "c.png")
    assert mask.shape == (20, 30) and mask.sum() == 4
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[..., 3] = 255  # opaque alpha everywhere: not a defect
    rgba[1:4, 2:4, 1] = 90
    cv2.imwrite(str(tmp_path / "a.png"), rgba)
    mask = read_mask(tmp_path / "a.png")
    assert mask.shape == (20, 30) and mask.sum() == 6 and mask[1:4, 2:4].all()


def test_a_read_image_becomes_the_one_record(synthetic_root):
    """The reader's records convert to Detections whose masks are the ground-truth components, exactly."""
    from defect_vision.data.images import read_mask
    from defect_vision.data.mvtec import read_category

    cat = read_category(synthetic_root, "toy_wood")
    rec = next(r for r in cat.images if r.defect_type == "combined")
    det = rec.to_detections(cat.defect_types, image_id=7)
    assert len(det) == len(rec.instances) >= 2 and det.image.id == 7 and det.image.is_good is False
    assert set(det.names) <= set(cat.defect_types) and det.category_id.tolist() == [cat.category_id("combined")] * len(det)
    assert (det.masks.any(0) == read_mask(rec.mask_path)).all()
    assert det.xywh.tolist() == [list(i.bbox) for i in rec.instances]


def test_polygons_are_exact_on_thousands_of_random_components():
    """Random blobs, lines and specks: every hole-free component's polygons rasterise (pycocotools) to it exactly."""
    from defect_vision.data.records import mask_to_instances

    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(300):
        m = np.zeros((40, 40), np.uint8)
        for _ in range(int(rng.integers(1, 6))):
            x, y, x2, y2 = (int(v) for v in rng.integers(0, 40, 4))
            kind = rng.integers(3)
            if kind == 0:
                cv2.circle(m, (x, y), int(rng.integers(1, 8)), 1, -1)
            elif kind == 1:
                cv2.line(m, (x, y), (x2, y2), 1, int(rng.integers(1, 3)))
            else:
                m[rng.random((40, 40)) < 0.02] = 1
        for inst in mask_to_instances(m.astype(bool), "x", 1)[0]:
            assert np.array_equal(polygons_to_mask(inst.polygons, 40, 40), inst.full_mask())
            checked += 1
    assert checked > 3000
