"""`defect-vision train-sam` (= scripts/finetune_sam.sh = finetune/sam.py): one-line errors that write nothing,
run folders that never take a user's data, stale temporary files cleared, and DDP under torchrun through the script."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import defect_vision.training.sam_checkpoints
from defect_vision.cli.train_sam import build_parser, config_from_args
from defect_vision.cli.train_sam import main as sam_main
from defect_vision.errors import ConfigError
from defect_vision.io import MARKER
from defect_vision.training.sam_config import SamTrainConfig
from defect_vision.training.sam_data import load_prompts

REPO = Path(__file__).resolve().parents[1]
FAST = ["--model-type", "vit_tiny", "--from-scratch", "--lr", "1e-3", "--quiet", "--seed", "0"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here runs with one torch thread."""


@pytest.fixture(scope="module")
def prompts(easy_prompts) -> Path:
    return easy_prompts


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """One embedding cache for the module's runs (same encoder: encoded once)."""
    return tmp_path_factory.mktemp("sam_cli_cache")


def _images(prompts: Path) -> int:
    sets = [load_prompts(prompts / f"prompts_{s}.json") for s in ("train", "val")]
    return len({det.image.path for ps in sets for det in ps.with_instances})


def _args(prompts: Path, out: Path, cache: Path, *extra: str) -> list[str]:
    return ["--category", "toy_easy", "--prompts", str(prompts), "--out", str(out), "--cache-dir", str(cache),
            "--epochs", "0", *FAST, *extra]


def _error(capsys) -> str:
    """The one stderr line of a failed command (the --from-scratch banner aside)."""
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, lines
    return lines[0]


def test_cli_defaults_are_the_config_defaults():
    config = config_from_args(build_parser("train-sam").parse_args(["--category", "wood"]))
    assert config == SamTrainConfig(Path("datasets/sam/wood"), Path("runs/wood/sam"), category="wood")
    assert (config.cache_dir, config.model_type, config.epochs, config.lr, config.batch_images, config.device) == (
        Path("runs/wood/sam/embeddings"), "vit_b", 10, 1e-4, 4, "auto")
    assert SamTrainConfig("datasets/sam/grid", "out").category == "grid"
    for bad, message in (({"epochs": -1}, "--epochs must be >= 0"), ({"batch_images": 0}, "--batch-images >= 1"),
                         ({"model_type": "vit_xl"}, "--model-type vit_xl: unknown"),
                         ({"from_scratch": True, "checkpoint": "a.pth"}, "--checkpoint a.pth: not allowed with --from-scratch")):
        with pytest.raises(ConfigError) as exc:  # the library names fields; the CLI the flags
            SamTrainConfig("p", "o", **bad)
        assert message in exc.value.flag_message() and "--" not in str(exc.value)


