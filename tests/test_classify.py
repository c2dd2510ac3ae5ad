"""`defect-vision classify`: the course reports' image classifier on the pipeline's split (labels, outputs, start
weights from weights/ or random init said loudly, best-by-val, the checkpoint reproducing the test figures), its
one-line errors, and the report section beside the pipeline's image-level accuracy."""
from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from defect_vision.cli.classify import main as classify_main
from defect_vision.cli.convert import main as convert_main
from defect_vision.detections import Detections, ImageInfo
from defect_vision.errors import ConfigError
from defect_vision.io import MARKER
from defect_vision.models.classifier import load_classifier
from defect_vision.training.classifier_config import ClassifierTrainConfig
from defect_vision.training.classifier_data import image_type, read_classifier_data

FAST = ["--imgsz", "32", "--batch", "8", "--no-progress"]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Tiny models on 2 shared cores: one intra-op thread is ~3x faster."""


def make_blobs(root: Path, category: str = "toy_blobs", per_defect: int = 8, size: int = 64) -> Path:
    """A trivially classifiable MVTec-layout category: plain grey good images, a large dark disc ('hole') or a
    large bright square ('stain') on the defect images."""
    rng = np.random.default_rng(0)
    base = root / category

    def grey() -> np.ndarray:
        return np.full((size, size, 3), 128.0) + rng.normal(0, 3, (size, size, 3))

    def save(path: Path, img: np.ndarray) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), np.clip(img, 0, 255).astype(np.uint8))

    for split, n in (("train", 8), ("test", 4)):
        for i in range(n):
            save(base / split / "good" / f"{i:03d}.png", grey())
    for kind in ("hole", "stain"):
        for i in range(per_defect):
            img, mask = grey(), np.zeros((size, size), np.uint8)
            x, y, r = *(int(v) for v in rng.integers(size // 3, 2 * size // 3, 2)), size // 4
            if kind == "hole":
                cv2.circle(mask, (x, y), r, 1, -1)
            else:
                cv2.rectangle(mask, (x - r, y - r), (x + r, y + r), 1, -1)
            img[mask.astype(bool)] = 20 if kind == "hole" else 240
            save(base / "test" / kind / f"{i:03d}.png", img)
            save(base / "ground_truth" / kind / f"{i:03d}_mask.png", mask[..., None].repeat(3, 2) * 255)
    return base


def _convert(root: Path, category: str, out: Path) -> Path:
    assert convert_main(["--category", category, "--root", str(root), "--out", str(out), "--formats", "coco",
                         "--no-progress"]) == 0
    return out / "coco" / category


@pytest.fixture(scope="module")
def blobs_coco(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("blobs")
    make_blobs(root)
    return _convert(root, "toy_blobs", tmp_path_factory.mktemp("blobs_export"))


@pytest.fixture(scope="module")
def wood_coco(synthetic_root, tmp_path_factory) -> Path:
    return _convert(synthetic_root, "toy_wood", tmp_path_factory.mktemp("wood_export"))


@pytest.fixture(scope="module")
def blobs_run(blobs_coco, tmp_path_factory) -> tuple[Path, str]:
    """A random-init run on the trivially classifiable set (12 epochs, 32 px): (out folder, stderr)."""
    out = tmp_path_factory.mktemp("blobs_run") / "classify"
    import contextlib
    import io

    from defect_vision.devices import intra_op_threads

    cwd = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("no_weights"))  # no weights/ folder here: random init
    try:
        err = io.StringIO()
        with contextlib.redirect_stderr(err), intra_op_threads(1):
            rc = classify_main(["--category", "toy_blobs", "--coco", str(blobs_coco), "--epochs", "12", "--seed", "1",
                                "--out", str(out), *FAST])
    finally:
        os.chdir(cwd)
    assert rc == 0, err.getvalue()
    return out, err.getvalue()


def test_labels_are_the_evaluations_image_types(wood_coco):
    """good first, then the categories in id order (combined is a type of its own); defect_type wins, else the
    annotations' most frequent class, good when none."""
    data = read_classifier_data(wood_coco)
    assert data.classes == ("good", "combined", "crack", "hole", "scratch", "stain")
    coco = json.loads((wood_coco / "instances_test.json").read_text())
    assert [data.classes[t] for t in data.splits["test"].targets] == [im["defect_type"] for im in coco["images"]]
    assert data.counts("train").sum() == len(json.loads((wood_coco / "instances_train.json").read_text())["images"])
    boxes = Detections(np.array([[0, 0, 2, 2], [0, 0, 3, 3], [1, 1, 2, 2.0]]), np.array([1, 0, 1]), np.ones(3),
                       class_names=["crack", "hole"])
    assert image_type(ImageInfo(1, "a.png"), boxes) == "hole"
    assert image_type(ImageInfo(1, "a.png", extra={"defect_type": "combined"}), boxes) == "combined"
    assert image_type(ImageInfo(1, "a.png"), boxes[np.zeros(3, bool)]) == "good"


