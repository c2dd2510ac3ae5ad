"""The SAM families besides segment_anything's ViTs: MobileSAM (TinyViT encoder) and SAM 2 / 2.1 (Hiera encoder).

Built in the official file formats (MobileSAM: a plain state_dict; SAM 2: Meta's {"model": state_dict}), with the
small random-init configs mobile_sam_test / sam2.1_test; masks on box prompts equal each family's reference predictor
(segment_anything's SamPredictor; Meta's SAM2ImagePredictor), the encoder runs once per image, train-sam fine-tunes
them on cached features and its checkpoints load unchanged in the reference implementation."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from defect_vision.cli.train_sam import build_parser, config_from_args
from defect_vision.data.images import read_image
from defect_vision.errors import DatasetError
from defect_vision.inference.backends import segmenter_for
from defect_vision.models.random_init import save_random_sam
from defect_vision.models.sam import build_random_sam, build_sam, load_sam
from defect_vision.training.sam import finetune_sam
from defect_vision.training.sam_data import load_prompts

# Meta's sam2.1_hiera_t.yaml with the Hiera trunk and input size of sam2.1_test (defect_vision.models.sam2.TEST_SPEC)
META_TEST_OVERRIDES = ["++model.image_size=256", "++model.image_encoder.trunk.embed_dim=16",
                       "++model.image_encoder.trunk.stages=[1,1,2,1]", "++model.image_encoder.trunk.global_att_blocks=[3]",
                       "++model.image_encoder.neck.backbone_channel_list=[128,64,32,16]"]
BOXES = [np.array([[40, 30, 130, 100], [10, 10, 60, 70], [100, 20, 210, 140], [50, 50, 52, 53]], np.float32),
         np.zeros((0, 4), np.float32),
         np.array([[0, 0, 90, 60]], np.float32)]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here runs with one torch thread."""


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    """Three RGB images of different sizes, with a bright rectangle (something a box can hold)."""
    rng = np.random.default_rng(0)
    out = []
    for h, w in ((150, 220), (64, 64), (96, 120)):
        im = (rng.random((h, w, 3)) * 120).astype(np.uint8)
        im[h // 4 : h // 2, w // 4 : w // 2] = 250
        out.append(im)
    return out


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return 1.0 if union == 0 else float((a & b).sum() / union)


def meta_sam2(checkpoint: Path | None):
    """Meta's SAM2Base of sam2.1_test, built by sam2.build_sam.build_sam2 from its own config (strict load)."""
    from sam2.build_sam import build_sam2

    return build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", str(checkpoint) if checkpoint else None, device="cpu",
                      hydra_overrides_extra=META_TEST_OVERRIDES)


def meta_predictor(checkpoint: Path):
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    predictor = SAM2ImagePredictor(meta_sam2(checkpoint))
    predictor._bb_feat_sizes = [(64, 64), (32, 32), (16, 16)]  # its sizes are 1024 px ones; sam2.1_test is 256 px
    return predictor


# --- the architectures match the official checkpoints' key names and shapes -------------------------------------

def test_mobile_sam_has_the_key_names_and_shapes_of_mobile_sam_pt():
    """ultralytics' build_mobile_sam loads MobileSAM's mobile_sam.pt strictly: our Sam + TinyViT has its keys."""
    from ultralytics.models.sam.build import build_mobile_sam

    ours, theirs = build_sam("mobile_sam", None).state_dict(), build_mobile_sam().state_dict()
    assert sorted(ours) == sorted(theirs) and all(ours[k].shape == theirs[k].shape for k in ours)
    assert ours["image_encoder.patch_embed.seq.0.c.weight"].shape[0] == 32  # TinyViT-5M, MobileSAM's encoder


@pytest.mark.parametrize("model_type,config", [("sam2.1_t", "configs/sam2.1/sam2.1_hiera_t.yaml"),
                                               ("sam2_t", "configs/sam2/sam2_hiera_t.yaml")])
