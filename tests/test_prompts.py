"""Prompts that carry meaning: prompt ensembling, prompts.yaml from the converters, train-detector --prompts,
--tune-prompts (learnable embeddings pulled towards CLIP, saved in best.pt), --prompt-only (the detector stays
frozen), and predict --classes with names the detector was never trained on."""
from __future__ import annotations

import json
from copy import deepcopy
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from defect_vision.cli.convert import main as convert_main
from defect_vision.cli.train_detector import main as train_main
from defect_vision.errors import DatasetError
from defect_vision.models.prompts import ensemble, templated
from defect_vision.models.text_embeddings import random_embed

TINY = ["--from-scratch", "--model-cfg", "yolov8n-worldv2.yaml", "--text-encoder", "random", "--imgsz", "64",
        "--batch", "8", "--workers", "0", "--no-plots"]
OVERRIDES = ["mosaic=0", "warmup_epochs=0"]  # key=value go last (argparse takes one run of positionals)


@pytest.fixture(autouse=True)
def _no_clip(no_clip_download):
    """Every test here fails if ultralytics' own CLIP download path is reached."""


@pytest.fixture(scope="module")
def exported(easy_root, tmp_path_factory) -> tuple[Path, Path]:
    """toy_easy converted with a names.yaml giving 'hole' three phrasings: (data.yaml, coco folder)."""
    out = tmp_path_factory.mktemp("prompt_export")
    names = out / "names.yaml"
    names.write_text("hole: [hole, round hole, dark pit]\nstain: liquid stain\n")
    assert convert_main(["--category", "toy_easy", "--root", str(easy_root), "--out", str(out), "--formats", "yolo",
                         "coco", "--names", str(names), "--no-progress"]) == 0
    return out / "yolo" / "toy_easy" / "data.yaml", out / "coco" / "toy_easy"


def test_ensemble_is_the_normalised_mean_of_what_the_encoder_says():
    calls = []
    vecs = {"a": torch.tensor([3.0, 0, 0]), "b": torch.tensor([0, 2.0, 0]), "c": torch.tensor([0, 0, 5.0])}

    def encode(prompts):
        calls.append(list(prompts))
        return torch.stack([vecs[p] for p in prompts])

    emb = ensemble(encode, [["a", "b"], ["c"], ["b", "a", "c"]])
    s2, s3 = 1 / np.sqrt(2), 1 / np.sqrt(3)
    assert torch.allclose(emb, torch.tensor([[s2, s2, 0], [0, 0, 1], [s3, s3, s3]], dtype=torch.float32), atol=1e-6)
    assert calls == [["a", "b", "c"]]  # each distinct phrasing encoded once
    assert templated([["scratch"]], "{name} on {category}", "metal_nut") == [["scratch on metal nut"]]
    with pytest.raises(DatasetError, match="placeholder"):
        templated([["x"]], "{nam}")


def test_converters_write_prompts_yaml_with_every_phrasing(exported):
    _, coco = exported
    table = yaml.safe_load((coco / "prompts.yaml").read_text())
    assert table == {"hole": ["hole", "round hole", "dark pit"], "scratch": ["scratch"], "stain": ["liquid stain"]}
    cats = json.loads((coco / "instances_train.json").read_text())["categories"]
    assert [c["prompt"] for c in cats] == ["hole", "scratch", "liquid stain"]  # the first phrasing stays the prompt


def _train(data: Path, coco: Path, out: Path, *extra: str) -> dict:
    opts = [x for x in extra if "=" not in x]
    assert train_main(["--category", "toy", "--data", str(data), "--coco", str(coco), "--out", str(out), *TINY, *opts,
                       *OVERRIDES, *(x for x in extra if "=" in x)]) == 0
    return json.loads((out / "best.json").read_text())


def _txt(path: Path) -> torch.Tensor:
    ckpt = torch.load(path, weights_only=False)
    return (ckpt.get("ema") or ckpt["model"]).txt_feats[0].float()


def test_tune_prompts_changes_and_saves_embeddings_and_the_pull_holds_them(exported, tmp_path):
    data, coco = exported
    want = ensemble(random_embed, [["hole", "round hole", "dark pit"], ["scratch"], ["liquid stain"]])

    frozen = _train(data, coco, tmp_path / "frozen", "--epochs", "2")
    assert frozen["phrasings"][0] == ["hole", "round hole", "dark pit"] and frozen["prompts_file"] == str(coco / "prompts.yaml")
    assert frozen["prompt_tuning"] == {"tuned": False}
    assert torch.allclose(_txt(tmp_path / "frozen" / "best.pt"), want, atol=1e-6)  # default: frozen, ensembled

    free = _train(data, coco, tmp_path / "free", "--epochs", "2", "--tune-prompts", "--prompt-reg", "0", "lr0=0.01")
    pulled = _train(data, coco, tmp_path / "pulled", "--epochs", "2", "--tune-prompts", "--prompt-reg", "1000", "lr0=0.01")
    tuned = _txt(tmp_path / "free" / "best.pt")
    assert not torch.allclose(tuned, want, atol=1e-4)  # the embeddings trained...
    assert torch.allclose(tuned.norm(dim=-1), torch.ones(3), atol=1e-5)  # ...as unit vectors
    drift = free["prompt_tuning"]["drift"]
    assert set(drift) == {"hole", "scratch", "stain"} and min(drift.values()) > 0
    cos = torch.nn.functional.cosine_similarity(tuned, want)
    assert np.allclose([drift[n] for n in ("hole", "scratch", "stain")], (1 - cos).numpy(), atol=1e-5)
    assert sum(pulled["prompt_tuning"]["drift"].values()) < sum(drift.values())  # the L2 pull holds them near CLIP
    ckpt = torch.load(tmp_path / "free" / "best.pt", weights_only=False)
    assert ckpt["defect_vision"]["prompt_tuning"]["tuned"] is True
    table = (ckpt.get("ema") or ckpt["model"]).prompt_table
    assert type(table) is torch.nn.Module and torch.allclose(table.init.float(), want, atol=1e-3)  # plain Module: any
    # ultralytics install unpickles it


