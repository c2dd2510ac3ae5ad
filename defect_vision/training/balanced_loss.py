"""Class-rebalanced losses by logit adjustment (Menon et al., "Long-tail learning via logit adjustment", ICLR 2021):
during training every class logit gets `tau * log(prior_c)` added, so the model's own logits learn the class-balanced
decision rule and rare classes are no longer out-voted by frequent ones at test time (nothing changes at inference).

Why this one: it is the classification form of the Balanced MSE idea of the wood report (Ren et al., CVPR 2022, who
derive Balanced MSE as the regression counterpart of exactly this prior correction; with tau = 1 it *is* balanced
softmax, Ren et al. 2020), it needs no per-sample weights (inverse-frequency weights of a class with 3 images blow
up the gradient noise), and the same additive offset applies unchanged to the detector's per-class sigmoid logits.

The offsets are taken relative to the most frequent class, `tau * log(n_c / n_max)` (0 for it, negative for rarer
ones): under softmax a common shift changes nothing, and under the detector's per-class BCE it keeps the most
frequent class's score scale (and so the calibrated thresholds' meaning) where it was. A class with no training
instance gets 0 (no prior to correct).

- classifier: `LogitAdjustedCrossEntropy(counts, tau)` (tau = 0: plain cross-entropy).
- detector (YOLO-World and YOLOE, `train-detector --balanced-loss`): ultralytics' detection loss is per-class BCE on
  the class scores, whose channels are the *prompt positions* of each image (its sampled class names, padded with
  ""), not dataset classes. `DetectorLogitAdjustment`, an on_pretrain_routine_end callback, counts the training
  instances per class name and wraps the model's criterion in `AdjustedDetectionLoss`, which adds to each image's
  score channel j the offset of the name in its j-th prompt before ultralytics' own loss runs.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

DESCRIPTION = "logit-adjusted (Menon et al. 2021; tau=1 = balanced softmax)"


def log_prior_offsets(counts: Sequence[float], tau: float = 1.0) -> np.ndarray:
    """tau * log(n_c / n_max) per class; 0 for classes with no instance (and for all when tau is 0)."""
    counts = np.asarray(counts, float)
    if counts.ndim != 1 or (counts < 0).any():
        raise ValueError(f"class counts must be a 1-d list of numbers >= 0, got {counts.tolist()}")
    if not counts.any() or tau == 0:
        return np.zeros_like(counts)
    present = counts > 0
    return np.where(present, tau * (np.log(np.where(present, counts, 1.0)) - np.log(counts.max())), 0.0)


class LogitAdjustedCrossEntropy(torch.nn.Module):
    """Cross-entropy of `logits + tau * log(prior)` (Menon et al.'s logit-adjusted loss); tau = 0 is plain CE."""

    def __init__(self, counts: Sequence[float], tau: float = 1.0):
        super().__init__()
        self.tau = float(tau)
        self.register_buffer("offsets", torch.as_tensor(log_prior_offsets(counts, tau), dtype=torch.float32))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits + self.offsets.to(logits.dtype), target)


# ------------------------------------------------------------------ detector (ultralytics' criterion)
def instance_counts(labels: Sequence[dict], nc: int) -> np.ndarray:
    """Instances per class index in ultralytics dataset labels (each with a "cls" array)."""
    cls = [np.asarray(lb["cls"], int).ravel() for lb in labels]
    flat = np.concatenate(cls) if cls else np.zeros(0, int)
    return np.bincount(flat, minlength=nc)[:nc]


def prompt_offsets(texts: Sequence[Sequence[str]], offsets: dict[str, float], device=None) -> torch.Tensor:
    """(B, T) offsets of each image's prompt positions; a name without an offset (padding "") gets 0."""
    rows = [[offsets.get(t, 0.0) for t in per_image] for per_image in texts]
    width = max((len(r) for r in rows), default=0)
    return torch.tensor([r + [0.0] * (width - len(r)) for r in rows], dtype=torch.float32, device=device)


def adjust_scores(preds, offsets: torch.Tensor):
    """`preds` with offsets (B, T) added to its class scores (B, T, anchors); the structure is kept: ultralytics'
    training dict, an (inference, dict) tuple, or end-to-end heads' {"one2many": ..., "one2one": ...}."""
    if isinstance(preds, tuple):
        return (preds[0], *(adjust_scores(p, offsets) for p in preds[1:]))
    if not isinstance(preds, dict):
        return preds
    if "scores" in preds:
        scores = preds["scores"]
        if scores.shape[:2] != offsets.shape:
            raise ValueError(f"class scores {tuple(scores.shape)} do not match the batch's prompts "
                             f"{tuple(offsets.shape)}")
        return {**preds, "scores": scores + offsets.to(scores.device, scores.dtype)[..., None]}
    return {k: adjust_scores(v, offsets) if isinstance(v, (dict, tuple)) else v for k, v in preds.items()}


