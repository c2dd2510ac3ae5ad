"""The SAM fine-tune's CUDA paths, tested on the CPU through what they decide and hold: resuming a CPU run with an
enabled GradScaler, the fused optimizer, embeddings resident on the device, no host sync per step, and the prompt
encoder in fp32 under autocast (CPU autocast stands in for CUDA's)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from segment_anything.modeling import PromptEncoder

import defect_vision.training.sam as sam_mod
from defect_vision.cli.train_sam import build_parser, config_from_args
from defect_vision.models.sam import build_random_sam
from defect_vision.training.sam import (
    build_optimizer,
    finetune_sam,
    trainable_parameters,
)
from defect_vision.training.sam_checkpoints import resume_training_state
from defect_vision.training.sam_config import SamTrainConfig
from defect_vision.training.sam_data import load_prompts
from defect_vision.training.sam_embeddings import EmbeddingCache, ResidentEmbeddings
from defect_vision.training.sam_steps import PromptedDecoder, Samples, train_epoch

FAST = ["--model-type", "vit_tiny", "--from-scratch", "--lr", "1e-3", "--quiet", "--seed", "0"]
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here runs with one torch thread."""


class Interrupt(Exception):
    pass


def test_a_run_started_on_cpu_resumes_with_an_enabled_grad_scaler(easy_prompts, tmp_path, monkeypatch):
    """A CPU run saves its disabled GradScaler as {}; resumed where the scaler is enabled (a GPU) the run goes on
    from the initial loss scale instead of raising in load_state_dict({}). An enabled CPU scaler plays the GPU's."""
    assert torch.amp.GradScaler("cpu", enabled=True).state_dict() != {}
    with pytest.raises(RuntimeError, match="source state dict is empty"):
        torch.amp.GradScaler("cpu", enabled=True).load_state_dict({})  # what the resume used to call
    out = tmp_path / "sam"
    argv = ["--category", "toy_easy", "--prompts", str(easy_prompts), "--out", str(out), "--cache-dir",
            str(tmp_path / "cache"), "--epochs", "2", "--batch-images", "8", *FAST]

    def kill(epoch: int, step: int) -> None:
        if epoch == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        finetune_sam(config_from_args(build_parser("train-sam").parse_args(argv)), on_step=kill)
    assert torch.load(out / "resume.pt", weights_only=True)["scaler"] == {}
    real = torch.amp.GradScaler
    monkeypatch.setattr(sam_mod.torch.amp, "GradScaler", lambda device, enabled: real("cpu", enabled=True))
    result = finetune_sam(config_from_args(build_parser("train-sam").parse_args([*argv, "--resume"])))
    assert [h["epoch"] for h in result["history"]] == [0, 1, 2] and np.isfinite(result["history"][2]["train_loss"])
    assert torch.load(out / "resume.pt", weights_only=True)["scaler"]["scale"] > 0  # the GPU run's state from now on


def test_resume_loads_a_saved_scaler_state():
    params = [torch.nn.Parameter(torch.zeros(2))]
    optimizer = torch.optim.AdamW(params)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=True)
    saved = {**torch.amp.GradScaler("cpu", init_scale=1024.0, enabled=True).state_dict()}
    resume = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "scaler": saved,
              "history": [{"epoch": 0}], "best_iou": 0.1, "best_epoch": 0}
    progress = resume_training_state(optimizer, scheduler, scaler, resume)
    assert scaler.get_scale() == 1024.0 and progress.epoch == 0
    fresh = torch.amp.GradScaler("cpu", enabled=True)
    resume_training_state(optimizer, scheduler, fresh, {**resume, "scaler": {}})
    assert fresh.get_scale() == 65536.0  # the initial scale


def test_the_optimizer_is_fused_on_cuda_so_the_scaled_step_needs_no_host_sync(tmp_path):
    config = SamTrainConfig(tmp_path, tmp_path / "out", epochs=2)
    params = [torch.nn.Parameter(torch.zeros(3))]
    with pytest.warns(UserWarning, match="CUDA is not available") if not torch.cuda.is_available() else _nothing():
        gpu_opt, _, _ = build_optimizer(params, config, 5, torch.device("cuda"))
    cpu_opt, _, cpu_scaler = build_optimizer(params, config, 5, CPU)
    assert gpu_opt.defaults["fused"] is True and gpu_opt._step_supports_amp_scaling
    assert not cpu_opt.defaults["fused"] and not cpu_scaler.is_enabled()


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.fixture(scope="module")
def setup(easy_prompts, tmp_path_factory):
    """A vit_tiny SAM, the train prompts, a filled embedding cache and the training pieces of one fine-tune."""
    torch.manual_seed(0)
    sam = build_random_sam("vit_tiny", 0)
    prompts = load_prompts(easy_prompts / "prompts_train.json")
    samples = Samples(prompts, sam)
    cache = EmbeddingCache(tmp_path_factory.mktemp("cache"), sam, "vit_tiny")
    cache.ensure(samples.paths, progress=False)
    return sam, samples, cache


