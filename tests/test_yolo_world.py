"""YOLO-World fine-tuning stage: offline training end to end, resume after interruptions and kill -9 (truncated
checkpoints, interrupted final step), DDP rebuild, reload without a text encoder, CLI errors."""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
from copy import deepcopy
from pathlib import Path

import numpy as np
import pytest
import torch

from defect_vision.cli.convert import main as convert_main
from defect_vision.cli.train_detector import main as train_main
from defect_vision.io import MARKER
from defect_vision.models.text_embeddings import random_embed
from defect_vision.training import yolo_world
from defect_vision.training.world_trainer import RepeatFactorSampler, repeat_factors

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
    assert convert_main(["--category", category, "--root", str(root), "--out", str(out), "--formats", "yolo", "coco",
                         "--no-progress"]) == 0
    return out / "yolo" / category / "data.yaml", out / "coco" / category


@pytest.fixture(scope="module")
def easy_data(easy_root, tmp_path_factory) -> tuple[Path, Path]:
    """toy_easy (hole, scratch, stain) converted by the project's converters: (data.yaml, coco folder)."""
    return _convert(easy_root, "toy_easy", tmp_path_factory.mktemp("easy_export"))


def make_shapes(out_root: Path, category: str = "toy_shapes", size: int = 128, per_defect: int = 16,
                seed: int = 0, kinds: tuple[str, ...] = ("hole", "scratch")) -> Path:
    """A trivially learnable MVTec-layout category: one large, high-contrast shape per defect class (a bright bar
    for 'scratch', a dark disc for any other name: two such names look alike)."""
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
    for kind in kinds:
        for i in range(per_defect):
            img, mask = background(), np.zeros((size, size), np.uint8)
            if kind != "scratch":  # dark disc
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


def _config(argv: list[str]) -> yolo_world.DetectorTrainConfig:
    from defect_vision.cli.train_detector import build_parser, config_from_args

    return config_from_args(build_parser().parse_args(argv))


class Interrupt(Exception):
    pass


def _interrupt_after_first_epoch(trainer):
    if trainer.epoch == 0:
        raise Interrupt


def _csv_epochs(out: Path) -> list[int]:
    return [h["epoch"] for h in yolo_world.read_history(out / "results.csv")] if (out / "results.csv").is_file() else []


def _raw_csv_epochs(out: Path) -> list[int]:
    lines = (out / "results.csv").read_text().splitlines()[1:]
    return [int(float(line.split(",")[0])) for line in lines]


def _assert_loadable_result(out: Path, data: Path, meta: dict) -> None:
    """best.pt loads with ultralytics.YOLOWorld (no text encoder: get_text_pe raises in these tests) and predicts
    the class names; it carries our metadata."""
    from ultralytics import YOLOWorld

    ckpt = torch.load(out / "best.pt", weights_only=False)
    assert ckpt["defect_vision"]["classes"] == meta["classes"] == ["hole", "scratch", "stain"]
    model = YOLOWorld(str(out / "best.pt"))
    image = next((data.parent / "images" / "val").glob("*.png"))
    result = model.predict(str(image), imgsz=128, conf=0.0, device="cpu", verbose=False)[0]
    assert result.names == {0: "hole", 1: "scratch", 2: "stain"}
    assert len(result.boxes) > 0 and set(result.boxes.cls.int().tolist()) <= {0, 1, 2}


