"""End-to-end SAM fine-tune with the tiny config: better than the start model on val, the encoder runs once
per image, checkpoints load through segment_anything's registry and work in SamPredictor, resume, DDP, CLI errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor, sam_model_registry

import finetune.sam
from converters.mvtec import read_image
from converters.mvtec_to_sam import main as mvtec_to_sam
from finetune.sam import main as sam_main
from finetune.sam import parse_args, run
from finetune.sam_data import load_prompts
from finetune.sam_embeddings import weights_hash
from finetune.sam_model import build_sam

REPO = Path(__file__).resolve().parents[1]
FAST = ["--model-type", "vit_tiny", "--from-scratch", "--lr", "1e-3", "--quiet", "--seed", "0"]


@pytest.fixture(autouse=True)
def one_thread():
    """2 shared cores: one intra-op thread is several times faster for these tiny models."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def prompts(easy_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sam_prompts") / "toy_easy"
    rc = mvtec_to_sam(["--category", "toy_easy", "--root", str(easy_root), "--out", str(out),
                       "--splits", str(out.parent / "split.json"), "--no-progress"])
    assert rc == 0
    return out


def _distinct_images(prompts: Path) -> int:
    sets = [load_prompts(prompts / f"prompts_{s}.json") for s in ("train", "val")]
    return len({im.path for ps in sets for im in ps.with_instances})