def _start_checkpoint(path: Path) -> Path:
    """A YOLO-World nano checkpoint in ultralytics' release format (random weights)."""
    from ultralytics import __version__
    from ultralytics.nn.tasks import WorldModel

    torch.manual_seed(3)
    start = WorldModel("yolov8n-worldv2.yaml", nc=80, verbose=False)
    start.txt_feats = random_embed([f"c{i}" for i in range(80)])[None]
    torch.save({"model": deepcopy(start).half(), "train_args": {}, "date": "test", "version": __version__}, path)
    return path


def test_prompt_only_trains_the_embeddings_and_nothing_else(exported, tmp_path):
    data, coco = exported
    start = _start_checkpoint(tmp_path / "start.pt")
    argv = [a for a in TINY if a not in ("--from-scratch", "--model-cfg", "yolov8n-worldv2.yaml")]
    assert train_main(["--category", "toy", "--data", str(data), "--coco", str(coco), "--out", str(tmp_path / "run"),
                       "--model", str(start), *argv, "--epochs", "2", "--prompt-only", *OVERRIDES, "lr0=0.01"]) == 0
    meta = json.loads((tmp_path / "run" / "best.json").read_text())
    assert meta["prompt_tuning"]["tuned"] is True and meta["prompt_tuning"]["prompt_only"] is True
    assert min(meta["prompt_tuning"]["drift"].values()) > 0
    before = torch.load(start, weights_only=False)["model"].float().state_dict()
    ckpt = torch.load(tmp_path / "run" / "best.pt", weights_only=False)
    after = (ckpt.get("ema") or ckpt["model"]).float().state_dict()
    layers = [k for k in before if k.startswith("model.")]
    assert layers and all(torch.equal(after[k], before[k]) for k in layers)  # weights and BN statistics


def test_prompts_yaml_must_name_training_classes(exported, tmp_path):
    data, coco = exported
    bad = tmp_path / "prompts.yaml"
    bad.write_text("dent: [dent]\n")
    argv = ["--category", "toy", "--data", str(data), "--coco", str(coco), "--out", str(tmp_path / "run"), *TINY,
            "--prompts", str(bad)]
    assert train_main(argv) == 2
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def detector(tmp_path_factory) -> Path:
    """A random YOLO-World that detects something everywhere, with metadata saying its encoder was 'random'."""
    from defect_vision.models.random_init import save_random_detector

    path = save_random_detector(tmp_path_factory.mktemp("det") / "best.pt", ["hole", "scratch"], score_bias=0.0, imgsz=64)
    ckpt = torch.load(path, weights_only=False)
    ckpt["defect_vision"] = {"classes": ["hole", "scratch"], "category_ids": [1, 2], "text_encoder": "random"}
    torch.save(ckpt, path)
    return path


def _predict(detector: Path, images: list[np.ndarray], **config):
    from defect_vision.inference.predictor import DefectPredictor, PredictConfig

    predictor = DefectPredictor(detector, None, PredictConfig(box_only=True, conf=0.0, device="cpu", **config))
    return predictor, predictor.predict(images)


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(3)]


def test_predict_classes_embeds_new_names_with_the_checkpoints_encoder(detector):
    predictor, results = _predict(detector, _images(), classes=["crack", "hole", "burn_mark"])
    model = predictor.detector.model
    assert predictor.class_names == ["crack", "hole", "burn_mark"] and predictor.category_ids == [3, 1, 4]
    base = torch.load(detector, weights_only=False)["model"].txt_feats[0].float()
    assert torch.allclose(model.txt_feats[0, 1].float(), base[0])  # a known name keeps its own embedding
    assert torch.allclose(model.txt_feats[0, [0, 2]].float(), random_embed(["crack", "burn mark"]), atol=1e-6)
    assert all(set(r.class_names) <= {"crack", "hole", "burn_mark"} for r in results)
    assert {n for r in results for n in r.class_names} >= {"crack", "burn_mark"}


def test_predict_new_name_without_clip_file_is_one_line_error(detector, tmp_path, capsys):
    from defect_vision.cli.predict import main

    image = tmp_path / "img.png"
    import cv2

    cv2.imwrite(str(image), _images()[0])
    missing = tmp_path / "clip" / "ViT-B-32.pt"
    rc = main(["--detector", str(detector), "--box-only", "--source", str(image), "--out", str(tmp_path / "out"),
               "--classes", "crack", "--text-encoder", "clip", "--clip", str(missing), "--quiet"])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"error: {missing}: CLIP text encoder not found") and "download_weights.sh" in err
    assert not (tmp_path / "out").exists()