def test_sam2_has_the_key_names_and_shapes_of_meta_checkpoints(model_type, config):
    pytest.importorskip("sam2")
    from sam2.build_sam import build_sam2

    ours, meta = build_sam(model_type, None).state_dict(), build_sam2(config, None, device="cpu").state_dict()
    assert sorted(ours) == sorted(meta) and all(ours[k].shape == meta[k].shape for k in ours)


# --- parity with each family's reference predictor, encoder once per image --------------------------------------

def test_mobile_sam_masks_equal_sam_predictor_and_the_encoder_runs_once_per_image(tmp_path, images):
    from segment_anything import SamPredictor

    path = save_random_sam(tmp_path / "mobile_sam.pt", "mobile_sam_test", seed=3)
    assert isinstance(torch.load(path, weights_only=True), dict)  # a plain state_dict, as mobile_sam.pt
    sam = load_sam(path, "mobile_sam_test")
    seg = segmenter_for(sam, torch.device("cpu"), batch=2)
    out = seg.segment_batch(images, BOXES)
    assert (seg.encoder_calls, seg.encoder_batches, seg.decoder_calls) == (2, 1, 2)  # the image without boxes: none
    ref = SamPredictor(build_sam("mobile_sam_test", path))
    for image, boxes, (crops, iou) in zip(images, BOXES, out):
        assert len(crops) == len(boxes) == len(iou)
        if not len(boxes):
            continue
        ref.set_image(image)
        masks, ref_iou, _ = ref.predict_torch(None, None, ref.transform.apply_boxes_torch(torch.from_numpy(boxes),
                                                                                            image.shape[:2]),
                                              multimask_output=False)
        for crop, mask in zip(crops, masks[:, 0].numpy()):
            assert mask_iou(crop.full(), mask) >= 0.99
        np.testing.assert_allclose(iou, ref_iou[:, 0].numpy(), atol=1e-4)


def test_sam2_masks_equal_meta_sam2_image_predictor_and_the_encoder_runs_once_per_image(tmp_path, images):
    pytest.importorskip("sam2")
    path = save_random_sam(tmp_path / "sam2.1_test.pt", "sam2.1_test", seed=1)
    assert list(torch.load(path, weights_only=True)) == ["model"]  # Meta's file format
    seg = segmenter_for(load_sam(path, "sam2.1_test"), torch.device("cpu"), batch=2)
    out = seg.segment_batch(images, BOXES)
    assert (seg.encoder_calls, seg.encoder_batches, seg.decoder_calls) == (2, 1, 2)
    ref = meta_predictor(path)
    checked = 0
    for image, boxes, (crops, iou) in zip(images, BOXES, out):
        assert len(crops) == len(boxes) == len(iou)
        if not len(boxes):
            continue
        ref.set_image(image)
        masks, ref_iou, _ = ref.predict(box=boxes, multimask_output=False)
        masks = masks.reshape(len(boxes), -1, *image.shape[:2])[:, 0] > 0
        for crop, mask in zip(crops, masks):
            assert mask_iou(crop.full(), mask) >= 0.99
            checked += 1
        np.testing.assert_allclose(iou, np.asarray(ref_iou).reshape(len(boxes), -1)[:, 0], atol=1e-4)
    assert checked == 5