@pytest.fixture(scope="module")
def trained(prompts, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("sam_run")
    torch.set_num_threads(1)
    result = run(parse_args(["--category", "toy_easy", "--prompts", str(prompts), "--out", str(out / "sam"),
                             "--cache-dir", str(out / "cache"), "--epochs", "6", "--batch-images", "1", *FAST]))
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


def test_best_checkpoint_loads_through_the_registry_and_works_in_sam_predictor(trained, prompts):
    out, result = trained
    best = sam_model_registry["vit_tiny"](checkpoint=str(out / "sam" / "best.pth"))
    last = sam_model_registry["vit_tiny"](checkpoint=str(out / "sam" / "last.pth"))
    torch.manual_seed(0)
    start = build_sam("vit_tiny", None)  # what --from-scratch --seed 0 starts from
    assert weights_hash(best.image_encoder) == weights_hash(start.image_encoder)  # the encoder stays frozen
    assert weights_hash(best.mask_decoder) != weights_hash(start.mask_decoder)
    assert (result["best_epoch"] == 6) == (weights_hash(best.mask_decoder) == weights_hash(last.mask_decoder))
    # SamPredictor with the saved checkpoint reproduces the val IoU the run measured (fp32 vs cached fp16)
    predictor, ious = SamPredictor(best), []
    for im in load_prompts(prompts / "prompts_val.json").with_instances:
        predictor.set_image(read_image(im.path))
        for inst in im.instances:
            masks, _, _ = predictor.predict(box=np.array(inst.box), multimask_output=False)
            gt = inst.mask()
            ious.append((masks[0] & gt).sum() / max((masks[0] | gt).sum(), 1))
    assert np.mean(ious) == pytest.approx(result["val_iou_best"], abs=0.02)


def test_warm_cache_rerun_runs_the_encoder_zero_times(trained, prompts, tmp_path):
    out, _ = trained
    result = run(parse_args(["--category", "toy_easy", "--prompts", str(prompts), "--out", str(tmp_path / "sam"),
                             "--cache-dir", str(out / "cache"), "--epochs", "1", "--batch-images", "4", *FAST]))
    assert result["encoder_calls"] == 0
    assert result["val_iou_start"] == pytest.approx(json.loads((out / "sam" / "best.json").read_text())["val_iou_start"])


class Interrupt(Exception):
    pass


def test_resume_after_interrupt_loses_and_repeats_no_epoch(trained, prompts, tmp_path, monkeypatch):
    out, _ = trained
    common = ["--category", "toy_easy", "--prompts", str(prompts), "--cache-dir", str(out / "cache"),
              "--epochs", "2", "--batch-images", "4", *FAST]
    full = run(parse_args([*common, "--out", str(tmp_path / "full")]))

    def kill(epoch: int, step: int) -> None:
        if epoch == 2 and step == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        run(parse_args([*common, "--out", str(tmp_path / "cut")]), on_step=kill)
    cut = json.loads((tmp_path / "cut" / "best.json").read_text())
    assert [h["epoch"] for h in cut["history"]] == [0, 1]  # the state on disk is the last finished epoch
    assert not list((tmp_path / "cut").glob(".*.tmp"))
    resumed = run(parse_args([*common, "--out", str(tmp_path / "cut"), "--resume"]))
    assert [h["epoch"] for h in resumed["history"]] == [0, 1, 2] == [h["epoch"] for h in full["history"]]
    assert [h["val_iou"] for h in resumed["history"]] == pytest.approx([h["val_iou"] for h in full["history"]], abs=1e-6)
    a = torch.load(tmp_path / "full" / "last.pth", weights_only=True)
    b = torch.load(tmp_path / "cut" / "last.pth", weights_only=True)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    # resuming a finished run trains nothing more
    again = run(parse_args([*common, "--out", str(tmp_path / "cut"), "--resume"]))
    assert [h["epoch"] for h in again["history"]] == [0, 1, 2]
    # a kill after last.pth of epoch 2 is written but before resume.pt: epoch 2 is redone from epoch 1's weights
    real_save = finetune.sam.atomic_torch_save

    def save_then_die(obj, path):
        if path.name == "resume.pt" and obj["epoch"] == 2:
            raise Interrupt
        real_save(obj, path)

    monkeypatch.setattr(finetune.sam, "atomic_torch_save", save_then_die)
    with pytest.raises(Interrupt):
        run(parse_args([*common, "--out", str(tmp_path / "torn")]))
    monkeypatch.undo()
    assert torch.load(tmp_path / "torn" / "resume.pt", weights_only=True)["epoch"] == 1
    resumed = run(parse_args([*common, "--out", str(tmp_path / "torn"), "--resume"]))
    assert [h["epoch"] for h in resumed["history"]] == [0, 1, 2]
    c = torch.load(tmp_path / "torn" / "last.pth", weights_only=True)
    assert all(torch.allclose(a[k], c[k], atol=1e-6) for k in a)
    # a resume with other settings than the run's is refused, naming resume.pt
    with pytest.raises(ValueError, match=r"resume.pt: run was started with --batch-images 4, not 2"):
        run(parse_args([*common, "--out", str(tmp_path / "torn"), "--resume", "--batch-images", "2"]))


def test_cli_errors_are_one_line_and_write_nothing(prompts, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # weights/ here is empty
    out = tmp_path / "out"
    assert sam_main(["--category", "toy_easy", "--prompts", str(prompts), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("error: weights/sam_vit_b_01ec64.pth: SAM checkpoint not found; get it with scripts/download_weights.sh "
                   "(or https://github.com/facebookresearch/segment-anything#model-checkpoints)")
    assert sam_main(["--category", "toy_easy", "--prompts", str(tmp_path / "nope"), "--out", str(out), *FAST]) == 2
    assert capsys.readouterr().err.strip().startswith(f"error: {tmp_path / 'nope' / 'prompts_train.json'}: no such prompts file")
    assert sam_main(["--category", "toy_easy", "--prompts", str(prompts), "--out", str(out), "--model-type", "vit_tiny"]) == 2
    assert "vit_tiny has no official checkpoint" in capsys.readouterr().err
    assert not out.exists()
    (tmp_path / "a_file").write_text("")  # an output folder that cannot be made: one line naming the path
    assert sam_main(["--category", "toy_easy", "--prompts", str(prompts), "--out", str(tmp_path / "a_file" / "sam"), *FAST]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"error: {tmp_path / 'a_file' / 'sam'}") and err.endswith(": Not a directory")


def test_script_help_and_ddp_under_torchrun_with_gloo(prompts, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHON": sys.executable}
    helped = subprocess.run([str(REPO / "scripts" / "finetune_sam.sh"), "--help"], capture_output=True, text=True, env=env)
    assert helped.returncode == 0 and "--train-prompt-encoder" in helped.stdout and "(default: vit_b)" in helped.stdout
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "finetune.sam",
           "--category", "toy_easy", "--prompts", str(prompts), "--out", str(tmp_path / "ddp"),
           "--cache-dir", str(tmp_path / "cache"), "--epochs", "1", "--batch-images", "2", "--device", "cpu", *FAST]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    saved = json.loads((tmp_path / "ddp" / "best.json").read_text())
    assert saved["world_size"] == 2 and [h["epoch"] for h in saved["history"]] == [0, 1]
    assert saved["encoder_calls"] == _distinct_images(prompts)  # the two ranks split the images, none twice
    assert len(list((tmp_path / "cache").glob("*/*.npy"))) == _distinct_images(prompts)
    assert done.stdout.count("sam: vit_tiny") == 1  # rank 0 alone prints the summary
    sam_model_registry["vit_tiny"](checkpoint=str(tmp_path / "ddp" / "best.pth"))