def test_random_init_run_learns_and_writes_consistent_outputs(blobs_run, blobs_coco):
    out, err = blobs_run
    assert "RANDOM initial weights" in err and "SMOKE RUN" in err
    m = json.loads((out / "metrics.json").read_text())
    assert m["model"] == "resnet18" and m["weights"] == "random-init" and m["balanced_loss"] is False
    assert m["classes"] == ["good", "hole", "stain"] == m["confusion"]["labels"]
    counts = np.array(m["confusion"]["counts"])
    assert counts.shape == (3, 3) and counts.sum() == m["images"] == m["images_per_split"]["test"] > 0
    assert m["accuracy"] == pytest.approx(np.trace(counts) / counts.sum())
    for i, c in enumerate(m["classes"]):
        assert m["per_class_recall"][c] == pytest.approx(counts[i, i] / counts[i].sum())
    # it learns: the loss falls and the trivially separable test images are mostly right
    hist = m["history"]
    assert [h["epoch"] for h in hist] == list(range(1, 13))
    assert np.mean([h["train_loss"] for h in hist[-3:]]) < 0.7 * np.mean([h["train_loss"] for h in hist[:3]])
    assert m["accuracy"] >= 0.75, m["confusion"]
    # best by val: the chosen epoch has the best val accuracy
    best = max(h["val_accuracy"] for h in hist)
    assert hist[m["best_epoch"] - 1]["val_accuracy"] == best == m["val_accuracy"]
    # outputs: the marker, a PNG, and a checkpoint that reproduces the test predictions
    assert json.loads((out / MARKER).read_text())["kind"] == "classify"
    png = cv2.imread(str(out / "confusion.png"))
    assert png is not None and png.shape[0] > 200
    model, meta = load_classifier(out / "best.pt")
    assert meta["classes"] == m["classes"] and meta["imgsz"] == 32 and meta["weights"] == "random-init"
    from defect_vision.training.classifier_data import load_images, normalise

    data = read_classifier_data(blobs_coco)
    with torch.no_grad():
        pred = model(normalise(load_images(data.splits["test"], 32))).argmax(1).tolist()
    assert [m["classes"][p] for p in pred] == [t["predicted"] for t in m["test_images"]]


def test_start_weights_from_weights_folder_and_from_scratch(blobs_coco, tmp_path, monkeypatch, capsys):
    """weights/<torchvision's file name> is loaded (the body keeps it at a vanishing learning rate; only the head
    is new); --from-scratch ignores it; a file that is not the model's weights is one line."""
    import torchvision

    monkeypatch.chdir(tmp_path)
    torch.manual_seed(5)
    start = torchvision.models.resnet18()
    (tmp_path / "weights").mkdir()
    torch.save(start.state_dict(), tmp_path / "weights" / "resnet18-f37072fd.pth")
    args = ["--category", "toy_blobs", "--coco", str(blobs_coco), "--epochs", "1", "--lr", "1e-12", *FAST]
    assert classify_main([*args, "--out", str(tmp_path / "a")]) == 0
    m = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert m["weights"] == "imagenet" and m["weights_file"] == "weights/resnet18-f37072fd.pth"
    assert "RANDOM" not in capsys.readouterr().err
    state = torch.load(tmp_path / "a" / "best.pt", weights_only=True)["state_dict"]
    assert torch.allclose(state["conv1.weight"], start.state_dict()["conv1.weight"], atol=1e-6)
    assert state["fc.weight"].shape == (3, 512)

    assert classify_main([*args, "--from-scratch", "--out", str(tmp_path / "b")]) == 0
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["weights"] == "random-init"
    assert "RANDOM initial weights (--from-scratch)" in capsys.readouterr().err

    torch.save(torchvision.models.resnet34().state_dict(), tmp_path / "wrong.pth")
    assert classify_main([*args, "--weights", str(tmp_path / "wrong.pth"), "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {tmp_path / 'wrong.pth'}: not torchvision resnet18 weights") and "\n" not in err
    assert not (tmp_path / "c").exists()


def test_api_with_balanced_loss_returns_what_it_writes(blobs_coco, tmp_path):
    from defect_vision.training.classifier import finetune_classifier

    out = tmp_path / "bal"
    config = ClassifierTrainConfig(blobs_coco, out, category="toy_blobs", epochs=1, imgsz=32, batch=8,
                                   balanced_loss=True, from_scratch=True, progress=False)
    m = finetune_classifier(config)
    assert m == json.loads((out / "metrics.json").read_text())
    assert m["balanced_loss"] is True and m["loss"].startswith("logit-adjusted") and "tau 1" in m["loss"]
    from collections import Counter

    train = json.loads((blobs_coco / "instances_train.json").read_text())["images"]
    assert m["train_counts"] == dict(Counter(im["defect_type"] for im in train)) and len(m["train_counts"]) == 3
    assert torch.load(out / "best.pt", weights_only=True)["balanced_loss"] is True


def _one_line_error(capsys, argv: list[str], starts: str) -> None:
    assert classify_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(starts), err
    assert len(err.splitlines()) == 1


def test_bad_input_is_one_line_and_writes_nothing(blobs_coco, tmp_path, capsys):
    out = tmp_path / "out"
    base = ["--category", "toy_blobs", "--epochs", "1", "--from-scratch", "--out", str(out), *FAST]
    _one_line_error(capsys, [*base, "--coco", str(tmp_path / "nope")],
                    f"error: {tmp_path / 'nope'}: no such COCO export folder")
    # a class with no train image: drop every train 'stain' image
    broken = tmp_path / "broken"
    broken.mkdir()
    for split in ("train", "val", "test"):
        coco = json.loads((blobs_coco / f"instances_{split}.json").read_text())
        if split == "train":
            keep = {im["id"] for im in coco["images"] if im["defect_type"] != "stain"}
            coco["images"] = [im for im in coco["images"] if im["id"] in keep]
            coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] in keep]
        (broken / f"instances_{split}.json").write_text(json.dumps(coco))
    _one_line_error(capsys, [*base, "--coco", str(broken)],
                    f"error: {broken / 'instances_train.json'}: class 'stain' has no train image")
    (broken / "instances_val.json").unlink()
    _one_line_error(capsys, [*base, "--coco", str(broken)], f"error: {broken / 'instances_val.json'}: missing")
    assert not out.exists()
    # an output folder that is not a previous classify output is refused
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    _one_line_error(capsys, [*base, "--coco", str(blobs_coco)],
                    f"error: {out}: folder exists and is not a previous classify")
    assert (out / "mine.txt").read_text() == "keep"
    # unknown --model: argparse's one line (exit 2); the library says the field
    with pytest.raises(SystemExit) as exc:
        classify_main([*base, "--coco", str(blobs_coco), "--model", "vgg99"])
    assert exc.value.code == 2 and "invalid choice: 'vgg99'" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="model vgg99: unknown classifier"):
        ClassifierTrainConfig(blobs_coco, out, model="vgg99")
    _one_line_error(capsys, [*base, "--coco", str(blobs_coco), "--epochs", "0"], "error: --epochs 0: must be >= 1")