def test_sam2_refine_with_mask_prompts_equals_meta_predictor_given_the_same_mask_input(tmp_path, images):
    """--masks refine on SAM 2: each box decoded with its mask prompt as Meta's SAM2ImagePredictor does with
    mask_input (the prompt's low-res logits), and the prompt changes the masks."""
    pytest.importorskip("sam2")
    from defect_vision.inference.detector_masks import MASK_PROMPT_LOGIT
    from defect_vision.masks import MaskCrop

    path = save_random_sam(tmp_path / "sam2.1_test.pt", "sam2.1_test", seed=1)
    seg = segmenter_for(load_sam(path, "sam2.1_test"), torch.device("cpu"), batch=2)
    image, boxes = images[0], BOXES[0][:3]
    h, w = image.shape[:2]
    prompts = []
    for x0, y0, x1, y1 in boxes.astype(int):  # a prompt mask: the box's left half
        full = np.zeros((h, w), bool)
        full[y0:y1, x0 : (x0 + x1) // 2] = True
        prompts.append(MaskCrop(0, 0, full, h, w))
    (crops, iou), = seg.segment_batch([image], [boxes], mask_prompts=[prompts])
    (plain, _), = seg.segment_batch([image], [boxes])
    logits = seg.ops.mask_input(torch.from_numpy(np.stack([c.full() for c in prompts]))[:, None], MASK_PROMPT_LOGIT)
    assert logits.shape == (3, 1, 64, 64) and set(logits.unique().tolist()) == {-MASK_PROMPT_LOGIT, MASK_PROMPT_LOGIT}
    ref = meta_predictor(path)
    ref.set_image(image)
    masks, ref_iou, _ = ref.predict(box=boxes, mask_input=logits.numpy(), multimask_output=False)
    masks = masks.reshape(len(boxes), -1, h, w)[:, 0] > 0
    assert len(crops) == 3 and all(c.full().any() or m.any() for c, m in zip(crops, masks))
    for crop, mask in zip(crops, masks):
        assert mask_iou(crop.full(), mask) >= 0.99
    np.testing.assert_allclose(iou, np.asarray(ref_iou).reshape(len(boxes), -1)[:, 0], atol=1e-4)
    assert any(mask_iou(a.full(), b.full()) < 0.99 for a, b in zip(crops, plain))  # the prompt was used


# --- bad input: one line naming the file and what it is ---------------------------------------------------------

def test_a_checkpoint_of_another_family_is_refused_in_one_line(tmp_path):
    sam2 = save_random_sam(tmp_path / "sam2.pt", "sam2.1_test")
    mobile = save_random_sam(tmp_path / "mobile.pt", "mobile_sam_test")
    with pytest.raises(DatasetError) as err:
        load_sam(sam2, "vit_b")
    assert err.value.flag_message() == (f"{sam2}: a sam2.1_test checkpoint, not of the sam family of --model-type vit_b; "
                              "try --model-type sam2.1_test")
    with pytest.raises(DatasetError) as err:
        load_sam(mobile, "sam2.1_t")
    assert err.value.flag_message() == (f"{mobile}: a mobile_sam_test checkpoint, not of the sam2 family of --model-type "
                              "sam2.1_t; try --model-type mobile_sam_test")
    with pytest.raises(DatasetError, match=r"mobile.pt: does not fit SAM model type 'vit_tiny' .*; it looks like a "
                                           r"mobile_sam_test checkpoint: try --model-type mobile_sam_test$"):
        load_sam(mobile, "vit_tiny")


def test_a_sam2_file_with_extra_metadata_loads(tmp_path):
    """ultralytics' sam2.1_*.pt: the same {"model": state_dict}, possibly with entries of its own beside it."""
    model = build_random_sam("sam2.1_test", 4)
    path = tmp_path / "sam2.1_t.pt"
    torch.save({"model": model.state_dict(), "license": "AGPL-3.0 https://ultralytics.com/license"}, path)
    loaded = load_sam(path, "sam2.1_test").state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())


def test_a_sam2_file_without_its_model_key_is_refused_in_one_line(tmp_path):
    plain = tmp_path / "plain.pt"
    torch.save(build_sam("sam2.1_test", None).state_dict(), plain)
    with pytest.raises(DatasetError) as err:
        load_sam(plain, "sam2.1_test")
    assert str(err.value) == (f"{plain}: a plain SAM 2 state_dict without the 'model' key (SAM 2 files are "
                              "{\"model\": state_dict}, as Meta's sam2.1_hiera_*.pt)")
    other = tmp_path / "other.pt"
    torch.save({"state": {"x": torch.zeros(1)}, "epoch": 3}, other)
    with pytest.raises(DatasetError, match=r"other.pt: a SAM 2 checkpoint needs a 'model' key \(found state, epoch\)$"):
        load_sam(other, "sam2.1_test")


def test_train_sam_with_a_checkpoint_of_another_family_writes_nothing(easy_prompts, tmp_path):
    from defect_vision.cli.train_sam import main

    sam2 = save_random_sam(tmp_path / "sam2.pt", "sam2.1_test")
    out = tmp_path / "run"
    assert main(["--category", "toy_easy", "--prompts", str(easy_prompts), "--out", str(out), "--model-type",
                 "mobile_sam_test", "--checkpoint", str(sam2), "--quiet"]) != 0
    assert not out.exists()


