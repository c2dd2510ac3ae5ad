"""Inference building blocks: devices, sources, writers, thresholds, checkpoint sniffing."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from defect_vision.detections import Detections, ImageInfo, encode_masks
from defect_vision.devices import DeviceError, Timings, autocast_dtype, resolve_device
from defect_vision.errors import DatasetError
from defect_vision.inference.sources import output_name, resolve_source
from defect_vision.inference.writers import box_rles, label_mask
from defect_vision.masks import decode_rle
from defect_vision.models.checkpoints import (
    SAM,
    STATE_DICT,
    UNREADABLE,
    sniff_checkpoint,
)
from defect_vision.thresholds import ThresholdsFile, for_classes


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
    th = for_classes(ThresholdsFile.load(path), names, "thresholds", conf=0.25)
    assert th.by_class == {1: 0.6} and th.default == 0.3 and th.nms_conf == 0.3
    assert th.warnings and "unknown class 'dent'" in th.warnings[0]
    det = Detections(np.zeros((4, 4), np.float32), np.array([0, 1, 1, 0]), np.array([0.35, 0.5, 0.7, 0.2], np.float32))
    kept = th.apply(det)
    assert kept.scores.tolist() == pytest.approx([0.35, 0.7])
    path.write_text(json.dumps({"thresholds": {"hole": 1.5}}))
    with pytest.raises(DatasetError, match="threshold of 'hole' must be a number in \\[0, 1\\]"):
        ThresholdsFile.load(path)
    path.write_text(json.dumps([0.3]))
    with pytest.raises(DatasetError, match=f"^{path}: expected"):
        ThresholdsFile.load(path)


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


# ---------------------------------------------------------------- CUDA decisions, tested with a patched torch.cuda
@pytest.fixture
def fake_gpus(monkeypatch):
    """Two CUDA devices as torch.cuda reports them: cuda:0 a T4 (7.5, bf16 only emulated), cuda:1 an A100 (8.0).
    torch.cuda.is_bf16_supported must not be asked (it counts emulation and looks at the current device)."""
    caps = {0: (7, 5), 1: (8, 0)}
    asked = []

    def capability(device=None):
        asked.append(torch.device(device).index)
        return caps[torch.device(device).index]

    def forbidden(*a, **k):
        raise AssertionError("torch.cuda.is_bf16_supported() was consulted")

    monkeypatch.setattr(torch.cuda, "get_device_capability", capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: {0: "Tesla T4", 1: "A100"}[torch.device(device).index])
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", forbidden)
    return asked


def test_auto_precision_is_fp16_and_bf16_only_where_native_on_the_chosen_device(fake_gpus):
    from defect_vision.devices import HALF, bf16_native
    from defect_vision.training.sam_steps import step_dtype

    t4, a100 = torch.device("cuda:0"), torch.device("cuda:1")
    assert autocast_dtype(t4, "auto") == autocast_dtype(a100, "auto") == torch.float16 == HALF
    assert step_dtype(a100) == autocast_dtype(a100, "auto")  # SAM: one dtype for fine-tune, cache and inference
    assert step_dtype(torch.device("cpu")) is None and autocast_dtype(torch.device("cpu"), "auto") is None
    assert autocast_dtype(a100, "bf16") == torch.bfloat16 and fake_gpus[-1] == 1  # asked cuda:1, not the current
    with pytest.raises(DeviceError, match=r"precision bf16: cuda:0 \(Tesla T4, compute capability 7.5\) has no "
                                          r"native bf16 \(emulated, slow\); use precision fp16 or auto") as exc:
        autocast_dtype(t4, "bf16")
    assert exc.value.flag_message().startswith("--precision bf16: ") and "use --precision fp16" in exc.value.flag_message()
    assert autocast_dtype(t4, "fp16") == torch.float16 and autocast_dtype(t4, "fp32") is None
    assert (bf16_native(t4), bf16_native(a100), bf16_native(torch.device("cpu"))) == (False, True, False)


class FakeEvent:
    """A CUDA timing event: record() notes the stream; elapsed_time() gives 5 ms per pair."""

    def __init__(self):
        self.stream, self.synced = None, 0

    def record(self, stream=None):
        self.stream = stream

    def synchronize(self):
        self.synced += 1

    def elapsed_time(self, end):
        return 5.0


def test_cuda_timers_record_events_and_synchronise_only_in_debug_mode(monkeypatch):
    import defect_vision.devices as devices
    from defect_vision.devices import SYNC_TIMINGS_ENV, timed

    syncs, events, streams = [], [], []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: syncs.append(device))
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: streams.append(device) or f"stream of {device}")
    monkeypatch.setattr(devices, "_timing_event", lambda: events.append(FakeEvent()) or events[-1])
    monkeypatch.delenv(SYNC_TIMINGS_ENV, raising=False)
    gpu = torch.device("cuda:1")
    t = Timings()
    assert t.sync is False
    for stage in ("detector", "sam_encoder", "sam_encoder"):
        with timed(t, stage, gpu):
            pass
    assert syncs == [] and t.sam_encoder == 0.0 and len(t.pending) == 3  # nothing waited for yet
    assert streams == [gpu] * 3 and {e.stream for e in events} == {"stream of cuda:1"}  # the chosen GPU's stream
    d = t.as_dict()
    assert (d["detector"], d["sam_encoder"], d["synchronised"]) == (0.005, 0.010, False) and not t.pending
    assert [e.synced for e in events] == [0, 1] * 3  # settle waited on each end event, once

    monkeypatch.setenv(SYNC_TIMINGS_ENV, "1")
    debug = Timings()
    with timed(debug, "sam_decoder", gpu):
        pass
    with timed(debug, "write"):  # host stages never synchronise
        pass
    assert debug.sync and syncs == [gpu, gpu] and len(events) == 6 and debug.as_dict()["synchronised"]


def test_to_device_shares_cpu_memory():
    from defect_vision.devices import to_device

    a = np.arange(12, dtype=np.uint8).reshape(3, 4)
    t = to_device(a, torch.device("cpu"))
    assert t.dtype == torch.uint8 and np.shares_memory(t.numpy(), a)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_to_device_copies_from_pinned_memory_on_cuda():
    from defect_vision.devices import to_device

    a = np.arange(12, dtype=np.uint8).reshape(3, 4)
    t = to_device(a, torch.device("cuda:0"))
    assert t.is_cuda and torch.equal(t.cpu(), torch.from_numpy(a))


# ---------------------------------------------------------------- masks handed to the writers cropped to their extent
def _random_masks(n=12, h=37, w=53, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, h, w), bool)
    for k in range(n):
        r0, c0 = rng.integers(0, h), rng.integers(0, w)
        masks[k, r0 : r0 + rng.integers(1, h), c0 : c0 + rng.integers(1, w)] = rng.random((h, w))[r0 : r0 + 1].any()
        masks[k] &= rng.random((h, w)) < 0.7  # holes
    masks[0] = False  # empty
    masks[1] = True  # full
    masks[2, :, -1] = True  # touches the last column
    return masks


def test_crops_give_the_rles_of_the_full_masks_and_copy_only_their_extent():
    from defect_vision.inference.segmenter import crop_masks, mask_extents

    masks = _random_masks()
    crops = crop_masks(torch.from_numpy(masks))
    assert [r["counts"] for r in (c.rle() for c in crops)] == [r["counts"] for r in encode_masks(masks)]
    assert all(np.array_equal(c.full(), m) for c, m in zip(crops, masks))
    ext = mask_extents(torch.from_numpy(masks)).numpy()
    assert ext[0].tolist() == [0, 0, 0, 0] and ext[1].tolist() == [0, 37, 0, 53] and ext[2, 3] == 53
    rows, cols = np.flatnonzero(masks[5].any(1)), np.flatnonzero(masks[5].any(0))
    assert ext[5].tolist() == [rows[0], rows[-1] + 1, cols[0], cols[-1] + 1]
    assert crops[0].crop.shape == (0, 0) and sum(c.crop.size for c in crops) < masks.size


def test_label_mask_and_overlay_from_crops_equal_those_from_rles():
    from defect_vision.inference.segmenter import crop_masks
    from defect_vision.inference.writers import finish_masks, overlay

    masks = _random_masks(seed=1)
    n, h, w = masks.shape
    rng = np.random.default_rng(2)
    common = dict(xyxy=np.tile([1.0, 2.0, 30.0, 20.0], (n, 1)), class_id=rng.integers(0, 3, n),
                  score=np.round(rng.random(n), 2), class_names=["a", "b", "c"])
    from_rle = Detections(rle=encode_masks(masks), **common)
    from_crops = Detections(data={"mask_crops": crop_masks(torch.from_numpy(masks))}, **common)
    assert np.array_equal(label_mask(from_crops, h, w), label_mask(from_rle, h, w))
    image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    assert np.array_equal(overlay(image, from_crops), overlay(image, from_rle))
    assert finish_masks(from_crops).rle is not None
    assert [r["counts"] for r in from_crops.rle] == [r["counts"] for r in from_rle.rle]


def test_bf16_on_cpu_is_an_opt_in_where_the_cpu_has_it(monkeypatch):
    import defect_vision.devices as dev

    cpu = torch.device("cpu")
    monkeypatch.setattr(dev, "cpu_bf16_native", lambda: True)
    assert autocast_dtype(cpu, "bf16") is torch.bfloat16 and autocast_dtype(cpu, "auto") is None
    monkeypatch.setattr(dev, "cpu_bf16_native", lambda: False)
    with pytest.raises(DeviceError, match="native bf16"):
        autocast_dtype(cpu, "bf16")
