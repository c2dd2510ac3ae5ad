"""Logit adjustment (training/balanced_loss.py): the offsets, the classifier's loss (= balanced softmax at tau 1, and
better balanced accuracy than plain cross-entropy on imbalanced data), and the detector's criterion wrapper on
ultralytics' own detection loss (per-image prompt positions, YOLO-World and YOLOE training)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from defect_vision.training.balanced_loss import (
    AdjustedDetectionLoss,
    DetectorLogitAdjustment,
    LogitAdjustedCrossEntropy,
    adjust_scores,
    detector_callbacks,
    installed,
    instance_counts,
    log_prior_offsets,
    prompt_offsets,
)


def test_offsets_are_log_priors_relative_to_the_most_frequent_class():
    off = log_prior_offsets([8, 4, 1, 0], tau=1.0)
    assert off.tolist() == pytest.approx([0.0, math.log(0.5), math.log(1 / 8), 0.0])  # no instance: no correction
    half = log_prior_offsets([8, 4, 1], tau=0.5).tolist()
    assert half == pytest.approx([0.0, 0.5 * math.log(0.5), 0.5 * math.log(1 / 8)])
    assert log_prior_offsets([3, 1], tau=0.0).tolist() == [0.0, 0.0]
    assert log_prior_offsets([0, 0]).tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="counts"):
        log_prior_offsets([3, -1])


def test_classifier_loss_is_balanced_softmax_at_tau_1_and_plain_ce_at_tau_0():
    torch.manual_seed(0)
    counts = [50, 5, 1]
    logits, y = torch.randn(7, 3), torch.tensor([0, 1, 2, 2, 1, 0, 2])
    la = LogitAdjustedCrossEntropy(counts, tau=1.0)(logits, y)
    n = torch.tensor(counts, dtype=torch.float32)
    balanced_softmax = -(torch.log(n[y] * logits.exp().gather(1, y[:, None]).squeeze(1))
                         - torch.log((n * logits.exp()).sum(1))).mean()  # Ren et al. 2020, written out
    assert float(la) == pytest.approx(float(balanced_softmax), rel=1e-5)
    plain = float(F.cross_entropy(logits, y))
    assert float(LogitAdjustedCrossEntropy(counts, tau=0.0)(logits, y)) == pytest.approx(plain)
    assert float(la) != pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-3)


def _fit_linear(x: torch.Tensor, y: torch.Tensor, counts: list[int], tau: float) -> torch.nn.Linear:
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 3)
    loss_fn = LogitAdjustedCrossEntropy(counts, tau)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(300):
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    return model


def _gaussians(counts: list[int], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[0.0, 0.0], [1.5, 0.0], [0.0, 1.5]])
    x = torch.cat([centres[c] + torch.randn(n, 2, generator=g) for c, n in enumerate(counts)])
    return x, torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])


def test_logit_adjustment_raises_balanced_accuracy_on_imbalanced_data():
    """Three overlapping classes, 400/40/10 training points, balanced test set: plain CE predicts the frequent class
    almost everywhere; the logit-adjusted loss recovers the rare classes (balanced accuracy up by > 0.15)."""
    counts = [400, 40, 10]
    x, y = _gaussians(counts, seed=1)
    xt, yt = _gaussians([300, 300, 300], seed=2)

    def balanced_accuracy(model) -> tuple[float, list[float]]:
        pred = model(xt).argmax(1)
        recall = [float((pred[yt == c] == c).float().mean()) for c in range(3)]
        return float(np.mean(recall)), recall

    ce, ce_recall = balanced_accuracy(_fit_linear(x, y, counts, tau=0.0))
    la, la_recall = balanced_accuracy(_fit_linear(x, y, counts, tau=1.0))
    assert ce_recall[2] < 0.2 and la_recall[2] > 0.5, (ce_recall, la_recall)
    assert la > ce + 0.15, (ce, la)


def test_prompt_offsets_follow_each_images_prompt_order_and_padding():
    offsets = {"hole": 0.0, "scratch": -1.0, "stain": -2.0}
    texts = [["scratch", "hole", "stain"], ["stain", "scratch", ""], ["hole"]]
    t = prompt_offsets(texts, offsets)
    assert t.tolist() == [[-1.0, 0.0, -2.0], [-2.0, -1.0, 0.0], [0.0, 0.0, 0.0]]
    scores = torch.zeros(3, 3, 5)
    out = adjust_scores({"boxes": torch.ones(3, 64, 5), "scores": scores, "feats": [1]}, t)
    assert out["scores"][1, 0].tolist() == [-2.0] * 5 and out["scores"][0, 1].tolist() == [0.0] * 5
    assert out["boxes"] is not None and out["feats"] == [1] and scores.abs().sum() == 0  # input not modified
    e2e = adjust_scores((torch.zeros(1), {"one2many": {"scores": scores}, "one2one": {"scores": scores}}), t)
    assert all(torch.equal(e2e[1][head]["scores"], out["scores"]) for head in ("one2many", "one2one"))
    with pytest.raises(ValueError, match="do not match"):
        adjust_scores({"scores": torch.zeros(3, 4, 5)}, t)


def test_instance_counts_of_ultralytics_labels():
    labels = [{"cls": np.array([[0], [0], [2]])}, {"cls": np.zeros((0, 1))}, {"cls": np.array([[2]])}]
    assert instance_counts(labels, 3).tolist() == [2, 0, 2]
    assert detector_callbacks(False) == {}
    (cb,) = detector_callbacks(True, tau=0.5)["on_pretrain_routine_end"]
    assert isinstance(cb, DetectorLogitAdjustment) and cb.tau == 0.5


@pytest.fixture(scope="module")
def world_batch():
    """A random-init YOLO-World nano in training mode, its raw predictions on two 64 px images and a batch whose
    images list their prompts in different orders; one 'stain' box (the rare class) per image."""
    from ultralytics.cfg import get_cfg
    from ultralytics.nn.tasks import WorldModel

    torch.manual_seed(0)
    model = WorldModel("yolov8n-worldv2.yaml", nc=3, verbose=False)
    model.args = get_cfg()
    model.train()
    texts = [["hole", "scratch", "stain"], ["stain", "hole", "scratch"]]
    feats = F.normalize(torch.randn(2, 3, 512), dim=-1)
    batch = {"img": torch.rand(2, 3, 64, 64), "texts": texts, "batch_idx": torch.tensor([0.0, 1.0]),
             "cls": torch.tensor([[2.0], [0.0]]),  # 'stain' at position 2 in image 0, position 0 in image 1
             "bboxes": torch.tensor([[0.5, 0.5, 0.4, 0.4], [0.5, 0.5, 0.4, 0.4]])}
    return model, feats, batch


def test_detection_loss_pushes_the_rare_class_logits_up(world_batch):
    """On ultralytics' own v8DetectionLoss: with the offsets (stain rare) the gradient on stain's raw logits points
    up harder than without, in each image at its own prompt position; the class with offset 0 (hole) gets exactly
    the plain gradient, so the assigner picked the same positives and targets (it sees the unadjusted scores)."""
    model, feats, batch = world_batch
    offsets = {"hole": 0.0, "scratch": math.log(0.5), "stain": math.log(0.1)}

    def grads(criterion) -> torch.Tensor:
        preds = model(batch["img"], txt_feats=feats)
        preds["scores"].retain_grad()
        loss, items = criterion(preds, batch)
        assert set(items) == {"box_loss", "cls_loss", "dfl_loss"}
        loss.sum().backward()
        return preds["scores"].grad.sum(-1)  # (B, T): summed over anchors

    plain = grads(model.init_criterion())
    adjusted = grads(AdjustedDetectionLoss(model, offsets))
    assert plain.abs().min() > 0
    for b, j in [(0, 2), (1, 0)]:  # (image, prompt position) of 'stain'
        assert adjusted[b, j] < plain[b, j] - 0.1 * abs(plain[b, j]), (adjusted, plain)
    for b, j in [(0, 0), (1, 1)]:  # 'hole'
        assert float(adjusted[b, j]) == pytest.approx(float(plain[b, j]), rel=1e-5)
    for b, j in [(0, 1), (1, 2)]:  # 'scratch', offset log 0.5: in between
        assert adjusted[b, j] < plain[b, j]


def test_wrapper_is_installed_once_and_delegates(world_batch):
    model, feats, batch = world_batch
    base = model.init_criterion()
    wrapped = AdjustedDetectionLoss(model, {"hole": 0.0}, base)
    wrapped(model(batch["img"], txt_feats=feats), batch)
    assert type(base.assigner).__name__ == "PriorFreeAssigner" and wrapped.calls == 1 and wrapped.current is None
    assert wrapped.hyp is base.hyp and wrapped.nc == base.nc  # ultralytics reads the criterion's attributes

    class Outer:  # how prompt tuning's PulledLoss wraps the criterion
        def __init__(self, base):
            self.base = base

    assert installed(wrapped) and installed(Outer(wrapped)) and not installed(base) and not installed(None)
    import copy

    twin = copy.deepcopy(wrapped)  # as ultralytics copies a model (EMA) that may carry its criterion
    assert isinstance(twin.base, type(base)) and twin.offsets == {"hole": 0.0} and twin.model is not model
    assert twin.base.assigner.topk == base.assigner.topk == 10  # the wrapped assigner's attributes read through
    with pytest.raises(KeyError, match="texts"):
        wrapped({"scores": torch.zeros(1, 1, 1)}, {"img": torch.zeros(1)})


@pytest.fixture(scope="module")
def easy_yolo(easy_root, tmp_path_factory) -> tuple[Path, Path]:
    """toy_easy (hole, scratch, stain) with polygon labels: (data.yaml, coco folder); YOLO-World trains on the boxes."""
    from defect_vision.cli.convert import main as convert_main

    out = tmp_path_factory.mktemp("balanced_export")
    assert convert_main(["--category", "toy_easy", "--root", str(easy_root), "--out", str(out), "--formats", "yolo",
                         "coco", "--task", "segment", "--no-progress"]) == 0
    return out / "yolo" / "toy_easy" / "data.yaml", out / "coco" / "toy_easy"


def _yolo_counts(data: Path) -> dict[str, int]:
    import yaml

    names = yaml.safe_load(data.read_text())["names"]
    counts = dict.fromkeys(names.values(), 0)
    for f in (data.parent / "labels" / "train").glob("*.txt"):
        for line in f.read_text().splitlines():
            counts[names[int(line.split()[0])]] += 1
    return counts


@pytest.mark.parametrize("cfg,extra", [("yolov8n-worldv2.yaml", []), ("yoloe-11n-seg.yaml", []),
                                       ("yolov8n-worldv2.yaml", ["--tune-prompts"])],
                         ids=["yolo_world", "yoloe_seg", "yolo_world_tuned_prompts"])
def test_train_detector_balanced_loss_adjusts_every_training_batch(easy_yolo, tmp_path, monkeypatch, cfg, extra):
    """`train-detector --balanced-loss` (1 epoch, random init): the training criterion is the adjusted one (under
    prompt tuning's pull too), it scored every training batch, and its offsets come from the training labels."""
    from ultralytics.nn.tasks import WorldModel, YOLOEModel
    from ultralytics.utils.torch_utils import unwrap_model

    from defect_vision.cli.train_detector import main as train_main
    from defect_vision.training import balanced_loss

    def refuse(*args, **kwargs):
        raise AssertionError("a text model was reached (a download)")

    monkeypatch.setattr(WorldModel, "get_text_pe", refuse)
    monkeypatch.setattr(YOLOEModel, "get_text_pe", refuse)
    seen: dict = {}

    def capture(trainer):
        seen["criterion"] = unwrap_model(trainer.model).criterion
        seen["adjustment"] = trainer.logit_adjustment
        seen["batches"] = len(trainer.train_loader)

    real = balanced_loss.detector_callbacks
    monkeypatch.setattr(balanced_loss, "detector_callbacks",
                        lambda on, tau=1.0: {**real(on, tau), "on_train_end": [capture]})
    data, coco = easy_yolo
    out = tmp_path / "run"
    assert train_main(["--category", "toy", "--data", str(data), "--coco", str(coco), "--out", str(out),
                       "--from-scratch", "--model-cfg", cfg, "--text-encoder", "random", "--imgsz", "64",
                       "--batch", "8", "--workers", "0", "--no-plots", "--epochs", "1", "--balanced-loss",
                       *extra]) == 0
    assert (out / "best.pt").is_file()
    crit = seen["criterion"]
    assert balanced_loss.installed(crit)
    if extra:  # prompt tuning's PulledLoss wraps the adjusted criterion
        assert type(crit).__name__ == "PulledLoss" and isinstance(crit.base, AdjustedDetectionLoss)
        crit = crit.base
    assert crit.calls == seen["batches"] > 0
    counts = _yolo_counts(data)
    assert seen["adjustment"]["counts"] == counts and min(counts.values()) < max(counts.values())
    expected = log_prior_offsets(list(counts.values()))
    assert list(seen["adjustment"]["offsets"].values()) == pytest.approx(expected.tolist())