# --- fine-tuning on cached features -----------------------------------------------------------------------------

def _train(prompts: Path, out: Path, model_type: str, epochs: int = 6) -> dict:
    argv = ["--category", "toy_easy", "--prompts", str(prompts), "--out", str(out / "sam"), "--cache-dir",
            str(out / "cache"), "--epochs", str(epochs), "--batch-images", "1", "--model-type", model_type,
            "--from-scratch", "--lr", "1e-3", "--quiet", "--seed", "0"]
    return finetune_sam(config_from_args(build_parser("train-sam").parse_args(argv)))


def _distinct_images(prompts: Path) -> int:
    sets = [load_prompts(prompts / f"prompts_{s}.json") for s in ("train", "val")]
    return len({det.image.path for ps in sets for det in ps.with_instances})


def _val_iou(predict, prompts: Path) -> float:
    ious = []
    for det in load_prompts(prompts / "prompts_val.json").with_instances:
        masks = predict(read_image(det.image.path), det.xyxy.astype(np.float32))
        ious += [mask_iou(m, gt) for m, gt in zip(masks, det.masks)]
    return float(np.mean(ious))


def test_train_sam_mobile_sam(easy_prompts, tmp_path):
    from segment_anything import SamPredictor

    result = _train(easy_prompts, tmp_path, "mobile_sam_test", epochs=2)
    saved = json.loads((tmp_path / "sam" / "best.json").read_text())
    assert saved["model_type"] == "mobile_sam_test" and saved["cache_maps"] == ["embedding"]
    # the image encoder ran once per distinct image over the whole fine-tune (3 val passes, 2 epochs)
    assert saved["encoder_calls"] == _distinct_images(easy_prompts) == len(list((tmp_path / "cache").glob("*/*.npy")))
    assert saved["cache_mb_per_image"] == pytest.approx(256 * 32 * 32 * 2 / 2**20, rel=0.01)
    # (a random TinyViT's features hardly depend on the image, so this smoke run does not learn masks: the
    # decoder trains, the encoder stays as it started)
    start, last = build_random_sam("mobile_sam_test", 0).state_dict(), torch.load(tmp_path / "sam" / "last.pth")
    assert all(torch.equal(last[k], start[k]) for k in start if k.startswith("image_encoder."))
    assert not torch.equal(last["mask_decoder.iou_token.weight"], start["mask_decoder.iou_token.weight"])
    # best.pth: a plain state_dict that segment_anything's Sam (+ TinyViT) loads strictly; SamPredictor reproduces
    # the val IoU the run measured (fp32 vs the cached fp16 features)
    predictor = SamPredictor(build_sam("mobile_sam_test", tmp_path / "sam" / "best.pth"))

    def predict(image, boxes):
        predictor.set_image(image)
        masks, _, _ = predictor.predict_torch(None, None, predictor.transform.apply_boxes_torch(
            torch.from_numpy(boxes), image.shape[:2]), multimask_output=False)
        return masks[:, 0].numpy()

    assert _val_iou(predict, easy_prompts) == pytest.approx(result["val_iou_best"], abs=0.02)