def test_report_section_beside_the_pipelines_image_level_accuracy(blobs_run, tmp_path):
    from defect_vision.evaluation.report_classify import classify_section

    run = tmp_path / "run"
    assert classify_section(run) == ""
    (run / "classify").mkdir(parents=True)
    (run / "classify" / "metrics.json").write_text((blobs_run[0] / "metrics.json").read_text())
    m = json.loads((blobs_run[0] / "metrics.json").read_text())
    html = classify_section(run)
    assert 'class="banner smoke"' in html and f"{100 * m['accuracy']:.2f}%" in html
    assert "eval/metrics.json missing" in html
    (run / "eval").mkdir()
    pipeline = {"image_classification": {
        "accuracy": 0.5, "correct": 4, "images": 8, "thresholds_used": "at score >= 0.25",
        "per_class": {"good": {"recall": 1.0}, "hole": {"recall": 0.25}, "stain": {"recall": 0.0}},
        "confusion_matrix": {"labels": ["good", "hole", "stain"], "counts": [[4, 0, 0], [3, 1, 0], [1, 0, 0]]}}}
    (run / "eval" / "metrics.json").write_text(json.dumps(pipeline))
    html = classify_section(run)
    assert "pipeline: detections, at score &gt;= 0.25" in html and "50.00%" in html and "41.67%" in html
    recall_table = html[html.index('id="classifier-baseline-recall"'):]
    hole = recall_table[recall_table.index("<td>hole</td>"):].split("</tr>")[0]
    assert f"{100 * m['per_class_recall']['hole']:.2f}%" in hole and "25.00%" in hole
    confusion = html[html.index('id="classifier-baseline-confusion"'):]
    assert all(f"<td>{n}</td>" in confusion for n in np.array(m["confusion"]["counts"]).ravel())


@pytest.mark.real_data
def test_real_mvtec_category_runs(real_root, tmp_path):
    """A real MVTec AD category of ../shared (grid: 5 defect types + good), random init, 32 px, 2 epochs: it runs on
    the real split and measures every test image; its accuracy says nothing (smoke run)."""
    coco = _convert(real_root, "grid", tmp_path / "datasets")
    out = tmp_path / "classify"
    assert classify_main(["--category", "grid", "--coco", str(coco), "--epochs", "2", "--from-scratch",
                          "--out", str(out), *FAST]) == 0
    m = json.loads((out / "metrics.json").read_text())
    test = json.loads((coco / "instances_test.json").read_text())["images"]
    folders = {p.name for p in (real_root / "grid" / "test").iterdir()}
    assert m["classes"][0] == "good" and set(m["classes"]) == folders | {"good"}
    assert m["images"] == len(test) == sum(map(sum, m["confusion"]["counts"])) > 0
    assert [t["true"] for t in m["test_images"]] == [im["defect_type"] for im in test]