def test_embeddings_stay_resident_after_their_first_read(setup, monkeypatch):
    sam, samples, cache = setup
    loads = []
    real_load = EmbeddingCache.load
    monkeypatch.setattr(EmbeddingCache, "load", lambda self, *a, **k: loads.append(a[0]) or real_load(self, *a, **k))
    resident = ResidentEmbeddings(cache, CPU, torch.float32, budget_bytes=1 << 30)
    paths = samples.paths
    for _ in range(3):  # three epochs
        got = [resident(p) for p in paths]
    assert len(loads) == resident.disk_reads == len(set(paths))  # once per image, then from memory
    assert all(torch.equal(g, cache.get(p)) for g, p in zip(got, paths)) and got[0].dtype == torch.float32
    assert resident.bytes == len(set(paths)) * 256 * 32 * 32 * 4
    half = ResidentEmbeddings(cache, CPU, torch.float16, budget_bytes=1 << 30)
    assert half(paths[0]).dtype == torch.float16 and torch.equal(half(paths[0]).float(), got[0])  # the cached values
    small = ResidentEmbeddings(cache, CPU, torch.float16, budget_bytes=2 * 256 * 32 * 32 * 2)  # room for two
    for _ in range(2):
        [small(p) for p in paths[:4]]
    assert len(small.held) == 2 and small.disk_reads == 2 + 2 * 2  # the two held are read once, the others each time


def test_training_steps_do_not_sync_with_the_host_and_keep_targets_on_the_device(setup, monkeypatch, tmp_path):
    """No float(loss)/item() per step: the epoch's loss is read once, at its end. (Only calls made by this
    project's code are counted: torch's own non-fused CPU AdamW reads its step counter; the fused CUDA one does not.)"""
    sam, samples, cache = setup
    config = SamTrainConfig(tmp_path, tmp_path / "out", model_type="vit_tiny", batch_images=2)
    decoder = PromptedDecoder(sam)
    optimizer, scheduler, scaler = build_optimizer(trainable_parameters(sam, False), config, 100, CPU)
    ours = []

    def counting(name):
        real = getattr(torch.Tensor, name)

        def wrapper(self, *a, **k):
            caller = sys._getframe(1).f_code.co_filename
            if "defect_vision" in caller:
                ours.append((name, Path(caller).name))
            return real(self, *a, **k)
        return wrapper

    for name in ("__float__", "item", "tolist", "__bool__"):
        monkeypatch.setattr(torch.Tensor, name, counting(name))
    order = list(range(8))
    loss = train_epoch(decoder, samples, order, ResidentEmbeddings(cache, CPU, torch.float32, 1 << 30), optimizer,
                       scheduler, scaler, np.random.default_rng(0), config, CPU)
    assert np.isfinite(loss) and ours == [("__float__", "sam_steps.py")]  # 4 steps, one read
    det = samples.images[0]
    assert samples.target(det, CPU) is samples.target(det, CPU)  # made once, kept


def test_the_prompt_encoder_runs_in_fp32_under_autocast(setup, monkeypatch):
    sam, samples, cache = setup
    seen = []
    real = PromptEncoder._embed_boxes

    def hook(self, boxes):
        out = real(self, boxes)
        seen.append((torch.is_autocast_enabled("cpu"), boxes.dtype, out.dtype))
        return out

    monkeypatch.setattr(PromptEncoder, "_embed_boxes", hook)
    det = samples.images[0]
    boxes, points = samples.prompts(det, CPU, None, SamTrainConfig(Path("p"), Path("o")))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        (logits, iou), = PromptedDecoder(sam)([cache.get(det.image.path)], [boxes], [points])
    assert seen == [(False, torch.float32, torch.float32)]
    assert logits.dtype == torch.bfloat16  # the decoder itself ran in low precision
