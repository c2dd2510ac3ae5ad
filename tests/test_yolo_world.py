"""YOLO-World fine-tuning stage: offline training end to end, resume, reload without a text encoder, CLI errors."""
from __future__ import annotations

import json
import socket
import subprocess
from copy import deepcopy
from pathlib import Path

import numpy as np
import pytest
import torch

from converters import mvtec_to_coco, mvtec_to_yolo
from finetune import yolo_world
from finetune.text_embeddings import random_embed
from finetune.world_trainer import RepeatFactorSampler, repeat_factors

REPO = Path(__file__).resolve().parents[1]
TINY = ["--from-scratch", "--model-cfg", "yolov8n-worldv2.yaml", "--text-encoder", "random", "--imgsz", "128",
        "--batch", "8", "--workers", "0", "--no-plots"]


def _loopback(host) -> bool:
    return str(host) in {"localhost", "127.0.0.1", "::1", "0.0.0.0", ""} or str(host).startswith("127.")


@pytest.fixture
def no_network(monkeypatch):
    """Block (and record) every connection or DNS lookup to a non-loopback address; fail if any was tried."""
    attempts: list = []
    real_connect, real_connect_ex, real_gai = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

    def guard(real):
        def connect(self, address):
            if isinstance(address, (str, bytes)) or _loopback(address[0]):  # unix sockets, loopback
                return real(self, address)
            attempts.append(address)
            raise OSError(f"network blocked by test: {address}")
        return connect

    def getaddrinfo(host, *args, **kwargs):
        if host is None or _loopback(host):
            return real_gai(host, *args, **kwargs)
        attempts.append(host)
        raise socket.gaierror(f"network blocked by test: {host}")

    monkeypatch.setattr(socket.socket, "connect", guard(real_connect))
    monkeypatch.setattr(socket.socket, "connect_ex", guard(real_connect_ex))
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    from ultralytics.nn.tasks import WorldModel

    def no_clip(*args, **kwargs):
        raise AssertionError("WorldModel.get_text_pe reached (it downloads CLIP)")

    monkeypatch.setattr(WorldModel, "get_text_pe", no_clip)
    yield attempts
    assert attempts == [], f"network was reached: {attempts}"


def _convert(root: Path, category: str, out: Path) -> tuple[Path, Path]:
    common = ["--category", category, "--root", str(root), "--splits", str(out / "splits.json"), "--no-progress"]
    assert mvtec_to_yolo.main(common + ["--out", str(out / "yolo")]) == 0
    assert mvtec_to_coco.main(common + ["--out", str(out / "coco")]) == 0
    return out / "yolo" / "data.yaml", out / "coco"


@pytest.fixture(scope="module")
def easy_data(easy_root, tmp_path_factory) -> tuple[Path, Path]:
    """toy_easy (hole, scratch, stain) converted by the project's converters: (data.yaml, coco folder)."""
    return _convert(easy_root, "toy_easy", tmp_path_factory.mktemp("easy_export"))


