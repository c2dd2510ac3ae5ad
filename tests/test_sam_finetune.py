"""End-to-end SAM fine-tune with the tiny config: better than the start model on val, the encoder runs once
per image, checkpoints load through segment_anything's registry and work in SamPredictor, bit-exact resume."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor, sam_model_registry

import defect_vision.training.sam_checkpoints
from defect_vision.cli.train_sam import build_parser, config_from_args
from defect_vision.data.images import read_image
from defect_vision.errors import DatasetError
from defect_vision.io import MARKER
from defect_vision.models.sam import build_random_sam
from defect_vision.training.sam import finetune_sam
from defect_vision.training.sam_config import SamTrainConfig
from defect_vision.training.sam_data import load_prompts
from defect_vision.training.sam_embeddings import weights_hash

FAST = ["--model-type", "vit_tiny", "--from-scratch", "--lr", "1e-3", "--quiet", "--seed", "0"]


def cfg(*argv: str) -> SamTrainConfig:
    """The config `defect-vision train-sam ARGV` runs with."""
    return config_from_args(build_parser("train-sam").parse_args(list(argv)))


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here runs with one torch thread."""


@pytest.fixture(scope="module")
def prompts(easy_prompts) -> Path:
    return easy_prompts


def _distinct_images(prompts: Path) -> int:
    sets = [load_prompts(prompts / f"prompts_{s}.json") for s in ("train", "val")]
    return len({det.image.path for ps in sets for det in ps.with_instances})


