"""Inference building blocks: devices, sources, writers, thresholds, checkpoint sniffing."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from converters.errors import DatasetError
from converters.masks import decode_rle
from inference.checkpoints import SAM, STATE_DICT, UNREADABLE, sniff_checkpoint
from inference.detector import Detections
from inference.devices import DeviceError, Timings, autocast_dtype, resolve_device
from inference.sources import output_name, resolve_source
from inference.thresholds import load_thresholds
from inference.writers import box_masks, label_mask, result_entries


def test_devices():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    with pytest.raises(DeviceError, match="expected auto, cpu, cuda or cuda:N"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        for spec in ("cuda", "cuda:1", "0"):
            with pytest.raises(DeviceError, match="CUDA was asked for"):
                resolve_device(spec)
    assert autocast_dtype(torch.device("cpu"), "auto") is None
    with pytest.raises(DeviceError, match="needs a CUDA device"):
        autocast_dtype(torch.device("cpu"), "fp16")
    t = Timings(detector=1.0, sam_encoder=2.0, sam_decoder=1.0, wall=4.4)
    assert t.forwards == 4.0 and t.overhead_ratio == pytest.approx(1.1)
    assert Timings().overhead_ratio is None


def _png(path, h=8, w=12):
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.zeros((h, w, 3), np.uint8))
    return path


def test_sources(tmp_path):
    _png(tmp_path / "f" / "b.png")
    _png(tmp_path / "f" / "a.png")
    _png(tmp_path / "f" / "x" / "a.png")
    (tmp_path / "f" / "notes.txt").write_text("not an image")
    src = resolve_source(tmp_path / "f")
    assert src.kind == "folder"
    assert [(i.id, i.file_name, i.name) for i in src.images] == [(1, "a.png", "a"), (2, "b.png", "b"), (3, "x/a.png", "x_a")]
    glob_src = resolve_source(str(tmp_path / "f" / "*.png"))
    assert glob_src.kind == "glob" and [i.file_name for i in glob_src.images] == ["a.png", "b.png"]
    one = resolve_source(tmp_path / "f" / "b.png")
    assert one.kind == "file" and [(i.id, i.name) for i in one.images] == [(1, "b")]
    assert output_name("test/hole/003.png") == "test_hole_003"

    coco = tmp_path / "instances_test.json"
    coco.write_text(json.dumps({"info": {"image_root": str(tmp_path / "f")},
                                "images": [{"id": 7, "file_name": "x/a.png", "height": 8, "width": 12},
                                           {"id": 3, "file_name": "a.png", "height": 8, "width": 12}]}))
    c = resolve_source(coco)
    assert c.kind == "coco" and [(i.id, i.name, i.path) for i in c.images] == [
        (3, "a", tmp_path / "f" / "a.png"), (7, "x_a", tmp_path / "f" / "x" / "a.png")]

    for bad, msg in [
        (tmp_path / "empty", "no images"), (str(tmp_path / "f" / "*.bmp"), "no images match"),
        (tmp_path / "f" / "notes.txt", "not an image file"), (tmp_path / "missing", "no such file or folder"),
    ]:
        (tmp_path / "empty").mkdir(exist_ok=True)
        with pytest.raises(DatasetError, match=msg) as exc:
            resolve_source(bad)
        assert str(exc.value).startswith(str(bad))
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [')
    with pytest.raises(DatasetError, match=f"^{broken}: not valid JSON"):
        resolve_source(broken)
    no_root = tmp_path / "noroot.json"
    no_root.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png"}]}))
    with pytest.raises(DatasetError, match="info.image_root is missing"):
        resolve_source(no_root)


def test_size_mismatch_with_the_json_is_an_unreadable_image(tmp_path):
    from inference.sources import SourceImage, read_source_image

    path = _png(tmp_path / "a.png", h=8, w=12)
    ok = read_source_image(SourceImage(1, path, "a.png", "a", 8, 12))
    assert ok.error is None and ok.pixels.shape == (8, 12, 3)
    bad = read_source_image(SourceImage(1, path, "a.png", "a", 12, 8))
    assert bad.pixels is None and bad.error == f"{path}: image is 12x8 but the json says 8x12"


def test_result_entries_and_masks():
    boxes = np.array([[2, 1, 6, 4], [0, 0, 3, 3]], np.float32)  # xyxy
    masks = box_masks(boxes, 5, 8)
    assert masks[0].sum() == 4 * 3 and masks[0][1:4, 2:6].all()
    entries = result_entries(9, boxes, np.array([0.9, 0.4]), np.array([2, 1]), masks)
    assert entries[0]["bbox"] == [2.0, 1.0, 4.0, 3.0] and entries[0]["image_id"] == 9 and entries[0]["category_id"] == 2
    assert np.array_equal(decode_rle(entries[1]["segmentation"]), masks[1])
    label = label_mask(masks, np.array([2, 1]), np.array([0.9, 0.4]), 5, 8)
    assert label[2, 2] == 2  # overlap: the higher score wins
    assert label[0, 0] == 1 and label[4, 7] == 0
    label = label_mask(masks, np.array([2, 1]), np.array([0.3, 0.4]), 5, 8)
    assert label[2, 2] == 1
    assert label_mask(masks, np.array([300, 1]), np.array([0.9, 0.4]), 5, 8).dtype == np.uint16


def test_thresholds(tmp_path):
    names = {1: "crack", 2: "hole"}
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"thresholds": {"hole": 0.6, "dent": 0.2}, "default": 0.3}))
    th = load_thresholds(path, names, conf=0.25)
    assert th.by_class == {1: 0.6} and th.default == 0.3 and th.nms_conf == 0.3
    assert th.warnings and "unknown class 'dent'" in th.warnings[0]
    det = Detections(np.zeros((4, 4), np.float32), np.array([0.35, 0.5, 0.7, 0.2], np.float32), np.array([0, 1, 1, 0]))
    kept = th.apply(det)
    assert kept.scores.tolist() == pytest.approx([0.35, 0.7])
    path.write_text(json.dumps({"thresholds": {"hole": 1.5}}))
    with pytest.raises(DatasetError, match="threshold of 'hole' must be a number in \\[0, 1\\]"):
        load_thresholds(path, names, 0.25)
    path.write_text(json.dumps([0.3]))
    with pytest.raises(DatasetError, match=f"^{path}: expected"):
        load_thresholds(path, names, 0.25)


def test_sniff_checkpoint(tmp_path):
    sam_like = tmp_path / "sam.pth"
    torch.save({"image_encoder.patch_embed.proj.weight": torch.zeros(1), "mask_decoder.x": torch.zeros(1)}, sam_like)
    other = tmp_path / "other.pth"
    torch.save({"layer.weight": torch.zeros(1)}, other)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00" * 10)
    assert sniff_checkpoint(sam_like) == SAM
    assert sniff_checkpoint(other) == STATE_DICT
    assert sniff_checkpoint(junk) == UNREADABLE
    assert sniff_checkpoint(tmp_path / "absent.pt") == UNREADABLE