def test_offline_train_interrupt_resume_and_reload_without_text_encoder(easy_data, tmp_path, capsys, no_network):
    data, coco = easy_data
    out = tmp_path / "run"
    argv = _args(data, coco, out, "--epochs", "3", "mosaic=0", "warmup_epochs=0", "nbs=8")

    with pytest.raises(Interrupt):
        yolo_world.finetune_detector(_config(argv), callbacks={"on_model_save": [_interrupt_after_first_epoch]})
    assert torch.load(out / "weights" / "last.pt", weights_only=False)["epoch"] == 0
    assert not (out / "best.pt").exists() and not (out / "best.json").exists()  # nothing half-written
    assert json.loads((out / MARKER).read_text())["kind"] == "train-detector"

    assert train_main(argv + ["--resume"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith(
        f"yolo_world: {out / 'best.pt'}: 3 classes, 3 epochs, val box mAP50 ")
    meta = json.loads((out / "best.json").read_text())
    assert json.loads((out / MARKER).read_text())["state"] == "finished"
    before = (out / "best.pt").stat().st_mtime_ns
    assert train_main(argv + ["--resume"]) == 2  # a finished run: one line, not ultralytics' AssertionError
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: {out / 'weights' / 'last.pt'}: the run in {out} finished (3 epochs); nothing to resume "
        "(start a new run without --resume, or raise --epochs in a new --out)")
    assert (out / "best.pt").stat().st_mtime_ns == before
    assert [h["epoch"] for h in meta["history"]] == [1, 2, 3]  # epochs 2 and 3 continued the interrupted run
    assert _raw_csv_epochs(out) == [1, 2, 3]
    assert all(np.isfinite(h["loss"]) and h["loss"] > 0 for h in meta["history"])
    assert meta["classes"] == ["hole", "scratch", "stain"] and meta["category_ids"] == [1, 2, 3]
    assert meta["prompts"] == ["hole", "scratch", "stain"] and meta["epochs"] == 3 and meta["imgsz"] == 128
    assert meta["text_encoder"] == "random" and "RANDOM" in meta["warning"]
    assert meta["weights"] == "random-init" and meta["metrics"]["zero_shot"] is None
    ft = meta["metrics"]["fine_tuned"]
    assert 0 <= ft["map50_95"] <= ft["map50"] <= 1 and set(ft["per_class"]) == {"hole", "scratch", "stain"}
    assert len(meta["data_hash"]) == 64

    ckpt = torch.load(out / "best.pt", weights_only=False)
    assert ckpt["defect_vision"]["text_encoder"] == "random" and ckpt["defect_vision"]["classes"] == meta["classes"]
    txt = (ckpt.get("ema") or ckpt["model"]).txt_feats
    assert txt.shape == (1, 3, 512) and torch.allclose(txt[0].float(), random_embed(meta["prompts"]), atol=1e-6)
    _assert_loadable_result(out, data, meta)


# A training run in a child process that kills itself (SIGKILL, as `kill -9`) at one exact moment:
#   last-write: inside the 2nd write of a file named *last.pt* (half the bytes written), i.e. while epoch 2's
#               checkpoint is being saved (ultralytics wrote weights/last.pt in place: that left it truncated);
#   final-val:  when ultralytics' final validation of best.pt starts (after training, before best.pt/best.json).
KILLER = textwrap.dedent("""
    import os, signal, socket, sys
    from pathlib import Path

    def no_network(self, address):
        if not isinstance(address, (str, bytes)) and not str(address[0]).startswith(("127.", "localhost", "::1")):
            raise OSError(f"network blocked by test: {address}")
        return real_connect(self, address)
    real_connect, socket.socket.connect = socket.socket.connect, no_network

    mode, argv = sys.argv[1], sys.argv[2:]
    if mode == "last-write":
        real_write, calls = Path.write_bytes, []
        def write_bytes(self, data):
            if "last.pt" in self.name:
                calls.append(self)
                if len(calls) == 2:
                    with open(self, "wb") as f:
                        f.write(data[: len(data) // 2])
                    os.kill(os.getpid(), signal.SIGKILL)
            return real_write(self, data)
        Path.write_bytes = write_bytes
    elif mode == "final-val":
        from ultralytics.engine.validator import BaseValidator
        real_call = BaseValidator.__call__
        def call(self, trainer=None, model=None, **kwargs):
            if trainer is None and isinstance(model, (str, os.PathLike)):  # the final validation of best.pt
                os.kill(os.getpid(), signal.SIGKILL)
            return real_call(self, trainer, model, **kwargs)
        BaseValidator.__call__ = call
    from defect_vision.cli.train_detector import main
    sys.exit(main(argv))
""")


def _killed_run(tmp_path: Path, mode: str, argv: list[str]) -> subprocess.CompletedProcess:
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    env = {**os.environ, "YOLO_OFFLINE": "1", "MPLBACKEND": "Agg"}
    res = subprocess.run([sys.executable, str(script), mode, *argv], capture_output=True, text=True, timeout=600,
                         env=env)
    assert res.returncode == -signal.SIGKILL, (res.returncode, res.stderr[-3000:])
    return res


def test_kill_9_inside_checkpoint_write_and_final_validation_then_resume(easy_data, tmp_path, caplog, no_network):
    """Issue 'Never lose a user's data', items 4 and 5: kill -9 while last.pt is written (epoch 2 of 3), resume, kill
    -9 in the final validation, resume: exit 0, a loadable best.pt + best.json, every epoch trained once."""
    data, coco = easy_data
    out = tmp_path / "run"
    argv = _args(data, coco, out, "--epochs", "3", "mosaic=0", "warmup_epochs=0", "nbs=8")

    _killed_run(tmp_path, "last-write", argv)
    last = torch.load(out / "weights" / "last.pt", weights_only=False)  # intact: epoch 1's checkpoint
    assert last["epoch"] == 0 and last["optimizer"] is not None
    assert len(list((out / "weights").glob(".last.pt.*.tmp"))) == 1  # the half-written temporary file
    assert _raw_csv_epochs(out) == [1, 2]  # epoch 2 was logged, then killed before it was saved

    _killed_run(tmp_path, "final-val", argv + ["--resume"])
    assert not list((out / "weights").glob(".*.tmp"))  # the killed run's temporary file was removed
    assert _raw_csv_epochs(out) == [1, 2, 3]  # epoch 2 trained again once, not logged twice
    assert torch.load(out / "weights" / "last.pt", weights_only=False)["optimizer"] is None  # stripped: training done
    assert not (out / "best.json").exists() and not (out / "best.pt").exists()
    trained = torch.load(out / "weights" / "best.pt", weights_only=False)["model"].state_dict()

    caplog.set_level(logging.INFO, logger="defect_vision.yolo_world")
    assert train_main(argv + ["--resume"]) == 0  # before: "finished; nothing to resume"
    assert "final step did not" in caplog.text and "no training" in caplog.text
    assert _raw_csv_epochs(out) == [1, 2, 3]  # nothing trained
    meta = json.loads((out / "best.json").read_text())
    assert [h["epoch"] for h in meta["history"]] == [1, 2, 3] and meta["epochs"] == 3
    ft = meta["metrics"]["fine_tuned"]
    assert 0 <= ft["map50_95"] <= ft["map50"] <= 1 and set(ft["per_class"]) == {"hole", "scratch", "stain"}
    final = torch.load(out / "best.pt", weights_only=False)["model"].state_dict()
    assert all(torch.equal(final[k], v) for k, v in trained.items())  # best.pt = the trained best epoch
    _assert_loadable_result(out, data, meta)
    assert json.loads((out / MARKER).read_text())["state"] == "finished"
    assert train_main(argv + ["--resume"]) == 2  # and now it is finished


@pytest.mark.parametrize("keep", [0.0, 0.3])
def test_truncated_best_pt_without_later_improvement_is_recovered(easy_data, tmp_path, caplog, keep, no_network):
    """weights/best.pt truncated by a kill inside its write (0 B, or 30 % of it), and no later epoch beats the
    lost best epoch: the resumed run used to train every epoch and die in the final validation with a traceback."""
    data, coco = easy_data
    out = tmp_path / "run"
    argv = _args(data, coco, out, "--epochs", "2", "mosaic=0", "warmup_epochs=0", "nbs=8")
    with pytest.raises(Interrupt):
        yolo_world.finetune_detector(_config(argv), callbacks={"on_model_save": [_interrupt_after_first_epoch]})
    best = out / "weights" / "best.pt"
    best.write_bytes(best.read_bytes()[: int(best.stat().st_size * keep)])  # what a kill inside the write leaves
    last = torch.load(out / "weights" / "last.pt", weights_only=False)
    last["best_fitness"] = 1.0  # the lost best epoch was better than anything trained later
    torch.save(last, out / "weights" / "last.pt")

    assert train_main(argv + ["--resume"]) == 0
    assert "best epoch's weights are lost" in caplog.text
    meta = json.loads((out / "best.json").read_text())
    assert [h["epoch"] for h in meta["history"]] == [1, 2] and _raw_csv_epochs(out) == [1, 2]
    assert torch.load(best, weights_only=False)["model"] is not None
    _assert_loadable_result(out, data, meta)


def test_ddp_worker_rebuilds_the_trainer_without_the_embeddings_keyword(easy_data, tmp_path, monkeypatch, no_network):
    """ultralytics' DDP workers run a generated file that rebuilds the trainer as
    `Trainer(cfg=, overrides=, _callbacks=)` from a pickled state: no class_embeddings keyword."""
    from ultralytics.utils import dist

    from defect_vision.training.world_trainer import DefectWorldTrainer

    data, _ = easy_data
    names = ["hole", "scratch", "stain"]
    emb = random_embed(names)
    overrides = dict(model="yolov8n-worldv2.yaml", data=str(data), epochs=1, imgsz=64, batch=4, device="cpu",
                     workers=0, project=str(tmp_path), name="run", exist_ok=True, plots=False, pretrained=False)
    with pytest.raises(TypeError, match="class_embeddings"):
        DefectWorldTrainer(overrides=overrides)
    trainer = DefectWorldTrainer(overrides=overrides, class_embeddings=dict(zip(names, emb)), balanced=True)

    monkeypatch.setattr(dist, "USER_CONFIG_DIR", tmp_path)
    file = Path(dist.generate_ddp_file(trainer))
    code = file.read_text()
    rebuild = 'trainer = state["trainer"](cfg=cfg, overrides=state["args"], _callbacks=state["callbacks"])'
    assert rebuild in code and code.rstrip().endswith("trainer.train()")
    scope = {"__name__": "__main__"}
    exec(compile(code.rstrip()[: -len("trainer.train()")], str(file), "exec"), scope)  # everything but train()
    worker = scope["trainer"]
    assert type(worker) is DefectWorldTrainer and worker.balanced is True
    assert list(worker.class_embeddings) == names
    assert all(torch.equal(worker.class_embeddings[n], emb[i]) for i, n in enumerate(names))
    model = worker.get_model(cfg="yolov8n-worldv2.yaml", verbose=False)
    assert model.names == dict(enumerate(names)) and torch.allclose(model.txt_feats[0], emb)


@pytest.mark.slow
def test_loop_learns_trivially_learnable_set(tmp_path, no_network):
    """From scratch, CPU, ~1-2 minutes (mAP50 > 0.5 from epoch ~13 of 24): box mAP50 on the val split must clear 0.5 and beat the start model."""
    data, coco = _convert(make_shapes(tmp_path / "mvtec").parent, "toy_shapes", tmp_path / "export")
    out = tmp_path / "run"
    argv = _args(data, coco, out, "--epochs", "24", "--batch", "4", "--lr0", "0.002", "--eval-zero-shot",
                 "mosaic=0", "scale=0", "translate=0.05")  # no zoom-out; small-data settings (nbs, warm-up) are the CLI's own
    assert train_main(argv) == 0
    meta = json.loads((out / "best.json").read_text())
    ft, zs = meta["metrics"]["fine_tuned"], meta["metrics"]["zero_shot"]
    assert ft["map50"] > 0.5, meta["history"]
    assert zs["map50"] < 0.1 < ft["map50"] - zs["map50"]
    losses = [h["loss"] for h in meta["history"]]
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:3])  # the loss falls

    # the final step redone by --resume (as after a kill in the final validation) gives the very same metrics
    (out / "best.json").unlink()
    (out / "best.pt").unlink()
    (out / MARKER).write_text(json.dumps({"kind": "train-detector", "state": "training"}))
    assert train_main(argv + ["--resume"]) == 0
    redone = json.loads((out / "best.json").read_text())
    assert redone["metrics"] == meta["metrics"] and redone["history"] == meta["history"]


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
    from defect_vision.models import text_embeddings as te

    clip_file = tmp_path / "clip" / "ViT-B-32.pt"
    clip_file.parent.mkdir()
    clip_file.write_bytes(b"stand-in weights")
    tiny = _tiny_clip()
    monkeypatch.setattr(te, "load_clip", lambda path, device="cpu": tiny)
    from ultralytics import __version__
    from ultralytics.nn.tasks import WorldModel
    from ultralytics.utils import ROOT as UL_ROOT
    from ultralytics.utils import YAML

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
    assert train_main(argv) == 0
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
    assert train_main(argv) == 2
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

    assert _error_of(_args(data, coco, out, "bogus_key=1"), capsys) == (
        "error: bogus_key=1: 'bogus_key' is not an ultralytics argument")
    assert _error_of(_args(data, coco, out, "--resume"), capsys) == (
        f"error: {out / 'weights' / 'last.pt'}: nothing to resume (no interrupted run in {out})")
    msg = _error_of(_args(data, coco, out, "--prompt-template", "{nam}"), capsys)
    assert "{nam}" in msg or "nam" in msg
    msg = _error_of(_args(data, coco, out, "--device", "cuda:7"), capsys)  # no 8th GPU here, whatever the machine
    assert msg.startswith("error: --device cuda:7: ")
    assert not out.exists()

    # output folder safety: never a folder holding the dataset; a folder of other files only with --force
    msg = _error_of(_args(data, coco, data.parent.parent), capsys)
    assert msg.startswith(f"error: {data.parent.parent}: output folder holds the input")
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep me")
    msg = _error_of(_args(data, coco, user), capsys)
    assert msg.startswith(f"error: {user}: folder exists and is not a previous train-detector output") and "--force" in msg
    assert [p.name for p in user.iterdir()] == ["notes.txt"]
    msg = _error_of(_args(data, coco, data.parent, "--force"), capsys)  # --force never replaces the input
    assert "output folder is the input" in msg