@pytest.fixture(scope="module")
def trained(prompts, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("sam_run")
    torch.set_num_threads(1)
    result = finetune_sam(cfg("--category", "toy_easy", "--prompts", str(prompts), "--out", str(out / "sam"),
                              "--cache-dir", str(out / "cache"), "--epochs", "6", "--batch-images", "1", *FAST))
    return out, result


def test_finetune_beats_the_start_model_on_val(trained, prompts):
    out, result = trained
    saved = json.loads((out / "sam" / "best.json").read_text())
    assert saved["model_type"] == "vit_tiny" and saved["weights"] == "random-init" and saved["epochs"] == 6
    assert [h["epoch"] for h in saved["history"]] == list(range(7))
    assert saved["val_iou_start"] == saved["history"][0]["val_iou"] < 0.05
    assert saved["val_iou_best"] > saved["val_iou_start"] + 0.15  # a random decoder learns box -> defect mask
    assert saved["val_iou_best"] == max(h["val_iou"] for h in saved["history"])
    assert saved["history"][saved["best_epoch"]]["val_iou"] == saved["val_iou_best"]
    assert saved["data"]["val_instances"] == load_prompts(prompts / "prompts_val.json").num_instances
    # the image encoder ran exactly once per distinct image over the whole fine-tune (7 val passes, 6 epochs)
    assert saved["encoder_calls"] == _distinct_images(prompts) == result["encoder_calls"]
    assert len(list((out / "cache").glob("*/*.npy"))) == _distinct_images(prompts)
    assert json.loads((out / "sam" / MARKER).read_text()) == {"kind": "train-sam"}
    assert sorted(f.name for f in (out / "sam").iterdir()) == [MARKER, "best.json", "best.pth", "last.pth", "resume.pt"]


def test_best_checkpoint_loads_through_the_registry_and_works_in_sam_predictor(trained, prompts):
    out, result = trained
    best = sam_model_registry["vit_tiny"](checkpoint=str(out / "sam" / "best.pth"))
    last = sam_model_registry["vit_tiny"](checkpoint=str(out / "sam" / "last.pth"))
    start = build_random_sam("vit_tiny", 0)  # what --from-scratch --seed 0 starts from
    assert weights_hash(best.image_encoder) == weights_hash(start.image_encoder)  # the encoder stays frozen
    assert weights_hash(best.mask_decoder) != weights_hash(start.mask_decoder)
    assert (result["best_epoch"] == 6) == (weights_hash(best.mask_decoder) == weights_hash(last.mask_decoder))
    # SamPredictor with the saved checkpoint reproduces the val IoU the run measured (fp32 vs cached fp16)
    predictor, ious = SamPredictor(best), []
    for det in load_prompts(prompts / "prompts_val.json").with_instances:
        predictor.set_image(read_image(det.image.path))
        for box, gt in zip(det.xyxy, det.masks):
            masks, _, _ = predictor.predict(box=box, multimask_output=False)
            ious.append((masks[0] & gt).sum() / max((masks[0] | gt).sum(), 1))
    assert np.mean(ious) == pytest.approx(result["val_iou_best"], abs=0.02)


def test_warm_cache_rerun_runs_the_encoder_zero_times(trained, prompts, tmp_path):
    out, _ = trained
    result = finetune_sam(cfg("--category", "toy_easy", "--prompts", str(prompts), "--out", str(tmp_path / "sam"),
                              "--cache-dir", str(out / "cache"), "--epochs", "1", "--batch-images", "4", *FAST))
    assert result["encoder_calls"] == 0
    assert result["val_iou_start"] == pytest.approx(json.loads((out / "sam" / "best.json").read_text())["val_iou_start"])


class Interrupt(Exception):
    pass


def test_resume_after_interrupt_loses_and_repeats_no_epoch(trained, prompts, tmp_path, monkeypatch):
    out, _ = trained
    common = ["--category", "toy_easy", "--prompts", str(prompts), "--cache-dir", str(out / "cache"),
              "--epochs", "2", "--batch-images", "4", *FAST]
    full = finetune_sam(cfg(*common, "--out", str(tmp_path / "full")))

    def kill(epoch: int, step: int) -> None:
        if epoch == 2 and step == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        finetune_sam(cfg(*common, "--out", str(tmp_path / "cut")), on_step=kill)
    cut = json.loads((tmp_path / "cut" / "best.json").read_text())
    assert [h["epoch"] for h in cut["history"]] == [0, 1]  # the state on disk is the last finished epoch
    assert not list((tmp_path / "cut").glob(".*.tmp"))
    resumed = finetune_sam(cfg(*common, "--out", str(tmp_path / "cut"), "--resume"))
    assert [h["epoch"] for h in resumed["history"]] == [0, 1, 2] == [h["epoch"] for h in full["history"]]
    assert [h["val_iou"] for h in resumed["history"]] == pytest.approx([h["val_iou"] for h in full["history"]], abs=1e-6)
    a = torch.load(tmp_path / "full" / "last.pth", weights_only=True)
    b = torch.load(tmp_path / "cut" / "last.pth", weights_only=True)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    # resuming a finished run trains nothing more
    again = finetune_sam(cfg(*common, "--out", str(tmp_path / "cut"), "--resume"))
    assert [h["epoch"] for h in again["history"]] == [0, 1, 2]
    # a kill after last.pth of epoch 2 is written but before resume.pt: epoch 2 is redone from epoch 1's weights
    real_save = defect_vision.training.sam_checkpoints.torch_save

    def save_then_die(obj, path):
        if path.name == "resume.pt" and obj["epoch"] == 2:
            raise Interrupt
        real_save(obj, path)

    monkeypatch.setattr(defect_vision.training.sam_checkpoints, "torch_save", save_then_die)
    with pytest.raises(Interrupt):
        finetune_sam(cfg(*common, "--out", str(tmp_path / "torn")))
    monkeypatch.undo()
    assert torch.load(tmp_path / "torn" / "resume.pt", weights_only=True)["epoch"] == 1
    resumed = finetune_sam(cfg(*common, "--out", str(tmp_path / "torn"), "--resume"))
    assert [h["epoch"] for h in resumed["history"]] == [0, 1, 2]
    c = torch.load(tmp_path / "torn" / "last.pth", weights_only=True)
    assert all(torch.allclose(a[k], c[k], atol=1e-6) for k in a)
    # a resume with other settings than the run's is refused, naming resume.pt
    with pytest.raises(DatasetError, match=r"resume.pt: run was started with --batch-images 4, not 2"):
        finetune_sam(cfg(*common, "--out", str(tmp_path / "torn"), "--resume", "--batch-images", "2"))