def test_bad_input_is_one_line_exit_2_and_writes_nothing(prompts, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # weights/ here is empty
    out = tmp_path / "out"
    assert sam_main(["--category", "toy_easy", "--prompts", str(prompts), "--out", str(out), "--quiet"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: weights/sam_vit_b_01ec64.pth: SAM checkpoint not found; get it with scripts/download_weights.sh "
        "(or https://github.com/facebookresearch/segment-anything#model-checkpoints)")
    assert sam_main(["--category", "toy_easy", "--prompts", str(tmp_path / "nope"), "--out", str(out), *FAST]) == 2
    assert capsys.readouterr().err.strip().startswith(f"error: {tmp_path / 'nope' / 'prompts_train.json'}: no such prompts file")
    assert sam_main(["--category", "toy_easy", "--prompts", str(prompts), "--out", str(out), "--model-type", "vit_tiny"]) == 2
    assert capsys.readouterr().err.strip() == ("error: --model-type vit_tiny: vit_tiny has no official checkpoint; pass "
                                               "--checkpoint PATH or --from-scratch")
    yolo = tmp_path / "detector.pt"  # a detector checkpoint given as SAM weights
    torch.save({"model": None, "train_args": {}}, yolo)
    assert sam_main(["--category", "toy_easy", "--prompts", str(prompts), "--out", str(out), "--model-type", "vit_tiny",
                     "--checkpoint", str(yolo), "--quiet"]) == 2
    assert _error(capsys).startswith(f"error: {yolo}: ")
    if not torch.cuda.is_available():
        assert sam_main(_args(prompts, out, tmp_path / "cache", "--device", "cuda:0")) == 2
        assert _error(capsys).startswith("error: --device cuda:0: CUDA was asked for but torch sees no CUDA device")
    assert not out.exists() and not (tmp_path / "cache").exists()
    (tmp_path / "a_file").write_text("")  # an output folder that cannot be made: one line naming the path
    assert sam_main(_args(prompts, tmp_path / "a_file" / "sam", tmp_path / "cache")) == 2
    err = _error(capsys)
    assert err.startswith(f"error: {tmp_path / 'a_file' / 'sam'}") and "Not a directory" in err


def test_resume_with_other_settings_is_one_line(prompts, cache, tmp_path, capsys):
    out = tmp_path / "run"
    assert sam_main(_args(prompts, out, cache)) == 0
    assert sam_main(_args(prompts, out, cache, "--resume", "--seed", "1")) == 2
    assert _error(capsys) == f"error: {out / 'resume.pt'}: run was started with --seed 0, not 1"
    (out / "resume.pt").write_text("garbage")
    assert sam_main(_args(prompts, out, cache, "--resume")) == 2
    assert _error(capsys).startswith(f"error: {out / 'resume.pt'}: not a readable resume.pt")


def test_a_new_run_never_takes_a_foreign_folder_or_the_input(prompts, cache, tmp_path, capsys):
    before = {f.name: f.read_bytes() for f in prompts.iterdir()}
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my data")
    assert sam_main(_args(prompts, mine, cache)) == 2
    assert _error(capsys) == (f"error: {mine}: folder exists and is not a previous train-sam output (no {MARKER} in "
                              "it); pass --force to replace it, or choose another folder")
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    for out, where in ((prompts, "is"), (prompts.parent, "holds"), (prompts / "sam", "lies inside")):
        assert sam_main(_args(prompts, out, cache, "--force")) == 2
        assert _error(capsys) == (f"error: {out}: output folder {where} the input {prompts}; choose another output "
                                  "folder (it would be replaced as a whole)")
    assert {f.name: f.read_bytes() for f in prompts.iterdir()} == before
    # --force takes the folder (nothing of the user's is deleted); then it is a train-sam run folder
    assert sam_main(_args(prompts, mine, cache, "--force")) == 0
    assert (mine / "notes.txt").read_text() == "my data"
    assert json.loads((mine / MARKER).read_text()) == {"kind": "train-sam"}
    assert sam_main(_args(prompts, mine, cache)) == 0  # a previous train-sam output: no --force needed
    # an empty folder is taken too
    (tmp_path / "empty").mkdir()
    assert sam_main(_args(prompts, tmp_path / "empty", cache)) == 0
    assert (tmp_path / "empty" / "best.pth").is_file()


def test_stale_temporary_files_of_killed_runs_are_removed(prompts, cache, tmp_path):
    out = tmp_path / "run"
    assert sam_main(_args(prompts, out, cache)) == 0
    (folder,) = [p for p in cache.iterdir() if p.is_dir()]
    dead = subprocess.Popen(["true"])
    dead.wait()
    live = subprocess.Popen(["sleep", "60"])
    try:
        planted = {
            "dead_out": out / f".best.pth.{dead.pid}.k2j3.tmp", "dead_cache": folder / f".ab12.npy.{dead.pid}.x9.tmp",
            "live_out": out / f".last.pth.{live.pid}.q1.tmp", "live_cache": folder / f".cd34.npy.{live.pid}.z7.tmp",
        }
        for path in planted.values():
            path.write_bytes(b"half-written")
        assert sam_main(_args(prompts, out, cache)) == 0  # a new run in the same folder and cache
        assert not planted["dead_out"].exists() and not planted["dead_cache"].exists()
        assert planted["live_out"].exists() and planted["live_cache"].exists()  # a running job's files stay
        planted["dead_out"].write_bytes(b"half-written")
        assert sam_main(_args(prompts, out, cache, "--resume")) == 0  # --resume clears them too
        assert not planted["dead_out"].exists()
    finally:
        live.kill()
        live.wait()


class Interrupt(Exception):
    pass


def test_a_new_run_killed_before_its_first_commit_cannot_resume_the_previous_run(prompts, cache, tmp_path, monkeypatch,
                                                                                  capsys):
    out = tmp_path / "run"
    assert sam_main(_args(prompts, out, cache, "--epochs", "1", "--batch-images", "4")) == 0
    assert torch.load(out / "resume.pt", weights_only=True)["epoch"] == 1

    def die(obj, path):
        raise Interrupt

    monkeypatch.setattr(defect_vision.training.sam_checkpoints, "torch_save", die)
    with pytest.raises(Interrupt):  # a new run (other seed) dies while writing its epoch 0
        sam_main(_args(prompts, out, cache, "--seed", "1"))
    monkeypatch.undo()
    assert not (out / "resume.pt").exists()  # no commit point of the earlier run is left to mix with this one
    capsys.readouterr()
    assert sam_main(_args(prompts, out, cache, "--seed", "1", "--resume")) == 0
    assert "resume.pt not found; starting a new run" in capsys.readouterr().err


def _run(cmd: list[str], cwd: Path, env: dict | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env or ENV, timeout=timeout)


def test_the_three_entry_points_are_one_command(tmp_path):
    helps = [_run(cmd + ["--help"], tmp_path) for cmd in (
        [str(REPO / "scripts" / "finetune_sam.sh")],
        [sys.executable, str(REPO / "finetune" / "sam.py")],
        [sys.executable, "-m", "defect_vision", "train-sam"])]
    assert [h.returncode for h in helps] == [0, 0, 0], [h.stderr[-500:] for h in helps]
    bodies = [h.stdout.split("\n\n", 1)[1] for h in helps]  # after the usage block (it names the program)
    assert bodies[0] == bodies[1] == bodies[2]
    assert "--train-prompt-encoder" in bodies[0] and "(default: vit_b)" in bodies[0] and "--force" in bodies[0]
    assert helps[1].stdout.startswith("usage: finetune/sam.py") and helps[2].stdout.startswith("usage: defect-vision train-sam")
    bad = _run([str(REPO / "scripts" / "finetune_sam.sh"), "--category", "x"], tmp_path, {**ENV, "NPROC": "two"})
    assert bad.returncode == 2 and bad.stderr.strip() == "error: NPROC=two: expected a number of processes >= 1"


def test_script_trains_with_paths_relative_to_the_callers_folder(prompts, cache, tmp_path):
    (tmp_path / "datasets" / "sam").mkdir(parents=True)
    (tmp_path / "datasets" / "sam" / "toy_easy").symlink_to(prompts)  # the default --prompts, seen from tmp_path
    done = _run([str(REPO / "scripts" / "finetune_sam.sh"), "--category", "toy_easy", "--cache-dir", str(cache),
                 "--epochs", "0", *FAST], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    run = tmp_path / "runs" / "toy_easy" / "sam"  # the default --out, under the caller's folder
    saved = json.loads((run / "best.json").read_text())
    assert saved["data"]["prompts"] == "datasets/sam/toy_easy" and saved["epochs"] == 0
    assert done.stdout.strip() == (f"sam: vit_tiny (random-init) 0 epochs, val mask IoU {saved['val_iou_start']:.4f} -> "
                                   f"{saved['val_iou_best']:.4f} (best epoch 0), encoder ran {saved['encoder_calls']}x "
                                   f"for {_images(prompts)} images, -> runs/toy_easy/sam/best.pth")


def test_ddp_under_torchrun_through_the_script(prompts, tmp_path):
    done = _run([str(REPO / "scripts" / "finetune_sam.sh"), "--category", "toy_easy", "--prompts", str(prompts),
                 "--out", str(tmp_path / "ddp"), "--cache-dir", str(tmp_path / "cache"), "--epochs", "1",
                 "--batch-images", "2", "--device", "cpu", *FAST], tmp_path, {**ENV, "NPROC": "2"}, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    saved = json.loads((tmp_path / "ddp" / "best.json").read_text())
    assert saved["world_size"] == 2 and [h["epoch"] for h in saved["history"]] == [0, 1]
    assert saved["encoder_calls"] == _images(prompts)  # the two ranks split the images, none twice
    assert len(list((tmp_path / "cache").glob("*/*.npy"))) == _images(prompts)
    assert done.stdout.count("sam: vit_tiny") == 1  # rank 0 alone prints the summary
    from segment_anything import sam_model_registry

    sam_model_registry["vit_tiny"](checkpoint=str(tmp_path / "ddp" / "best.pth"))