def test_script_help_lists_options_and_rejects_a_wrong_one(tmp_path):
    """scripts/finetune_yolo_world.sh (what the README shows), `python finetune/yolo_world.py` and
    `python -m defect_vision train-detector` are one command: same options, same defaults, same errors."""
    script = [str(REPO / "scripts" / "finetune_yolo_world.sh")]
    res = subprocess.run(script + ["--help"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("usage: defect-vision train-detector ")
    for opt in ("--category", "--from-scratch", "--text-encoder", "--prompt-template", "--balanced", "--freeze",
                "--eval-zero-shot", "--resume", "--force", "key=value", "yolov8s-worldv2.pt", "weights/clip/ViT-B-32.pt"):
        assert opt in res.stdout, opt
    assert "(default: Adam)" in res.stdout and "(default: 50)" in res.stdout and "(default: 640)" in res.stdout
    thin = subprocess.run([sys.executable, str(REPO / "finetune" / "yolo_world.py"), "--help"], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert thin.returncode == 0 and thin.stdout.startswith("usage: finetune/yolo_world.py ")
    assert thin.stdout[thin.stdout.index("\nFine-tune"):] == res.stdout[res.stdout.index("\nFine-tune"):]

    bad = subprocess.run(script + ["--category", "wood", "--bogus"], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path)
    assert bad.returncode == 2 and bad.stdout == ""
    errors = [line for line in bad.stderr.splitlines() if "error" in line]
    assert errors == ["defect-vision train-detector: error: unrecognized arguments: --bogus"]
    missing = subprocess.run(script + ["--category", "wood"], capture_output=True, text=True, timeout=120,
                             cwd=tmp_path)  # from another folder: its datasets/ (relative paths stay the caller's)
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines()[-1] == (
        "error: datasets/yolo/wood/data.yaml: no such file (run converters/mvtec_to_yolo.py for the category first)")


def test_device_strings():
    from defect_vision.devices import DeviceError, ultralytics_device

    assert ultralytics_device("cpu") == "cpu"
    assert ultralytics_device("auto") == ("0" if torch.cuda.is_available() else "cpu")
    with pytest.raises(DeviceError, match="cuda:7"):
        ultralytics_device("cuda:7")
    assert [yolo_world.text_encoder_device(d) for d in ("cpu", "0", "1", "2,3")] == ["cpu", "cuda:0", "cuda:1", "cuda:2"]


def test_results_rows_of_unsaved_epochs_are_dropped(tmp_path):
    csv_path = tmp_path / "results.csv"
    head = "epoch,time,train/box_loss,train/cls_loss,train/dfl_loss,metrics/mAP50(B),metrics/mAP50-95(B)\n"
    csv_path.write_text(head + "1,1,1,1,1,0.1,0.05\n2,2,1,1,1,0.2,0.1\n3,3,1,1,1,0.3,0.15\n4,4,1,")
    assert yolo_world.trim_results(csv_path, 2) == 2
    assert csv_path.read_text() == head + "1,1,1,1,1,0.1,0.05\n2,2,1,1,1,0.2,0.1\n"
    csv_path.write_text(csv_path.read_text() + "2,9,2,2,2,0.4,0.2\n")  # an old run's duplicate: the last row counts
    assert yolo_world.read_history(csv_path) == [{"epoch": 1, "loss": 3.0, "map50": 0.1, "map50_95": 0.05},
                                                 {"epoch": 2, "loss": 6.0, "map50": 0.4, "map50_95": 0.2}]


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
