"""End-to-end inference on the synthetic category with tiny random-init checkpoints in the real formats."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import write_instances
from pycocotools.coco import COCO
from segment_anything.modeling import ImageEncoderViT, PromptEncoder

from defect_vision.cli.predict import main
from defect_vision.data.mvtec import read_category
from defect_vision.masks import decode_rle
from defect_vision.models.random_init import save_random_detector, save_random_sam

IMGSZ = 64  # detector input: tiny on purpose, the tests check plumbing, not accuracy
SAM_SIZE = 256  # vit_tiny's encoder input (longest side)


@pytest.fixture(scope="module")
def category(synthetic_root):
    return read_category(synthetic_root, "toy_wood")


@pytest.fixture(scope="module")
def gt_json(category, tmp_path_factory) -> Path:
    """instances_test.json (converters' format, RLE) for 5 test images: 3 defect, 2 good, one of them grayscale."""
    return write_instances(category, ["test/combined/000.png", "test/good/000.png", "test/good/001.png", "test/hole/000.png", "test/stain/002.png"], tmp_path_factory.mktemp("gt") / "instances_test.json")


@pytest.fixture(scope="module")
def models(category, tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("models")
    return {
        # bias 0: the random model scores ~0.5 everywhere, so every image gets detections
        "detector": save_random_detector(d / "yolo_world" / "best.pt", category.defect_types, score_bias=0.0, imgsz=IMGSZ),
        # ultralytics' own init (bias -10): scores ~0, no detection anywhere
        "silent": save_random_detector(d / "silent" / "best.pt", category.defect_types, imgsz=IMGSZ, seed=1),
        "sam": save_random_sam(d / "sam" / "best.pth", "vit_tiny"),
        # defect_vision.training.sam writes best.json beside best.pth; inference takes --model-type from it when not given
        "sam_meta": _write(d / "sam" / "best.json", json.dumps({"model_type": "vit_tiny"})),
    }


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture
def counters(monkeypatch) -> dict:
    """Count the images through SAM's real image encoder (and its forwards), and record the box prompts the decoder
    got (model input coordinates)."""
    import threading

    seen = {"encoder": 0, "forwards": [], "boxes": []}
    encoder_forward, embed_boxes = ImageEncoderViT.forward, PromptEncoder._embed_boxes
    lock = threading.Lock()  # model workers call the encoder from several threads

    def counting_forward(self, x):
        with lock:
            seen["encoder"] += len(x)
            seen["forwards"].append(len(x))
        return encoder_forward(self, x)

    def recording_boxes(self, boxes):
        seen["boxes"].append(boxes.detach().float().cpu().numpy().reshape(-1, 4).copy())
        return embed_boxes(self, boxes)

    monkeypatch.setattr(ImageEncoderViT, "forward", counting_forward)
    monkeypatch.setattr(PromptEncoder, "_embed_boxes", recording_boxes)
    return seen


def read_outputs(out: Path) -> tuple[list[dict], list[dict], dict]:
    return (json.loads((out / "predictions.json").read_text()), json.loads((out / "image_ids.json").read_text()),
            json.loads((out / "summary.json").read_text()))


def xyxy(bbox: list[float]) -> np.ndarray:
    x, y, w, h = bbox
    return np.array([x, y, x + w, y + h], np.float32)


def test_gt_boxes_with_sam_on_a_coco_json(gt_json, models, counters, tmp_path, capsys):
    out = tmp_path / "predict_gt_boxes"
    argv = ["--source", str(gt_json), "--gt-boxes", str(gt_json), "--sam", str(models["sam"]), "--out", str(out),
            "--batch", "2", "--quiet"]
    assert main(argv) == 0
    assert "predicted 5 images" in capsys.readouterr().out
    preds, ids, summary = read_outputs(out)
    gt = COCO(str(gt_json))
    res = gt.loadRes(str(out / "predictions.json"))  # the evaluation's entry point accepts it
    assert len(res.getAnnIds()) == len(gt.getAnnIds()) == len(preds)

    # ids kept from the json; every GT instance comes back once with its box, category and score 1
    assert sorted(e["id"] for e in ids) == sorted(gt.getImgIds())
    got = sorted((p["image_id"], p["category_id"], tuple(p["bbox"])) for p in preds)
    want = sorted((a["image_id"], a["category_id"], tuple(float(v) for v in a["bbox"])) for a in gt.dataset["annotations"])
    assert got == want and all(p["score"] == 1.0 for p in preds)

    # the encoder ran once per image with boxes, never on the two good images; one decoder call per such image
    with_boxes = {a["image_id"] for a in gt.dataset["annotations"]}
    assert len(with_boxes) == 3
    assert counters["encoder"] == summary["sam_encoder_calls"] == summary["sam_decoder_calls"] == 3
    # (the model workers decode the images in any order: compare the box counts as a multiset)
    assert sorted(len(b) for b in counters["boxes"]) == sorted(len(gt.getAnnIds(imgIds=i)) for i in with_boxes)

    # label masks in original size; label > 0 exactly where some predicted mask is
    for entry in ids:
        img = gt.imgs[entry["id"]]
        label = cv2.imread(str(out / entry["mask"]), cv2.IMREAD_UNCHANGED)
        assert label.shape == (img["height"], img["width"]) and label.dtype == np.uint8
        mine = [p for p in preds if p["image_id"] == entry["id"]]
        union = np.zeros(label.shape, bool)
        for p in mine:
            assert p["segmentation"]["size"] == [img["height"], img["width"]]
            union |= decode_rle(p["segmentation"])
        assert np.array_equal(label > 0, union)
        assert set(np.unique(label)) <= {0} | {p["category_id"] for p in mine}
    assert summary["mode"] == "gt_boxes" and summary["images"] == 5 and summary["detections"] == len(preds)


def test_sam_batch_runs_the_encoder_over_the_images_with_boxes_together(gt_json, models, counters, tmp_path):
    """--sam-batch 4 with a detector batch of 5 (3 with boxes, 2 good): ONE encoder forward of the 3 images with
    boxes, none for the good ones; the masks are those of --sam-batch 1 (one forward per image)."""
    common = ["--source", str(gt_json), "--gt-boxes", str(gt_json), "--sam", str(models["sam"]), "--batch", "5", "--quiet"]
    assert main([*common, "--out", str(tmp_path / "b1"), "--sam-batch", "1"]) == 0
    assert counters["forwards"] == [1, 1, 1]
    counters["forwards"].clear()
    assert main([*common, "--out", str(tmp_path / "b4"), "--sam-batch", "4"]) == 0
    assert counters["forwards"] == [3] and counters["encoder"] == 6
    one, _, s1 = read_outputs(tmp_path / "b1")
    four, _, s4 = read_outputs(tmp_path / "b4")
    assert (s1["sam_encoder_calls"], s1["sam_encoder_batches"]) == (3, 3)
    assert (s4["sam_encoder_calls"], s4["sam_encoder_batches"], s4["sam_decoder_calls"]) == (3, 1, 3)
    assert s4["config"]["sam_batch"] == 4 and len(one) == len(four) > 0
    for a, b in zip(one, four):
        assert (a["image_id"], a["bbox"]) == (b["image_id"], b["bbox"])
        ma, mb = decode_rle(a["segmentation"]), decode_rle(b["segmentation"])
        assert (ma != mb).mean() < 1e-3  # batched matmuls may flip a pixel whose logit is ~0


def test_box_only_segmentation_is_exactly_the_box(gt_json, tmp_path):
    out = tmp_path / "boxes"
    assert main(["--source", str(gt_json), "--gt-boxes", str(gt_json), "--box-only", "--out", str(out), "--quiet"]) == 0
    preds, ids, summary = read_outputs(out)
    gt = COCO(str(gt_json))
    assert summary["sam_encoder_calls"] == 0 and len(preds) == len(gt.getAnnIds())
    for p in preds:
        x, y, w, h = (int(v) for v in p["bbox"])
        mask = decode_rle(p["segmentation"])
        assert mask.sum() == w * h and mask[y : y + h, x : x + w].all()
        label = cv2.imread(str(out / next(e["mask"] for e in ids if e["id"] == p["image_id"])), cv2.IMREAD_UNCHANGED)
        assert (label[y : y + h, x : x + w] > 0).all()


@pytest.fixture(scope="module")
def odd_folder(category, tmp_path_factory) -> Path:
    """Images of any size: a 256 px colour one, a 96x160 grayscale one, a 200x120 one in a subfolder."""
    folder = tmp_path_factory.mktemp("new_images")
    src = cv2.imread(str(category.root / "test" / "hole" / "000.png"))
    cv2.imwrite(str(folder / "a.png"), src)
    cv2.imwrite(str(folder / "b_gray.png"), cv2.cvtColor(cv2.resize(src, (160, 96)), cv2.COLOR_BGR2GRAY))
    (folder / "sub").mkdir()
    cv2.imwrite(str(folder / "sub" / "c.jpg"), cv2.resize(src, (120, 200)))
    return folder


def test_detector_and_sam_on_a_folder_of_any_size(odd_folder, models, category, counters, tmp_path, capsys):
    out = tmp_path / "predict"
    argv = ["--source", str(odd_folder), "--detector", str(models["detector"]), "--sam", str(models["sam"]),
            "--model-type", "vit_tiny", "--out", str(out), "--conf", "0.1", "--max-det", "3", "--save-overlays",
            "--quiet", "--seed", "0"]
    assert main(argv) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("predicted 3 images") and "img/s" in line
    preds, ids, summary = read_outputs(out)
    # folder ids: 1..N by sorted relative path, with the output names that keep sub-folders apart
    assert [(e["id"], e["file_name"], e["mask"]) for e in ids] == [
        (1, "a.png", "masks/a.png"), (2, "b_gray.png", "masks/b_gray.png"), (3, "sub/c.jpg", "masks/sub_c.png")]
    sizes = {1: (256, 256), 2: (96, 160), 3: (200, 120)}
    assert {e["id"]: (e["height"], e["width"]) for e in ids} == sizes
    K = len(category.defect_types)
    for p in preds:
        h, w = sizes[p["image_id"]]
        x0, y0, x1, y1 = xyxy(p["bbox"])
        assert 0 <= x0 <= x1 <= w + 1e-3 and 0 <= y0 <= y1 <= h + 1e-3
        assert 1 <= p["category_id"] <= K and 0.1 <= p["score"] <= 1
        assert p["segmentation"]["size"] == [h, w]
    per_image = [sum(p["image_id"] == i for p in preds) for i in (1, 2, 3)]
    assert all(1 <= n <= 3 for n in per_image)
    assert counters["encoder"] == summary["sam_encoder_calls"] == 3
    # SAM got each image's boxes scaled from original pixels to its 256 px input (longest side); the model workers
    # run the images in parallel, so the decoder calls come in any order: each image's boxes are one of them
    assert len(counters["boxes"]) == 3
    for i in (1, 2, 3):
        h, w = sizes[i]
        s = SAM_SIZE / max(h, w)
        sx, sy = int(w * s + 0.5) / w, int(h * s + 0.5) / h  # SAM's ResizeLongestSide rounds the resized size
        want = np.sort(np.stack([xyxy(p["bbox"]) for p in preds if p["image_id"] == i]) * [sx, sy, sx, sy], 0)
        assert sum(b.shape == want.shape and np.allclose(np.sort(b, 0), want, atol=0.02 * s + 1e-3)
                   for b in counters["boxes"]) == 1, f"image {i}: its boxes were not SAM's prompts"
    for e in ids:
        assert cv2.imread(str(out / e["mask"]), cv2.IMREAD_UNCHANGED).shape == sizes[e["id"]]
        overlay = cv2.imread(str(out / "overlays" / Path(e["mask"]).name))
        assert overlay.shape == (*sizes[e["id"]], 3)
    assert summary["detections_per_class"] and sum(summary["detections_per_class"].values()) == len(preds)
    assert set(summary["timings_s"]) >= {"load", "detector", "sam_encoder", "sam_decoder", "write", "wall", "overhead_ratio"}


def test_batching_does_not_change_detections(odd_folder, models, tmp_path):
    runs = []
    for batch in ("1", "3"):
        out = tmp_path / f"b{batch}"
        assert main(["--source", str(odd_folder), "--detector", str(models["detector"]), "--box-only",
                     "--out", str(out), "--conf", "0.1", "--max-det", "5", "--batch", batch, "--quiet"]) == 0
        runs.append(read_outputs(out)[0])
    assert len(runs[0]) == len(runs[1]) > 0
    for a, b in zip(runs[0], runs[1]):
        assert (a["image_id"], a["category_id"]) == (b["image_id"], b["category_id"])
        np.testing.assert_allclose(a["bbox"], b["bbox"], atol=0.05)
        assert abs(a["score"] - b["score"]) < 1e-3


def test_no_detection_means_no_sam_call(odd_folder, models, counters, tmp_path):
    out = tmp_path / "silent"
    assert main(["--source", str(odd_folder), "--detector", str(models["silent"]), "--sam", str(models["sam"]),
                 "--model-type", "vit_tiny", "--out", str(out), "--conf", "0.25", "--quiet"]) == 0
    preds, ids, summary = read_outputs(out)
    assert preds == [] and counters["encoder"] == 0 and summary["sam_encoder_calls"] == 0
    assert summary["images"] == 3 and summary["images_with_detections"] == 0
    for e in ids:  # an all-background label mask is still written, in the image's size
        label = cv2.imread(str(out / e["mask"]), cv2.IMREAD_UNCHANGED)
        assert label.shape == (e["height"], e["width"]) and not label.any()


def test_per_class_thresholds_filter_detections(odd_folder, models, category, tmp_path):
    base, filt = tmp_path / "all", tmp_path / "filtered"
    common = ["--source", str(odd_folder), "--detector", str(models["detector"]), "--box-only", "--conf", "0.1", "--quiet"]
    assert main([*common, "--out", str(base)]) == 0
    preds = read_outputs(base)[0]
    top = max({p["category_id"] for p in preds}, key=lambda c: sum(p["category_id"] == c for p in preds))
    name = category.defect_types[top - 1]
    th = tmp_path / "thresholds.json"
    th.write_text(json.dumps({"thresholds": {name: 0.99}, "default": 0.1}))
    assert main([*common, "--out", str(filt), "--thresholds", str(th)]) == 0
    kept = read_outputs(filt)[0]
    assert {p["category_id"] for p in kept} == {p["category_id"] for p in preds} - {top}
    assert len(kept) >= sum(p["category_id"] != top for p in preds) - 3  # NMS may keep others in its place


def test_unreadable_image_is_skipped_or_fatal_with_strict(odd_folder, models, tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "a.png").write_bytes((odd_folder / "a.png").read_bytes())
    (folder / "broken.png").write_bytes(b"not a png at all")
    out = tmp_path / "out"
    common = ["--source", str(folder), "--detector", str(models["detector"]), "--box-only", "--conf", "0.1", "--quiet"]
    assert main([*common, "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"warning: skipped: {folder / 'broken.png'}: not a readable image" in err
    preds, ids, summary = read_outputs(out)
    assert len(summary["skipped"]) == 1 and summary["images"] == 1 and {p["image_id"] for p in preds} == {1}
    assert ids[1]["file_name"] == "broken.png" and "skipped" in ids[1]

    strict_out = tmp_path / "strict"
    assert main([*common, "--out", str(strict_out), "--strict"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: {folder / 'broken.png'}: not a readable image")
    assert not strict_out.exists() and not list(tmp_path.glob(".strict*"))  # nothing half-written


@pytest.mark.parametrize("case", ["sam_as_detector", "detector_as_sam", "missing_detector", "wrong_model_type",
                                  "cuda_missing", "malformed_thresholds", "unknown_class", "gt_from_other_dataset"])
def test_bad_input_is_one_line_error_and_no_output(case, odd_folder, gt_json, models, tmp_path, capsys):
    if case == "cuda_missing" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    det, sam = str(models["detector"]), str(models["sam"])
    bad_json = tmp_path / "thresholds.json"
    bad_json.write_text('{"thresholds": {"hole": 0.3,}')
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"info": {"image_root": str(tmp_path)}, "images": [{"id": 1, "file_name": "x.png"}],
                                 "annotations": [], "categories": []}))
    args, expect = {
        "sam_as_detector": (["--detector", sam, "--sam", sam], f"{sam}: this is a SAM checkpoint, not a YOLO-World detector"),
        "detector_as_sam": (["--detector", det, "--sam", det], f"{det}: this is an ultralytics (YOLO-World) checkpoint"),
        "missing_detector": (["--detector", str(tmp_path / "nope.pt"), "--box-only"], f"{tmp_path / 'nope.pt'}: detector checkpoint not found"),
        "wrong_model_type": (["--detector", det, "--sam", str(_truncated_sam(models["sam"], tmp_path)), "--model-type", "vit_tiny"],
                             f"{tmp_path / 'truncated.pth'}: does not fit SAM model type 'vit_tiny'"),
        "cuda_missing": (["--detector", det, "--box-only", "--device", "cuda:0"], "--device cuda:0: CUDA was asked for"),
        "malformed_thresholds": (["--detector", det, "--box-only", "--thresholds", str(bad_json)], f"{bad_json}: not valid JSON"),
        "unknown_class": (["--detector", det, "--box-only", "--classes", "dent", "--clip", str(tmp_path / "clip.pt")],
                          f"{tmp_path / 'clip.pt'}: CLIP text encoder not found"),  # a new name needs the encoder
        "gt_from_other_dataset": (["--gt-boxes", str(other), "--box-only"], f"{other}: none of the source images is in this json"),
    }[case]
    out = tmp_path / "out"
    assert main(["--source", str(odd_folder), "--out", str(out), "--quiet", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: {expect}"), err
    assert len(err[-1]) < 500
    assert not out.exists()


def _truncated_sam(path: Path, tmp_path: Path) -> Path:
    """A vit_tiny state_dict missing a layer: what a checkpoint of another model type looks like to load_state_dict."""
    state = torch.load(path, weights_only=True)
    state.pop("mask_decoder.iou_prediction_head.layers.0.weight")
    torch.save(state, tmp_path / "truncated.pth")
    return tmp_path / "truncated.pth"


def test_model_type_hint_from_the_state_dict(tmp_path):
    from defect_vision.models.sam import guess_model_type

    fake_vit_b = {"image_encoder.patch_embed.proj.weight": torch.zeros(768, 1, 1, 1),
                  **{f"image_encoder.blocks.{i}.norm1.weight": torch.zeros(1) for i in range(12)}}
    torch.save(fake_vit_b, tmp_path / "b.pth")
    assert guess_model_type(tmp_path / "b.pth") == "vit_b"
    assert guess_model_type(tmp_path / "absent.pth") is None


def test_classes_keeps_only_the_named_classes(odd_folder, models, category, tmp_path):
    common = ["--source", str(odd_folder), "--detector", str(models["detector"]), "--box-only", "--conf", "0.1", "--quiet"]
    assert main([*common, "--out", str(tmp_path / "all")]) == 0
    found = {p["category_id"] for p in read_outputs(tmp_path / "all")[0]}
    keep = min(found)
    assert main([*common, "--out", str(tmp_path / "one"), "--classes", category.defect_types[keep - 1]]) == 0
    preds, _, summary = read_outputs(tmp_path / "one")
    assert preds and {p["category_id"] for p in preds} == {keep}
    assert list(summary["detections_per_class"]) == [category.defect_types[keep - 1]]


# ---------------------------------------------------------------- data safety ("never lose a user's data")
def _copy_folder(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("where", ["source", "parent", "inside"])
def test_out_never_replaces_the_source_images(where, odd_folder, models, tmp_path, capsys):
    src = _copy_folder(odd_folder, tmp_path / "data" / "imgs")
    before = _tree(tmp_path / "data")
    out = {"source": src, "parent": tmp_path / "data", "inside": src / "pred"}[where]
    rc = main(["--source", str(src), "--detector", str(models["detector"]), "--box-only", "--out", str(out),
               "--quiet", "--force"])
    assert rc == 2
    how = {"source": "is", "parent": "holds", "inside": "lies inside"}[where]
    assert capsys.readouterr().err.strip() == (f"error: {out}: output folder {how} the input {src}; choose another "
                                               "output folder (it would be replaced as a whole)")
    assert _tree(tmp_path / "data") == before


def test_out_that_is_a_file_or_a_foreign_folder_is_refused(odd_folder, models, tmp_path, capsys):
    common = ["--source", str(odd_folder), "--detector", str(models["detector"]), "--box-only", "--quiet"]
    a_file = tmp_path / "results.json"
    a_file.write_text("[]")
    assert main([*common, "--out", str(a_file)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {a_file}: exists and is not a folder; choose another output folder"
    assert a_file.read_text() == "[]" and not list(tmp_path.glob(".results.json*"))
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    assert main([*common, "--out", str(foreign)]) == 2
    assert "is not a previous predict output" in capsys.readouterr().err and (foreign / "notes.txt").is_file()
    out = tmp_path / "pred"
    assert main([*common, "--out", str(out)]) == 0
    assert main([*common, "--out", str(out)]) == 0  # a previous predict run is replaced without --force
    assert main([*common, "--out", str(foreign), "--force"]) == 0 and not (foreign / "notes.txt").exists()


def test_nothing_predicted_is_an_error_and_missing_files_say_so(gt_json, models, tmp_path, capsys):
    folder = tmp_path / "corrupt"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"")
    (folder / "b.png").write_bytes(b"\x89PNG garbage")
    common = ["--detector", str(models["detector"]), "--box-only", "--quiet"]
    assert main(["--source", str(folder), "--out", str(tmp_path / "o1"), *common]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"error: no image could be predicted (2 unreadable; first: {folder / 'a.png'}: not a readable "
                       "image)") and not (tmp_path / "o1").exists()
    moved = tmp_path / "moved.json"  # a COCO json whose images are not where it says
    data = json.loads(gt_json.read_text())
    data["info"]["image_root"] = str(tmp_path / "gone")
    moved.write_text(json.dumps(data))
    assert main(["--source", str(moved), "--out", str(tmp_path / "o2"), *common]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'gone'}/test/combined/000.png: missing (no such image file)" in err
    assert err.strip().splitlines()[-1].startswith("error: no image could be predicted (5 unreadable")


def test_a_failed_write_stops_the_run_at_once_naming_file_and_errno(odd_folder, models, tmp_path, capsys, monkeypatch):
    import errno

    import defect_vision.inference.run as run_mod

    src = tmp_path / "many"
    src.mkdir()
    for i in range(12):
        (src / f"{i:02d}.png").write_bytes((odd_folder / "a.png").read_bytes())
    import defect_vision.inference.run_files as files_mod

    written, real = [], files_mod._write_bytes

    def full_disk(path, data):
        if written:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        written.append(path)
        real(path, data)

    monkeypatch.setattr(files_mod, "_write_bytes", full_disk)
    detector_images = []
    real_detect = run_mod.DefectPredictor.detect
    monkeypatch.setattr(run_mod.DefectPredictor, "detect",
                        lambda self, ims, *a: detector_images.extend(ims) or real_detect(self, ims, *a))
    out = tmp_path / "out"
    rc = main(["--source", str(src), "--detector", str(models["detector"]), "--box-only", "--out", str(out),
               "--batch", "1", "--workers", "2", "--writers", "1", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("error: ") and err[-1].endswith("01.png: No space left on device [errno 28]")
    # stopped within a few images, not after all 12: 2 written (the second fails), <= 2 queued for the one writer,
    # <= 2 in the two model workers
    assert len(detector_images) <= 6
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_the_writer_queue_is_bounded(odd_folder, models, tmp_path, monkeypatch):
    """Slow writes hold the run back: with 1 writer at most 2 images (pixels + masks) wait to be written and, with
    2 model workers, 2 more are in the models, instead of the whole source piling up in memory."""
    import time

    import defect_vision.inference.run as run_mod

    src = tmp_path / "many"
    src.mkdir()
    for i in range(10):
        (src / f"{i:02d}.png").write_bytes((odd_folder / "a.png").read_bytes())
    import defect_vision.inference.run_files as files_mod

    written, lag, real = [], [], files_mod._write_bytes

    def slow(path, data):
        time.sleep(0.15)
        real(path, data)
        written.append(path)

    real_detect = run_mod.DefectPredictor.detect

    def detect(self, ims, *a):
        lag.append(len(lag) - len(written))  # images handed to the writers before this batch, not written yet
        return real_detect(self, ims, *a)

    monkeypatch.setattr(files_mod, "_write_bytes", slow)
    monkeypatch.setattr(run_mod.DefectPredictor, "detect", detect)
    out = tmp_path / "out"
    assert main(["--source", str(src), "--detector", str(models["detector"]), "--box-only", "--out", str(out),
                 "--batch", "1", "--writers", "1", "--workers", "2", "--quiet"]) == 0
    assert len(lag) == 10 and max(lag) <= 4 and len(list((out / "masks").iterdir())) == 10


def test_ctrl_c_is_one_line_exit_130_and_stale_temporaries_are_cleaned(odd_folder, models, tmp_path, capsys, monkeypatch):
    import defect_vision.inference.run_files as files_mod

    stale = tmp_path / ".out.99999999.k1ll3d.tmp"  # what a killed run leaves (pid 99999999 is not running)
    (stale / "masks").mkdir(parents=True)
    (stale / "masks" / "x.png").write_bytes(b"\0" * 1000)

    def interrupt(path, data):
        raise KeyboardInterrupt

    monkeypatch.setattr(files_mod, "_write_bytes", interrupt)
    out = tmp_path / "out"
    rc = main(["--source", str(odd_folder), "--detector", str(models["detector"]), "--box-only", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 130 and err == ["interrupted (nothing half-written was kept)"]
    assert [p.name for p in tmp_path.iterdir()] == []  # the stale folder was cleaned, the interrupted one removed


def test_masks_are_upsampled_in_chunks_with_the_same_result(odd_folder, models):
    """Peak memory is bounded by the chunk budget whatever the box count; the masks do not depend on it."""
    from defect_vision.data.images import read_image
    from defect_vision.inference.segmenter import Segmenter, chunk_size
    from defect_vision.models.sam import load_sam

    assert chunk_size(4000, 4000) == 3 and chunk_size(256, 256) == 819
    image = read_image(odd_folder / "a.png")
    boxes = np.array([[10, 10, 60, 80], [100, 20, 200, 90], [30, 150, 90, 250], [0, 0, 255, 255], [50, 50, 52, 53]], np.float32)
    sam = load_sam(models["sam"], "vit_tiny")
    big = Segmenter(sam, torch.device("cpu"))
    small = Segmenter(sam, torch.device("cpu"), budget=2 * 5 * 256 * 256)  # 2 boxes per chunk
    a, iou_a = big.segment(image, boxes)
    b, iou_b = small.segment(image, boxes)
    assert big.upsample_chunks == 1 and small.upsample_chunks == 3 and small.decoder_calls == 1
    assert [r["counts"] for r in a] == [r["counts"] for r in b]
    np.testing.assert_allclose(iou_a, iou_b)


def test_readme_python_api_example(models, category, tmp_path, monkeypatch):
    """The README's API example, run as written on a run folder holding random-init checkpoints in the real formats."""
    import re
    import shutil

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = re.search(r"<!-- api-example -->\n```python\n(.*?)```", readme, re.S).group(1)
    run = tmp_path / "runs" / "wood"
    (run / "yolo_world").mkdir(parents=True)
    (run / "sam").mkdir()
    shutil.copy(models["detector"], run / "yolo_world" / "best.pt")
    shutil.copy(models["sam"], run / "sam" / "best.pth")
    shutil.copy(models["sam_meta"], run / "sam" / "best.json")
    (tmp_path / "new_images").mkdir()
    shutil.copy(category.root / "test" / "hole" / "000.png", tmp_path / "new_images" / "0001.png")
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code.replace("predictor = DefectPredictor.from_run(\"runs/wood\")",
                              "predictor = DefectPredictor.from_run(\"runs/wood\", conf=0.1)"), "README.md", "exec"), scope)
    result = scope["result"]
    n = len(result)
    assert n > 0 and result.xyxy.shape == (n, 4) and result.scores.shape == (n,)
    assert result.masks.shape == (n, 256, 256) and result.masks.dtype == bool
    assert all(name in category.defect_types for name in result.class_names)
    overlay = cv2.imread(str(tmp_path / "0001_overlay.png"))
    assert overlay.shape == (256, 256, 3) and (overlay != cv2.imread(str(tmp_path / "new_images" / "0001.png"))).any()
    entries = scope["entries"]
    assert len(entries) == n and entries[0]["image_id"] == 1 and {"bbox", "score", "segmentation"} <= set(entries[0])
    many = scope["predictor"]([cv2.cvtColor(overlay, cv2.COLOR_BGR2RGB)] * 2)
    assert isinstance(many, list) and len(many) == 2


# ---------------------------------------------------------------- precision (CUDA autocast paths, run with CPU autocast)
def _head_outputs(detector) -> list:
    """Record what the detection head's decoding returns (boxes xywh + scores, in the letterbox frame)."""
    head = detector.model.model[-1]
    inner, seen = head._inference, []
    head._inference = lambda x: seen.append(inner(x)) or seen[-1]
    g = torch.Generator().manual_seed(0)
    for seq in head.cv2:  # the random detector's box logits are constant (every distance 7.5 cells): vary them
        with torch.no_grad():
            seq[-1].bias.copy_(torch.randn(seq[-1].bias.shape, generator=g))
    return seen


def test_detector_decodes_boxes_in_fp32_under_bf16_autocast(models, odd_folder, monkeypatch):
    """ultralytics decodes in the feature maps' dtype: under bf16 autocast every box coordinate is a bf16 number
    (4 px steps at 640 px); the Detector decodes in fp32, so coordinates keep their fp32 values."""
    import defect_vision.inference.detector as detector_mod
    from defect_vision.data.images import read_image
    from defect_vision.inference.detector import Detector

    images = [read_image(odd_folder / "a.png")]
    cpu = torch.device("cpu")

    def decoded(dtype):
        det = Detector(models["detector"], cpu, dtype, IMGSZ)
        seen = _head_outputs(det)
        det.predict(images, conf=0.1)
        return seen[0][:, :4].float()

    on_bf16_grid = lambda y: (y == y.bfloat16().float()).float().mean().item()  # noqa: E731
    fp32, ours = decoded(None), decoded(torch.bfloat16)
    assert on_bf16_grid(ours) < 0.05 and ours.dtype == torch.float32
    assert (ours - fp32).abs().max() < 0.2  # only the network ran in bf16
    monkeypatch.setattr(detector_mod, "decode_head_in_fp32", lambda model: None)
    assert on_bf16_grid(decoded(torch.bfloat16)) == 1.0  # what ultralytics' own decoding gives


def test_segmenter_matches_sam_predictor_and_encodes_prompts_in_fp32(models, odd_folder, monkeypatch):
    """fp32: the masks are SamPredictor's, bit for bit (RLEs of the crops == RLEs of its full masks). Under bf16
    autocast the encoder and decoder run in bf16 while the box encoding (matmul + sin/cos) stays fp32."""
    from segment_anything import SamPredictor
    from segment_anything.modeling import MaskDecoder

    from defect_vision.data.images import read_image
    from defect_vision.detections import encode_masks
    from defect_vision.inference.segmenter import Segmenter
    from defect_vision.models.sam import load_sam

    image = read_image(odd_folder / "b_gray.png")
    boxes = np.array([[10, 10, 60, 80], [100, 20, 150, 90], [0, 0, 159, 95], [50, 50, 52, 53]], np.float32)
    sam = load_sam(models["sam"], "vit_tiny")
    rles, iou = Segmenter(sam, torch.device("cpu")).segment(image, boxes)
    ref = SamPredictor(sam)
    ref.set_image(image)
    masks, ref_iou, _ = ref.predict_torch(None, None, ref.transform.apply_boxes_torch(torch.from_numpy(boxes), image.shape[:2]),
                                          multimask_output=False)
    assert [r["counts"] for r in rles] == [r["counts"] for r in encode_masks(masks[:, 0].numpy())]
    np.testing.assert_allclose(iou, ref_iou[:, 0].numpy(), atol=1e-6)

    seen = {"box_autocast": [], "box_dtype": [], "sparse": [], "encoder": []}
    embed_boxes, decoder_forward = PromptEncoder._embed_boxes, MaskDecoder.forward

    def boxes_hook(self, b):
        seen["box_autocast"].append(torch.is_autocast_enabled("cpu"))
        out = embed_boxes(self, b)
        seen["box_dtype"].append(out.dtype)
        return out

    def decoder_hook(self, **kw):
        seen["sparse"].append(kw["sparse_prompt_embeddings"].dtype)
        return decoder_forward(self, **kw)

    sam.image_encoder.patch_embed.register_forward_hook(lambda m, i, out: seen["encoder"].append(out.dtype))

    monkeypatch.setattr(PromptEncoder, "_embed_boxes", boxes_hook)
    monkeypatch.setattr(MaskDecoder, "forward", decoder_hook)
    low, low_iou = Segmenter(sam, torch.device("cpu"), torch.bfloat16).segment(image, boxes)
    assert seen == {"box_autocast": [False], "box_dtype": [torch.float32], "sparse": [torch.float32],
                    "encoder": [torch.bfloat16]}
    assert len(low) == 4 and low_iou.dtype == np.float32


# ---------------------------------------------------------------- model workers (CPU): images through the models at once
def _many(odd_folder: Path, folder: Path, n: int) -> Path:
    """n images of the three odd sizes (a grayscale one among them), named in a sortable order."""
    folder.mkdir()
    sources = sorted(p for p in odd_folder.rglob("*") if p.is_file())
    for i in range(n):
        src = sources[i % len(sources)]
        (folder / f"{i:02d}{src.suffix}").write_bytes(src.read_bytes())
    return folder


def test_model_workers_write_exactly_what_one_worker_writes(odd_folder, models, tmp_path, counters):
    """Same single-threaded computation per image, different interleaving: byte-identical predictions, identical
    label masks and overlays, the same counters, and torch's thread setting restored after each run."""
    src = _many(odd_folder, tmp_path / "src", 7)
    before = torch.get_num_threads()
    runs = {}
    for workers, threads, batch in (("1", "1", "1"), ("3", "3", "2")):
        out = tmp_path / f"w{workers}"
        assert main(["--source", str(src), "--detector", str(models["detector"]), "--sam", str(models["sam"]),
                     "--model-type", "vit_tiny", "--out", str(out), "--conf", "0.1", "--max-det", "4", "--batch", batch,
                     "--workers", workers, "--threads", threads, "--save-overlays", "--quiet"]) == 0
        assert torch.get_num_threads() == before
        runs[workers] = out
    one, three = (read_outputs(runs[k]) for k in ("1", "3"))
    assert three[2]["parallel"] == {"batch": 2, "workers": 3, "torch_threads_per_worker": 1}
    assert one[2]["parallel"] == {"batch": 1, "workers": 1, "torch_threads_per_worker": 1}
    assert len(one[0]) > 7 and (runs["1"] / "predictions.json").read_bytes() == (runs["3"] / "predictions.json").read_bytes()
    assert one[1] == three[1]  # image_ids.json: source order, whatever order the models finished in
    for sub in ("masks", "overlays"):
        names = sorted(p.name for p in (runs["1"] / sub).iterdir())
        assert len(names) == 7 and names == sorted(p.name for p in (runs["3"] / sub).iterdir())
        for name in names:
            assert np.array_equal(cv2.imread(str(runs["1"] / sub / name), cv2.IMREAD_UNCHANGED),
                                  cv2.imread(str(runs["3"] / sub / name), cv2.IMREAD_UNCHANGED)), f"{sub}/{name}"
    for key in ("sam_encoder_calls", "sam_decoder_calls", "images_with_detections"):
        assert one[2][key] == three[2][key] == 7
    assert one[2]["detector_calls"] == 7 and three[2]["detector_calls"] == 4  # batches of 2: 2+2+2+1
    assert counters["encoder"] == 14  # the real encoder: once per image with boxes, in each run


def test_default_workers_and_threads_per_device_and_backend():
    from defect_vision.inference.predictor import PredictConfig, default_workers
    from defect_vision.inference.run import RunOptions

    cpu, cuda = torch.device("cpu"), torch.device("cuda:0")
    # 2-4 workers, the fewest threads idle: 6 cores -> 3 x 2 (not 4 x 1, 2 cores idle), 10 -> 2 x 5 (not 4 x 2)
    assert {t: PredictConfig(threads=t).cpu_split(cpu) for t in (1, 2, 5, 6, 8, 10, 16)} == {
        1: (1, 1), 2: (2, 1), 5: (4, 1), 6: (3, 2), 8: (4, 2), 10: (2, 5), 16: (4, 4)}
    assert PredictConfig(threads=8, workers=3).cpu_split(cpu) == (3, 2)
    assert PredictConfig(threads=2, workers=5).cpu_split(cpu) == (5, 1)
    assert PredictConfig(threads=8).cpu_split(cuda) == (1, 8)  # one stream of batches, batched on the GPU
    for backend in ("onnxruntime", "openvino"):  # sessions for one caller unless workers are asked for (the CLI does)
        assert PredictConfig(threads=8, backend=backend).cpu_split(cpu) == (1, 8)
        assert PredictConfig(threads=8, backend=backend, workers=default_workers(8)).cpu_split(cpu) == (4, 2)
    assert RunOptions().batch_size(cpu) == 1 and RunOptions().batch_size(cuda) == 4 and RunOptions(batch=3).batch_size(cpu) == 3


def test_a_failing_worker_stops_the_run_in_one_line_with_nothing_written(odd_folder, models, tmp_path, capsys, monkeypatch):
    import defect_vision.inference.run as run_mod
    from defect_vision.errors import DatasetError

    src = _many(odd_folder, tmp_path / "src", 8)
    real, seen = run_mod.DefectPredictor.segment_batch, []

    def failing(self, images, dets, finish=True):
        seen.append(len(images))
        if len(seen) == 3:
            raise DatasetError("sam: out of memory on the third batch")
        return real(self, images, dets, finish)

    monkeypatch.setattr(run_mod.DefectPredictor, "segment_batch", failing)
    out = tmp_path / "out"
    before = torch.get_num_threads()
    rc = main(["--source", str(src), "--detector", str(models["detector"]), "--sam", str(models["sam"]), "--model-type",
               "vit_tiny", "--out", str(out), "--conf", "0.1", "--workers", "2", "--batch", "1", "--quiet"])
    assert rc == 2 and capsys.readouterr().err.strip().splitlines()[-1] == "error: sam: out of memory on the third batch"
    assert len(seen) <= 5  # stopped with the batches then in flight, not after all 8
    import threading

    assert torch.get_num_threads() == before  # restored on the error path too
    assert not [t.name for t in threading.enumerate() if t.name.startswith("model-")]  # none left inside torch
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["src"]


def test_workers_are_refused_by_the_ray_engine(models, odd_folder, tmp_path, capsys):
    rc = main(["--source", str(odd_folder), "--detector", str(models["detector"]), "--box-only", "--out",
               str(tmp_path / "o"), "--engine", "ray", "--workers", "2", "--quiet"])
    assert rc == 2 and "--workers/--threads: only with the local engine" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_the_cpu_detector_runs_channels_last_with_the_same_boxes(odd_folder, models):
    """oneDNN's NHWC convolutions (faster on the CPU) give the boxes of the default layout."""
    from defect_vision.data.images import read_image
    from defect_vision.inference.detector import Detector

    images = [read_image(p) for p in sorted(odd_folder.rglob("*.*"))]
    nhwc = Detector(models["detector"], torch.device("cpu"))
    nchw = Detector(models["detector"], torch.device("cpu"))
    nchw.model.to(memory_format=torch.contiguous_format)
    nchw.memory_format = torch.contiguous_format
    conv = next(m for m in nhwc.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    assert nhwc.preprocess(images[:1]).is_contiguous(memory_format=torch.channels_last)
    a, b = nhwc.predict(images, conf=0.1, max_det=20), nchw.predict(images, conf=0.1, max_det=20)
    assert sum(len(d) for d in a) > 3
    for x, y in zip(a, b):
        assert np.array_equal(x.class_id, y.class_id)
        np.testing.assert_allclose(x.xyxy, y.xyxy, atol=1e-3)
        np.testing.assert_allclose(x.score, y.score, atol=1e-5)


def test_model_workers_overlap_and_an_error_exits_cleanly_from_a_fresh_interpreter(odd_folder, models, tmp_path):
    """Two workers really run two batches at once (the patched detector sleeps 0.3 s inside: 2 at a time), and a
    run that fails while the other worker is still in the models exits with its one line and status 2 (a thread
    left inside torch while the interpreter exits would abort the process)."""
    import subprocess
    import sys
    import textwrap

    src = _many(odd_folder, tmp_path / "src", 6)
    script = textwrap.dedent(f"""
        import sys, threading, time
        import defect_vision.inference.run as run_mod
        from defect_vision.cli.predict import main
        from defect_vision.errors import DatasetError
        active, peak, calls, lock = [0], [0], [0], threading.Lock()
        real = run_mod.DefectPredictor.detect
        def detect(self, images, *a):
            with lock:
                active[0] += 1; peak[0] = max(peak[0], active[0]); calls[0] += 1; n = calls[0]
            time.sleep(0.3)
            with lock:
                active[0] -= 1
            if n == 3 and sys.argv[1] == "fail":
                raise DatasetError("detector: third batch failed")
            if n == 4 and sys.argv[1] == "fail":  # still inside torch when the run stops
                import torch
                x, w, t0 = torch.randn(1, 64, 256, 256), torch.randn(64, 64, 3, 3), time.time()
                while time.time() - t0 < 1.5:
                    torch.nn.functional.conv2d(x, w, padding=1)
            return real(self, images, *a)
        run_mod.DefectPredictor.detect = detect
        rc = main(["--source", {str(src)!r}, "--detector", {str(models["detector"])!r}, "--box-only", "--out",
                   sys.argv[2], "--batch", "1", "--workers", "2", "--threads", "2", "--quiet"])
        print("peak", peak[0], file=sys.stderr)
        sys.exit(rc)
    """)
    ok = subprocess.run([sys.executable, "-c", script, "ok", str(tmp_path / "ok")], capture_output=True, text=True,
                        timeout=300)
    assert ok.returncode == 0 and "peak 2" in ok.stderr, ok.stderr[-2000:]
    bad = subprocess.run([sys.executable, "-c", script, "fail", str(tmp_path / "bad")], capture_output=True,
                         text=True, timeout=300)
    lines = [ln for ln in bad.stderr.strip().splitlines() if not ln.startswith("peak")]
    assert bad.returncode == 2 and lines[-1] == "error: detector: third batch failed", bad.stderr[-2000:]
    assert "terminate called" not in bad.stderr and not (tmp_path / "bad").exists()
