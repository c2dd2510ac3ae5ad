"""Inference building blocks: devices, sources, writers, thresholds, checkpoint sniffing."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from defect_vision.errors import DatasetError
from defect_vision.masks import decode_rle
from defect_vision.models.checkpoints import SAM, STATE_DICT, UNREADABLE, sniff_checkpoint
from defect_vision.detections import Detections, ImageInfo
from defect_vision.devices import DeviceError, Timings, autocast_dtype, resolve_device
from defect_vision.inference.sources import output_name, resolve_source
from defect_vision.inference.thresholds import load_thresholds
from defect_vision.inference.writers import box_rles, label_mask


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
    assert [(i.id, i.file_name, src.names[i.id]) for i in src.images] == [(1, "a.png", "a"), (2, "b.png", "b"), (3, "x/a.png", "x_a")]
    glob_src = resolve_source(str(tmp_path / "f" / "*.png"))
    assert glob_src.kind == "glob" and [i.file_name for i in glob_src.images] == ["a.png", "b.png"]
    one = resolve_source(tmp_path / "f" / "b.png")
    assert one.kind == "file" and [(i.id, one.names[i.id]) for i in one.images] == [(1, "b")]
    assert output_name("test/hole/003.png") == "test_hole_003"

    coco = tmp_path / "instances_test.json"
    coco.write_text(json.dumps({"info": {"image_root": str(tmp_path / "f")},
                                "images": [{"id": 7, "file_name": "x/a.png", "height": 8, "width": 12},
                                           {"id": 3, "file_name": "a.png", "height": 8, "width": 12}]}))
    c = resolve_source(coco)
    assert c.kind == "coco" and [(i.id, c.names[i.id], i.path) for i in c.images] == [
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
    no_root = tmp_path / "f" / "noroot.json"  # a plain COCO file: images relative to the json's folder
    no_root.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png"}]}))
    assert [i.path for i in resolve_source(no_root).images] == [tmp_path / "f" / "a.png"]


def test_size_mismatch_with_the_json_is_an_unreadable_image(tmp_path):
    from defect_vision.inference.sources import read_source_image

    path = _png(tmp_path / "a.png", h=8, w=12)
    ok = read_source_image(ImageInfo(1, "a.png", 8, 12, path))
    assert ok.error is None and ok.pixels.shape == (8, 12, 3)
    bad = read_source_image(ImageInfo(1, "a.png", 12, 8, path))
    assert bad.pixels is None and bad.error == f"{path}: image is 12x8 but the json says 8x12"
    gone = read_source_image(ImageInfo(2, "gone.png", path=tmp_path / "gone.png"))
    assert gone.pixels is None and gone.error == f"{tmp_path / 'gone.png'}: missing (no such image file)"


def test_result_entries_and_masks():
    boxes = np.array([[2, 1, 6, 4], [0, 0, 3, 3]], np.float32)  # xyxy
    rles = box_rles(boxes, 5, 8)
    det = Detections(boxes, [1, 0], [0.9, 0.4], rle=rles, class_names=["a", "b"])
    masks = det.masks
    assert masks.shape == (2, 5, 8) and masks[0].sum() == 4 * 3 and masks[0][1:4, 2:6].all()
    entries = det.to_coco(9)
    assert entries[0]["bbox"] == [2.0, 1.0, 4.0, 3.0] and entries[0]["image_id"] == 9 and entries[0]["category_id"] == 2
    assert np.array_equal(decode_rle(entries[1]["segmentation"]), masks[1])
    label = label_mask(det, 5, 8)
    assert label[2, 2] == 2  # overlap: the higher score wins
    assert label[0, 0] == 1 and label[4, 7] == 0
    assert label_mask(Detections(boxes, [1, 0], [0.3, 0.4], rle=rles), 5, 8)[2, 2] == 1
    assert label_mask(Detections(boxes, [1, 0], [0.9, 0.4], rle=rles, category_ids=[1, 300]), 5, 8).dtype == np.uint16


def test_ties_after_rounding_order_predictions_and_label_png_alike():
    """Scores that tie once rounded to 5 decimals (as written): the first detection wins in both outputs."""
    boxes = np.array([[0, 0, 6, 4], [2, 1, 8, 5]], np.float32)
    det = Detections(boxes, [0, 1], [0.123451, 0.123454], rle=box_rles(boxes, 5, 8), class_names=["a", "b"])
    entries = det.to_coco(1)
    assert [e["score"] for e in entries] == [0.12345, 0.12345]
    first = entries[0]["category_id"]
    assert label_mask(det, 5, 8)[2, 3] == first == 1  # the overlap goes to the entry listed first


def test_thresholds(tmp_path):
    names = ["crack", "hole"]
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"thresholds": {"hole": 0.6, "dent": 0.2}, "default": 0.3}))
    th = load_thresholds(path, names, conf=0.25)
    assert th.by_class == {1: 0.6} and th.default == 0.3 and th.nms_conf == 0.3
    assert th.warnings and "unknown class 'dent'" in th.warnings[0]
    det = Detections(np.zeros((4, 4), np.float32), np.array([0, 1, 1, 0]), np.array([0.35, 0.5, 0.7, 0.2], np.float32))
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


def test_the_record_converts_to_supervision():
    sv = pytest.importorskip("supervision")
    boxes = np.array([[2, 1, 6, 4], [0, 0, 3, 3]], np.float32)
    det = Detections(boxes, [1, 0], [0.9, 0.4], rle=box_rles(boxes, 5, 8), class_names=["crack", "hole"])
    s = det.to_supervision()
    assert isinstance(s, sv.Detections) and len(s) == 2
    assert s.xyxy.tolist() == boxes.tolist() and s.class_id.tolist() == [1, 0]
    assert s.mask.shape == (2, 5, 8) and (s.mask == det.masks).all()
    assert list(s.data["class_name"]) == ["hole", "crack"] and s.confidence.tolist() == pytest.approx([0.9, 0.4])