class PriorFreeAssigner:
    """A criterion's task-aligned assigner fed the class scores without the offsets: which anchors are positives, and
    their soft targets, come from the model's own scores as without the balanced loss; only the BCE sees the
    adjusted ones (Menon et al. adjust the loss, not the labels). At near-zero scores (a random-init head) the
    assigner's normalisation would otherwise shrink the rare classes' targets."""

    def __init__(self, assigner, owner: AdjustedDetectionLoss):
        self.__dict__.update(assigner=assigner, owner=owner)

    def __call__(self, pd_scores: torch.Tensor, *args, **kwargs):
        offsets = self.owner.current  # (B, T) of the batch being scored
        if offsets is not None:
            raw = torch.sigmoid(torch.logit(pd_scores.float()) - offsets.to(pd_scores.device)[:, None, :])
            pd_scores = raw.to(pd_scores.dtype)
        return self.assigner(pd_scores, *args, **kwargs)

    def __getattr__(self, name: str):  # only reached for names not set here; none while unpickling (deepcopy)
        assigner = self.__dict__.get("assigner")
        if assigner is None:
            raise AttributeError(name)
        return getattr(assigner, name)

    def __setattr__(self, name: str, value) -> None:  # e.g. ultralytics setting assigner.num_classes
        setattr(self.__dict__["assigner"], name, value)


def _wrap_assigners(criterion, owner: AdjustedDetectionLoss, depth: int = 2) -> None:
    """Wrap the assigner of `criterion` and of the criteria it holds (end-to-end heads, visual prompts)."""
    assigner = getattr(criterion, "assigner", None)
    if assigner is not None and not isinstance(assigner, PriorFreeAssigner):
        criterion.assigner = PriorFreeAssigner(assigner, owner)
    if depth:
        for value in list(getattr(criterion, "__dict__", {}).values()):
            if hasattr(value, "assigner") and not isinstance(value, PriorFreeAssigner):
                _wrap_assigners(value, owner, depth - 1)


class AdjustedDetectionLoss:
    """The model's detection criterion (ultralytics' own, built on first use as it does) on logit-adjusted class
    scores; its assigner still sees the unadjusted ones (PriorFreeAssigner). Anything else (update(), loss names)
    is the wrapped criterion's."""

    def __init__(self, model: torch.nn.Module, offsets: dict[str, float], base=None):
        self.model, self.offsets, self.base, self.current = model, dict(offsets), base, None
        self.calls = 0  # batches scored with the offsets

    def __call__(self, preds, batch: dict):
        if self.base is None:
            self.base = self.model.init_criterion()
        _wrap_assigners(self.base, self)
        texts = batch.get("texts")
        if texts is None:
            raise KeyError("--balanced-loss needs the batch's prompts (batch['texts']); a multi-modal training batch")
        self.current = prompt_offsets(texts, self.offsets)
        self.calls += 1
        try:
            return self.base(adjust_scores(preds, self.current), batch)
        finally:
            self.current = None

    def __getattr__(self, name: str):
        base = self.__dict__.get("base")
        if base is None:
            raise AttributeError(name)
        return getattr(base, name)


def installed(criterion) -> bool:
    """True when `criterion` is an AdjustedDetectionLoss or wraps one (e.g. prompt tuning's PulledLoss over it)."""
    while criterion is not None:
        if isinstance(criterion, AdjustedDetectionLoss):
            return True
        criterion = getattr(criterion, "__dict__", {}).get("base")
    return False


class DetectorLogitAdjustment:
    """on_pretrain_routine_end callback of a DefectWorldTrainer / DefectYOLOETrainer: per class name, the offset from
    the training labels' instance counts, and the model's criterion wrapped (once). A plain object, so it travels
    to ultralytics' DDP workers with the other callbacks."""

    def __init__(self, tau: float = 1.0):
        self.tau = float(tau)
        self.offsets: dict[str, float] = {}

    def __call__(self, trainer) -> None:
        from ultralytics.utils import LOGGER
        from ultralytics.utils.torch_utils import unwrap_model

        names = [str(trainer.data["names"][i]) for i in range(len(trainer.data["names"]))]
        counts = instance_counts(trainer.train_loader.dataset.labels, len(names))
        self.offsets = dict(zip(names, log_prior_offsets(counts, self.tau).tolist()))
        model = unwrap_model(trainer.model)
        if not installed(getattr(model, "criterion", None)):
            model.criterion = AdjustedDetectionLoss(model, self.offsets, getattr(model, "criterion", None))
        LOGGER.info("balanced loss: logit adjustment (tau %g) of the class scores, offsets %s", self.tau,
                    {n: round(o, 3) for n, o in self.offsets.items()})
        trainer.logit_adjustment = {"tau": self.tau, "counts": dict(zip(names, counts.tolist())),
                                    "offsets": self.offsets}


def detector_callbacks(balanced_loss: bool, tau: float = 1.0) -> dict[str, list]:
    """The trainer callbacks that turn `balanced_loss` on ({} when off): what finetune_detector's `callbacks` takes."""
    return {"on_pretrain_routine_end": [DetectorLogitAdjustment(tau)]} if balanced_loss else {}
