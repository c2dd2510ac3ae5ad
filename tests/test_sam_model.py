"""Model construction in one place: build_sam (vit_tiny and the official vit_b through segment_anything's
registry), build_random_sam, load_sam's one-line errors, model_type_for and default_checkpoint."""
from __future__ import annotations

import json

import pytest
import torch
from segment_anything import sam_model_registry
from segment_anything.modeling import MaskDecoder, Sam

from defect_vision.errors import DatasetError
from defect_vision.models.random_init import save_random_sam
from defect_vision.models.sam import (
    CheckpointError,
    build_random_sam,
    build_sam,
    default_checkpoint,
    load_sam,
    model_type_for,
)


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_vit_tiny_is_a_real_sam_with_the_official_decoder():
    sam = build_sam("vit_tiny", None)
    assert isinstance(sam, Sam) and isinstance(sam.mask_decoder, MaskDecoder)
    assert sam.image_encoder.img_size == 256 and sam.prompt_encoder.embed_dim == 256
    with torch.no_grad():
        emb = sam.image_encoder(torch.zeros(1, 3, 256, 256))
        sparse, dense = sam.prompt_encoder(points=None, boxes=torch.tensor([[10.0, 10.0, 60.0, 90.0]]), masks=None)
        low, iou = sam.mask_decoder(emb, sam.prompt_encoder.get_dense_pe(), sparse, dense, multimask_output=False)
    assert emb.shape == (1, 256, 32, 32)
    assert low.shape == (1, 1, 128, 128) and iou.shape == (1, 1)
    assert not sam.training


def test_vit_tiny_checkpoint_round_trips_through_the_registry(tmp_path):
    torch.manual_seed(3)
    sam = build_sam("vit_tiny", None)
    path = tmp_path / "tiny.pth"
    torch.save(sam.state_dict(), path)
    assert _same_state(sam_model_registry["vit_tiny"](checkpoint=str(path)).state_dict(), sam.state_dict())
    assert _same_state(build_sam("vit_tiny", path).state_dict(), sam.state_dict())


def test_vit_b_checkpoint_round_trips_through_the_registry(tmp_path):
    """Random-init vit_b (no encoder pass: ~20 s on CPU) saved as a plain state_dict loads unchanged."""
    torch.manual_seed(0)
    sam = build_sam("vit_b", None)
    path = tmp_path / "sam_vit_b.pth"
    torch.save(sam.state_dict(), path)
    loaded = sam_model_registry["vit_b"](checkpoint=str(path))
    assert _same_state(loaded.state_dict(), sam.state_dict())
    assert loaded.image_encoder.img_size == 1024
    with torch.no_grad():  # the decoder on a 64x64 embedding: low-res masks are 256x256
        sparse, dense = loaded.prompt_encoder(points=None, boxes=torch.tensor([[100.0, 100.0, 300.0, 200.0]]), masks=None)
        low, _ = loaded.mask_decoder(torch.randn(1, 256, 64, 64), loaded.prompt_encoder.get_dense_pe(), sparse, dense, False)
    assert low.shape == (1, 1, 256, 256)


def test_missing_checkpoint_names_the_file_and_how_to_get_it(tmp_path):
    missing = tmp_path / "sam_vit_b_01ec64.pth"
    with pytest.raises(CheckpointError) as err:
        build_sam("vit_b", missing)
    assert str(missing) in str(err.value) and "scripts/download_weights.sh" in str(err.value)
    assert default_checkpoint("vit_h").name == "sam_vit_h_4b8939.pth"
    assert default_checkpoint("vit_l").name == "sam_vit_l_0b3195.pth"


def test_wrong_model_type_and_bad_files_are_clear_errors(tmp_path):
    path = tmp_path / "tiny.pth"
    torch.save(build_sam("vit_tiny", None).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"does not fit SAM model type 'vit_b'"):
        build_sam("vit_b", path)
    junk = tmp_path / "junk.pth"
    junk.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        build_sam("vit_tiny", junk)
    with pytest.raises(ValueError, match="unknown SAM model type"):
        build_sam("vit_xl", None)


def test_random_init_is_seeded_and_save_random_sam_writes_that_model(tmp_path):
    a, b, c = build_random_sam("vit_tiny", 5), build_random_sam("vit_tiny", 5), build_random_sam("vit_tiny", 6)
    assert _same_state(a.state_dict(), b.state_dict()) and not _same_state(a.state_dict(), c.state_dict())
    path = save_random_sam(tmp_path / "sub" / "tiny.pth", "vit_tiny", seed=5)
    assert _same_state(load_sam(path, "vit_tiny").state_dict(), a.state_dict())
    assert [p.name for p in path.parent.iterdir()] == ["tiny.pth"]  # written atomically: no temporary file left


def test_load_sam_errors_are_one_line_and_name_the_file(tmp_path):
    with pytest.raises(DatasetError) as err:
        load_sam(tmp_path / "sam_vit_h_4b8939.pth", "vit_h")  # an official file: how to get it
    assert str(err.value) == (f"{tmp_path / 'sam_vit_h_4b8939.pth'}: SAM checkpoint not found; get it with "
                              "scripts/download_weights.sh (or https://github.com/facebookresearch/segment-anything#model-checkpoints)")
    with pytest.raises(DatasetError, match=r"best.pth: SAM checkpoint not found \(expected a SAM best.pth state_dict\)$"):
        load_sam(tmp_path / "best.pth", "vit_b")
    tiny = save_random_sam(tmp_path / "tiny.pth")
    with pytest.raises(DatasetError) as err:
        load_sam(tiny, "vit_b")
    msg = str(err.value)
    assert msg.startswith(f"{tiny}: does not fit SAM model type 'vit_b'") and "\n" not in msg
    assert msg.endswith("; it looks like a vit_tiny checkpoint: try --model-type vit_tiny")
    junk = tmp_path / "junk.pth"
    junk.write_text("not a checkpoint")
    with pytest.raises(DatasetError, match=rf"^{junk}: not a readable PyTorch checkpoint"):
        load_sam(junk, "vit_tiny")


def test_model_type_comes_from_the_option_then_best_json_then_vit_b(tmp_path):
    ckpt = tmp_path / "best.pth"
    assert model_type_for(ckpt, None) == "vit_b"
    (tmp_path / "best.json").write_text(json.dumps({"model_type": "vit_tiny"}))
    assert model_type_for(ckpt, None) == "vit_tiny" and model_type_for(ckpt, "vit_l") == "vit_l"
    (tmp_path / "best.json").write_text(json.dumps({"model_type": "vit_xxl"}))
    assert model_type_for(ckpt, None) == "vit_b"


def test_vit_tiny_has_no_official_checkpoint():
    with pytest.raises(DatasetError, match=r"^model_type vit_tiny: vit_tiny has no official checkpoint; pass "
                                           r"checkpoint PATH or from_scratch$"):
        default_checkpoint("vit_tiny")