def test_train_sam_sam2_caches_three_maps_and_its_best_pth_loads_in_meta_sam2(easy_prompts, tmp_path):
    pytest.importorskip("sam2")
    result = _train(easy_prompts, tmp_path, "sam2.1_test")
    saved = json.loads((tmp_path / "sam" / "best.json").read_text())
    assert saved["cache_maps"] == ["embedding", "high_res_0", "high_res_1"]
    # the image encoder ran once per distinct image over the whole fine-tune (7 val passes, 6 epochs)
    assert saved["encoder_calls"] == _distinct_images(easy_prompts) == len(list((tmp_path / "cache").glob("*/*.npz")))
    per_image = (256 * 16 * 16 + 32 * 64 * 64 + 64 * 32 * 32) * 2 / 2**20  # fp16 embedding + the two high-res maps
    assert saved["cache_mb_per_image"] == pytest.approx(per_image, rel=0.01)
    assert saved["val_iou_best"] > saved["val_iou_start"]
    best = torch.load(tmp_path / "sam" / "best.pth", weights_only=True)
    assert list(best) == ["model"]
    start = build_random_sam("sam2.1_test", 0).state_dict()  # what --from-scratch --seed 0 starts from
    frozen = [k for k in start if k.startswith(("image_encoder.", "sam_mask_decoder.conv_s"))]
    assert frozen and all(torch.equal(best["model"][k], start[k]) for k in frozen)  # the cached features' weights
    assert not torch.equal(best["model"]["sam_mask_decoder.iou_token.weight"], start["sam_mask_decoder.iou_token.weight"])
    resume = torch.load(tmp_path / "sam" / "resume.pt", weights_only=True)
    assert {"sam_mask_decoder", "sam_prompt_encoder"} <= set(resume)
    # Meta's predictor on best.pth (strict load through build_sam2) reproduces the val IoU the run measured
    predictor = meta_predictor(tmp_path / "sam" / "best.pth")

    def predict(image, boxes):
        predictor.set_image(image)
        masks, _, _ = predictor.predict(box=boxes, multimask_output=False)
        return masks.reshape(len(boxes), -1, *image.shape[:2])[:, 0] > 0

    assert _val_iou(predict, easy_prompts) == pytest.approx(result["val_iou_best"], abs=0.02)


# --- predict and export on the new families ---------------------------------------------------------------------

@pytest.mark.parametrize("model_type", ["mobile_sam_test", "sam2.1_test"])
def test_predict_on_ground_truth_boxes_takes_the_model_type_from_best_json(model_type, synthetic_root, tmp_path, capsys):
    """A trained run's best.pth (best.json beside it names the type): predict refines every box, the encoder once per
    image with boxes."""
    from conftest import write_instances

    from defect_vision.cli.predict import main as predict
    from defect_vision.data.mvtec import read_category

    category = read_category(synthetic_root, "toy_wood")
    gt = write_instances(category, ["test/hole/000.png", "test/good/000.png", "test/stain/002.png"],
                         tmp_path / "instances_test.json")
    sam = save_random_sam(tmp_path / "sam" / "best.pth", model_type)
    (tmp_path / "sam" / "best.json").write_text(json.dumps({"model_type": model_type}))
    out = tmp_path / "predict"
    assert predict(["--source", str(gt), "--gt-boxes", str(gt), "--sam", str(sam), "--out", str(out), "--quiet"]) == 0
    preds = json.loads((out / "predictions.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    annotations = json.loads(gt.read_text())["annotations"]
    assert len(preds) == len(annotations) and all(p["segmentation"]["size"] == [256, 256] for p in preds)
    assert summary["sam_encoder_calls"] == summary["sam_decoder_calls"] == 2  # the good image: no SAM call


def test_export_mobile_sam_runs_in_onnxruntime_with_the_torch_masks(tmp_path, images):
    pytest.importorskip("onnxruntime")
    from defect_vision.inference.onnx_backend import OnnxSegmenter
    from defect_vision.models.onnx_export import OPSET, export_sam

    path = save_random_sam(tmp_path / "mobile.pt", "mobile_sam_test", seed=2)
    sam = load_sam(path, "mobile_sam_test")
    folder = tmp_path / "onnx"
    folder.mkdir()
    manifest = export_sam(sam, path, "mobile_sam_test", folder, OPSET)
    assert manifest["image_size"] == 512 and manifest["embedding_shape"] == [256, 32, 32]
    onnx_seg, torch_seg = OnnxSegmenter(folder, {"sam": manifest}), segmenter_for(sam, torch.device("cpu"))
    for (crops, iou), (ref, ref_iou) in zip(onnx_seg.segment_batch(images, BOXES), torch_seg.segment_batch(images, BOXES)):
        assert len(crops) == len(ref)
        assert all(mask_iou(a.full(), b.full()) >= 0.99 for a, b in zip(crops, ref))
        np.testing.assert_allclose(iou, ref_iou, atol=1e-3)