def make_shapes(out_root: Path, category: str = "toy_shapes", size: int = 128, per_defect: int = 16,
                seed: int = 0) -> Path:
    """A trivially learnable MVTec-layout category: one large, high-contrast shape per defect class."""
    import cv2

    rng = np.random.default_rng(seed)
    root = out_root / category

    def save(folder: Path, stem: str, img: np.ndarray) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"{stem}.png"), np.clip(img, 0, 255).astype(np.uint8))

    def background() -> np.ndarray:
        return np.full((size, size, 3), rng.uniform(150, 190), np.float32) + rng.normal(0, 4, (size, size, 3))

    for split, n in (("train", 8), ("test", 4)):
        for i in range(n):
            save(root / split / "good", f"{i:03d}", background())
    for kind in ("hole", "scratch"):
        for i in range(per_defect):
            img, mask = background(), np.zeros((size, size), np.uint8)
            if kind == "hole":  # dark disc
                r = int(rng.integers(size // 8, size // 5))
                cx, cy = rng.integers(r + 4, size - r - 4, 2)
                cv2.circle(mask, (int(cx), int(cy)), r, 1, -1)
                tint = -110
            else:  # bright straight bar
                length, angle = int(rng.integers(size // 3, size // 2)), rng.uniform(0, np.pi)
                c = rng.integers(length // 2 + 4, size - length // 2 - 4, 2)
                d = np.array([np.cos(angle), np.sin(angle)]) * length / 2
                cv2.line(mask, tuple(int(v) for v in c - d), tuple(int(v) for v in c + d), 1, max(4, size // 24))
                tint = 70
            img[mask.astype(bool)] += tint
            save(root / "test" / kind, f"{i:03d}", img)
            (root / "ground_truth" / kind).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / "ground_truth" / kind / f"{i:03d}_mask.png"), mask * 255)
    return root


def _args(data: Path, coco: Path, out: Path, *extra: str) -> list[str]:
    return ["--category", "toy", "--data", str(data), "--coco", str(coco), "--out", str(out), *TINY, *extra]


class Interrupt(Exception):
    pass


def test_offline_train_interrupt_resume_and_reload_without_text_encoder(easy_data, tmp_path, capsys, no_network):
    data, coco = easy_data
    out = tmp_path / "run"
    argv = _args(data, coco, out, "--epochs", "3", "mosaic=0", "warmup_epochs=0", "nbs=8")

    def stop_after_first_epoch(trainer):
        if trainer.epoch == 0:
            raise Interrupt

    with pytest.raises(Interrupt):
        yolo_world.run(yolo_world.parse_args(argv), callbacks={"on_model_save": [stop_after_first_epoch]})
    assert torch.load(out / "weights" / "last.pt", weights_only=False)["epoch"] == 0
    assert not (out / "best.pt").exists() and not (out / "best.json").exists()  # nothing half-written

    assert yolo_world.main(argv + ["--resume"]) == 0
    meta = json.loads((out / "best.json").read_text())
    before = (out / "best.pt").stat().st_mtime_ns
    assert yolo_world.main(argv + ["--resume"]) == 2  # a finished run: one line, not ultralytics' AssertionError
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: {out / 'weights' / 'last.pt'}: the run in {out} finished (3 epochs); nothing to resume "
        "(start a new run without --resume, or raise --epochs in a new --out)")
    assert (out / "best.pt").stat().st_mtime_ns == before
    assert [h["epoch"] for h in meta["history"]] == [1, 2, 3]  # epochs 2 and 3 continued the interrupted run
    assert all(np.isfinite(h["loss"]) and h["loss"] > 0 for h in meta["history"])
    assert meta["classes"] == ["hole", "scratch", "stain"] and meta["category_ids"] == [1, 2, 3]
    assert meta["prompts"] == ["hole", "scratch", "stain"]
    assert meta["text_encoder"] == "random" and "RANDOM" in meta["warning"]
    assert meta["weights"] == "random-init" and meta["metrics"]["zero_shot"] is None
    ft = meta["metrics"]["fine_tuned"]
    assert 0 <= ft["map50_95"] <= ft["map50"] <= 1 and set(ft["per_class"]) == {"hole", "scratch", "stain"}
    assert len(meta["data_hash"]) == 64

    ckpt = torch.load(out / "best.pt", weights_only=False)
    assert ckpt["defect_vision"]["text_encoder"] == "random" and ckpt["defect_vision"]["classes"] == meta["classes"]
    txt = (ckpt.get("ema") or ckpt["model"]).txt_feats
    assert txt.shape == (1, 3, 512) and torch.allclose(txt[0].float(), random_embed(meta["prompts"]), atol=1e-6)

    from ultralytics import YOLOWorld

    model = YOLOWorld(str(out / "best.pt"))  # no text encoder anywhere: get_text_pe raises in this test
    image = next((data.parent / "images" / "val").glob("*.png"))
    result = model.predict(str(image), imgsz=128, conf=0.0, device="cpu", verbose=False)[0]
    assert result.names == {0: "hole", 1: "scratch", 2: "stain"}
    assert len(result.boxes) > 0 and set(result.boxes.cls.int().tolist()) <= {0, 1, 2}


@pytest.mark.slow
def test_loop_learns_trivially_learnable_set(tmp_path, no_network):
    """From scratch, CPU, ~1-2 minutes (mAP50 > 0.5 from epoch ~13 of 24): box mAP50 on the val split must clear 0.5 and beat the start model."""
    data, coco = _convert(make_shapes(tmp_path / "mvtec").parent, "toy_shapes", tmp_path / "export")
    out = tmp_path / "run"
    argv = _args(data, coco, out, "--epochs", "24", "--batch", "4", "--lr0", "0.002", "--eval-zero-shot",
                 "mosaic=0", "scale=0", "translate=0.05")  # no zoom-out; small-data settings (nbs, warm-up) are the CLI's own
    assert yolo_world.main(argv) == 0
    meta = json.loads((out / "best.json").read_text())
    ft, zs = meta["metrics"]["fine_tuned"], meta["metrics"]["zero_shot"]
    assert ft["map50"] > 0.5, meta["history"]
    assert zs["map50"] < 0.1 < ft["map50"] - zs["map50"]
    losses = [h["loss"] for h in meta["history"]]
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:3])  # the loss falls


def _tiny_clip():
    """A small open-clip CLIP with YOLO-World's 512-d embedding (stands in for ViT-B-32 to keep the test fast)."""
    import open_clip
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(2)
    model = open_clip.CLIP(512, CLIPVisionCfg(layers=1, width=64, patch_size=16, image_size=32),
                           CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=2, layers=1), quick_gelu=True)
    return model.eval(), open_clip.get_tokenizer("ViT-B-32")


def test_official_format_start_weights_freeze_balanced_zero_shot_clip(easy_data, tmp_path, monkeypatch, no_network):
    """Start from a checkpoint in ultralytics' release format (80 COCO classes); frozen layers keep its weights;
    the prompts go through the CLIP path (encoder stubbed small) and their embeddings end up in best.pt."""
    from finetune import text_embeddings as te

    clip_file = tmp_path / "clip" / "ViT-B-32.pt"
    clip_file.parent.mkdir()
    clip_file.write_bytes(b"stand-in weights")
    tiny = _tiny_clip()
    monkeypatch.setattr(te, "load_clip", lambda path, device="cpu": tiny)
    from ultralytics import __version__
    from ultralytics.nn.tasks import WorldModel
    from ultralytics.utils import YAML
    from ultralytics.utils import ROOT as UL_ROOT

    torch.manual_seed(1)
    start = WorldModel("yolov8n-worldv2.yaml", nc=80, verbose=False)
    start.names = YAML.load(UL_ROOT / "cfg/datasets/coco8.yaml")["names"]
    start.txt_feats = random_embed(list(start.names.values()))[None]
    start_pt = tmp_path / "yolov8n-worldv2.pt"
    torch.save({"model": deepcopy(start).half(), "train_args": {}, "date": "test", "version": __version__}, start_pt)

    data, coco = easy_data
    out = tmp_path / "run"
    argv = _args(data, coco, out, "--epochs", "1", "--eval-zero-shot", "--balanced", "--freeze", "10",
                 "--prompt-template", "{name} on {category}", "mosaic=0", "warmup_epochs=0")
    argv[argv.index("--from-scratch"):argv.index("--from-scratch") + 3] = ["--model", str(start_pt)]
    argv[argv.index("random")] = "clip"
    argv += ["--clip", str(clip_file), "--embedding-cache", str(tmp_path / "cache")]
    assert yolo_world.main(argv) == 0
    meta = json.loads((out / "best.json").read_text())
    assert meta["weights"] == "official" and meta["balanced"] is True
    assert meta["prompts"] == ["hole on toy", "scratch on toy", "stain on toy"]
    assert set(meta["metrics"]["zero_shot"]) == {"map50", "map50_95", "per_class"}
    assert meta["text_encoder"] == "clip:ViT-B-32" and "warning" not in meta
    assert meta["text_encoder_weights_sha256"] == te.file_sha256(clip_file)
    tuned = torch.load(out / "best.pt", weights_only=False)["model"]
    assert torch.allclose(tuned.txt_feats[0], te.clip_embed(*tiny, meta["prompts"]), atol=1e-6)
    frozen = [k for k in start.state_dict() if k.startswith(tuple(f"model.{i}." for i in range(10))) and "bn" not in k
              and k.endswith("conv.weight")]
    assert frozen and all(torch.equal(tuned.state_dict()[k], start.half().state_dict()[k]) for k in frozen)
    head = "model.22.cv3.0.0.conv.weight"  # trained layer: moved away from the start weights
    assert not torch.equal(tuned.state_dict()[head], start.half().state_dict()[head])


def test_repeat_factor_sampling_oversamples_the_rare_class():
    labels = [np.array([0])] * 16 + [np.array([1])] * 4 + [np.array([0, 1])] * 0 + [np.zeros(0)] * 10
    factors = repeat_factors(labels, nc=2)
    assert np.allclose(factors[:16], 1.0) and np.allclose(factors[16:20], 2.0) and np.allclose(factors[20:], 1.0)
    sampler = RepeatFactorSampler(factors, seed=0)
    assert len(sampler) == 34
    draws = [i for _ in range(20) for i in sampler]
    rare_share = np.mean([i in range(16, 20) for i in draws])
    assert rare_share == pytest.approx(8 / 34, abs=0.01)  # from 4/30 = 0.13 without balancing to 0.24
    assert list(RepeatFactorSampler(factors, seed=3)) == list(RepeatFactorSampler(factors, seed=3))


def _error_of(argv: list[str], capsys) -> str:
    assert yolo_world.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    return err[0]


def test_cli_errors_name_the_file_and_write_nothing(easy_data, tmp_path, capsys, no_network):
    data, coco = easy_data
    out = tmp_path / "run"
    msg = _error_of(_args(tmp_path / "nope.yaml", coco, out), capsys)
    assert str(tmp_path / "nope.yaml") in msg and "mvtec_to_yolo" in msg

    base = ["--category", "toy", "--data", str(data), "--coco", str(coco), "--out", str(out)]
    msg = _error_of(base + ["--model", str(tmp_path / "yolov8s-worldv2.pt"), "--text-encoder", "random"], capsys)
    assert str(tmp_path / "yolov8s-worldv2.pt") in msg and "download" in msg and "--from-scratch" in msg

    msg = _error_of(base + ["--from-scratch", "--model-cfg", "yolov8n-worldv2.yaml", "--clip", str(tmp_path / "c.pt"),
                            "--embedding-cache", str(tmp_path / "cache")], capsys)
    assert str(tmp_path / "c.pt") in msg and "--text-encoder random" in msg

    msg = _error_of(_args(data, coco, out, "bogus_key=1"), capsys)
    assert "bogus_key" in msg
    msg = _error_of(_args(data, coco, out, "--resume"), capsys)
    assert "last.pt" in msg
    msg = _error_of(_args(data, coco, out, "--prompt-template", "{nam}"), capsys)
    assert "{nam}" in msg or "nam" in msg
    assert not out.exists()


def test_script_help_lists_options_with_defaults():
    res = subprocess.run(["bash", str(REPO / "scripts" / "finetune_yolo_world.sh"), "--help"], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    for opt in ("--category", "--from-scratch", "--text-encoder", "--prompt-template", "--balanced", "--freeze",
                "--eval-zero-shot", "--resume", "key=value", "yolov8s-worldv2.pt", "weights/clip/ViT-B-32.pt"):
        assert opt in res.stdout, opt
    assert "(default: Adam)" in res.stdout and "(default: 50)" in res.stdout


def test_device_strings():
    assert [yolo_world.resolve_device(d) for d in ("cpu", "cuda", "cuda:1")] == ["cpu", "0", "1"]
    assert [yolo_world.text_encoder_device(d) for d in ("cpu", "0", "1", "2,3")] == ["cpu", "cuda:0", "cuda:1", "cuda:2"]


def test_small_data_settings_step_every_batch_without_warmup(tmp_path):
    """A few dozen images: one optimizer step per batch and no warm-up; a large set keeps ultralytics' defaults."""
    train = tmp_path / "images" / "train"
    train.mkdir(parents=True)
    for i in range(30):
        (train / f"{i}.png").write_bytes(b"")
    data = {"path": str(tmp_path), "train": "images/train"}
    assert yolo_world.small_data_settings(tmp_path / "data.yaml", data, batch=8, epochs=50) == {"nbs": 8, "warmup_epochs": 0}
    for i in range(30, 2000):
        (train / f"{i}.png").write_bytes(b"")
    assert yolo_world.small_data_settings(tmp_path / "data.yaml", data, batch=8, epochs=50) == {}
