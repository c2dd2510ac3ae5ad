"""ultralytics' WorldTrainer with the class embeddings supplied (no CLIP download), optional class-balanced sampling,
and checkpoints that survive a kill -9: last.pt/best.pt are written to a temporary file and renamed (ultralytics
writes them in place, so a kill inside the write left a truncated file and lost every finished epoch)."""
from __future__ import annotations

import math
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from defect_vision.io import atomic_path, replace_durably, temp_name, torch_save
from defect_vision.models.detector import YOLOE, bake_text, model_family
from defect_vision.offline import go_offline, strip_network_callbacks
from defect_vision.training import prompt_tuning
from defect_vision.training.detector_errors import relayed

go_offline()

from ultralytics.data.build import InfiniteDataLoader, seed_worker  # noqa: E402
from ultralytics.models.yolo.detect import DetectionTrainer  # noqa: E402
from ultralytics.models.yolo.world import train as world_train  # noqa: E402
from ultralytics.models.yolo.world.train import WorldTrainer  # noqa: E402
from ultralytics.utils import DEFAULT_CFG, LOCAL_RANK, LOGGER, RANK  # noqa: E402
from ultralytics.utils.torch_utils import (  # noqa: E402
    strip_optimizer,
    torch_distributed_zero_first,
    unwrap_model,
)


def set_class_embeddings(model: torch.nn.Module, names: Sequence[str], embeddings: torch.Tensor) -> None:
    """Bake class names and their (N, 512) text embeddings into a WorldModel or a YOLOE model (what `set_classes`
    does, minus the text model; YOLOE's go through its head's current projection)."""
    if embeddings.ndim != 2 or embeddings.shape[0] != len(names):
        raise ValueError(f"need one embedding row per class name: got {tuple(embeddings.shape)} for {len(names)} names")
    bake_text(model, list(names), embeddings)


def repeat_factors(labels: Sequence[np.ndarray], nc: int, threshold: float | None = None) -> np.ndarray:
    """LVIS repeat factor per image: max over its classes of max(1, sqrt(t / f_c)), f_c = share of images with class c.

    `t` defaults to the frequency of the most common class, so that class is not repeated and rarer ones are
    repeated sqrt(f_max / f_c) times. Background (good) images get 1.
    """
    n = len(labels)
    has = np.zeros((n, nc), bool)
    for i, cls in enumerate(labels):
        has[i, np.asarray(cls, int).ravel()] = True
    freq = has.sum(0) / max(n, 1)
    t = float(freq.max()) if threshold is None else threshold
    per_class = np.where(freq > 0, np.maximum(1.0, np.sqrt(t / np.maximum(freq, 1e-12))), 1.0)
    return np.array([per_class[row].max() if row.any() else 1.0 for row in has])


class RepeatFactorSampler(torch.utils.data.Sampler[int]):
    """Each pass: image i appears floor(r_i) or ceil(r_i) times (stochastic rounding), shuffled; fixed length."""

    def __init__(self, factors: np.ndarray, seed: int = 0):
        self.factors = np.asarray(factors, float)
        self.seed = seed
        self.epoch = 0
        self.length = int(round(self.factors.sum()))

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng(self.seed + self.epoch)
        self.epoch += 1
        whole = np.floor(self.factors).astype(int)
        reps = whole + (rng.random(len(self.factors)) < self.factors - whole)
        idx = np.repeat(np.arange(len(self.factors)), reps)
        rng.shuffle(idx)
        if len(idx) < self.length:  # keep the promised length
            idx = np.concatenate([idx, rng.choice(len(self.factors), self.length - len(idx), p=self.factors / self.factors.sum())])
        return iter(idx[: self.length].tolist())


# --- checkpoints that a kill cannot truncate ---
def copy_atomic(src: Path, target: Path) -> None:
    with atomic_path(target, durable=True) as tmp:
        shutil.copyfile(src, tmp)


def save_atomic(obj: object, target: Path) -> None:
    torch_save(obj, target, durable=True)


def load_checkpoint_dict(path: Path) -> dict | None:
    """The checkpoint dict at `path`, or None when it is missing or unreadable (e.g. truncated by a kill)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception:  # noqa: BLE001 - EOFError, RuntimeError (zip), UnpicklingError...: all mean "not usable"
        return None
    usable = isinstance(ckpt, dict) and (ckpt.get("ema") is not None or ckpt.get("model") is not None)
    return ckpt if usable else None


class _Unreadable(Exception):
    pass


def strip_optimizer_atomic(path: Path, updates: dict | None = None) -> dict:
    """ultralytics' strip_optimizer (final checkpoint: EMA as model, fp16, no optimizer), but written through a
    temporary file: ultralytics rewrites the file in place. {} when `path` is not a readable checkpoint."""
    try:
        with atomic_path(Path(path), durable=True) as tmp:
            ckpt = strip_optimizer(path, s=str(tmp), updates=updates)
            if not ckpt:
                raise _Unreadable
    except _Unreadable:
        return {}
    return ckpt


class ClassEmbeddings:
    """on_pretrain_routine_end callback: bakes the class names and embeddings into the EMA model (the one that is
    validated and saved). It also carries the embeddings and the sampling choice through ultralytics' DDP rebuild:
    each DDP worker builds the trainer as `Trainer(cfg=, overrides=, _callbacks=)` from the pickled callbacks, and
    this object is one of them."""

    def __init__(self, class_embeddings: dict[str, torch.Tensor], balanced: bool = False, tune: dict | None = None):
        self.class_embeddings = {str(k): v.detach().float().cpu() for k, v in class_embeddings.items()}
        self.balanced = bool(balanced)
        self.tune = dict(tune) if tune else None  # prompt tuning: {"reg": float, "only": bool}

    def __call__(self, trainer: DefectWorldTrainer) -> None:
        ema = unwrap_model(trainer.ema.ema)
        set_class_embeddings(ema, trainer._names(), trainer._embedding_matrix())
        if self.tune:
            prompt_tuning.bake(ema)  # on resume the EMA's table holds the tuned embeddings


class DefectWorldTrainer(WorldTrainer):
    """WorldTrainer fed with precomputed class embeddings; never calls `WorldModel.get_text_pe` (CLIP download).

    `class_embeddings` is required, except when the trainer is rebuilt the way ultralytics' DDP workers do it
    (`DefectWorldTrainer(cfg=..., overrides=..., _callbacks=...)` with the callbacks of a DefectWorldTrainer):
    the embeddings then come from its ClassEmbeddings callback."""

    def __init__(self, cfg=DEFAULT_CFG, overrides: dict | None = None, _callbacks: dict | None = None, *,
                 class_embeddings: dict[str, torch.Tensor] | None = None, balanced: bool | None = None,
                 tune_prompts: dict | None = None):
        if class_embeddings is not None:
            carrier = ClassEmbeddings(class_embeddings, bool(balanced), tune_prompts)
        else:
            carrier = next((f for f in (_callbacks or {}).get("on_pretrain_routine_end", [])
                            if isinstance(f, ClassEmbeddings)), None)
            if carrier is None:
                raise TypeError("DefectWorldTrainer needs class_embeddings= (or the callbacks of a DefectWorldTrainer, "
                                "as ultralytics' DDP workers pass them)")
            if balanced is not None:
                carrier = ClassEmbeddings(carrier.class_embeddings, balanced, carrier.tune)
        super().__init__(cfg, overrides, _callbacks)
        self.class_embeddings = carrier.class_embeddings
        self.balanced = carrier.balanced
        self.tune = carrier.tune  # None: embeddings frozen (the default)
        self.sampler: RepeatFactorSampler | None = None
        hooks = [f for f in self.callbacks["on_pretrain_routine_end"] if not isinstance(f, ClassEmbeddings)]
        self.callbacks["on_pretrain_routine_end"] = [*hooks, carrier]
        strip_network_callbacks(self)

    # --- text embeddings: supplied, never generated ---
    def _names(self) -> list[str]:
        return [str(n) for n in self.data["names"].values()]

    def _embedding_matrix(self) -> torch.Tensor:
        missing = [n for n in self._names() if n not in self.class_embeddings]
        if missing:
            raise KeyError(f"no text embedding for class(es) {missing}")
        return torch.stack([self.class_embeddings[n] for n in self._names()])

    def generate_text_embeddings(self, texts: list[str], batch: int, cache_dir) -> dict[str, torch.Tensor]:
        missing = [t for t in texts if t not in self.class_embeddings]
        if missing:
            raise KeyError(f"no text embedding for {missing}; class names must not contain '/'")
        return {t: self.class_embeddings[t].to(self.device) for t in texts}

    def build_model(self, cfg=None, weights=None, verbose: bool = True):
        """The family's model (here YOLO-World's WorldModel), with `weights` loaded."""
        return super().get_model(cfg, weights, verbose)

    def get_model(self, cfg=None, weights=None, verbose: bool = True):
        model = self.build_model(cfg, weights, verbose)
        # ultralytics' callback calls ema.set_classes(names) -> get_text_pe -> CLIP download; ours (ClassEmbeddings,
        # added in __init__) bakes the supplied embeddings instead
        hooks = self.callbacks["on_pretrain_routine_end"]
        self.callbacks["on_pretrain_routine_end"] = [f for f in hooks if f is not world_train.on_pretrain_routine_end]
        set_class_embeddings(model, self._names(), self._embedding_matrix())
        if self.tune:
            table = prompt_tuning.attach_prompt_table(model, self._embedding_matrix(), self._names())
            previous = getattr(weights, prompt_tuning.ATTR, None) if isinstance(weights, torch.nn.Module) else None
            if previous is not None and previous.weight.shape == table.weight.shape:  # resume: the tuned values
                table.weight.data.copy_(previous.weight.detach().float())
            if self.tune.get("only"):  # YOLO-World's prompt tuning: backbone, neck and head frozen (BN in eval)
                self.args.freeze = list(range(len(model.model)))
        return model

    # --- prompt tuning: learnable class embeddings (training/prompt_tuning.py) ---
    def preprocess_batch(self, batch: dict) -> dict:
        if not self.tune:
            return super().preprocess_batch(batch)
        batch = DetectionTrainer.preprocess_batch(self, batch)
        model = unwrap_model(self.model)
        batch["txt_feats"] = prompt_tuning.batch_text_features(model, batch["texts"])
        if not isinstance(getattr(model, "criterion", None), prompt_tuning.PulledLoss):
            base = getattr(model, "criterion", None) or model.init_criterion()
            model.criterion = prompt_tuning.PulledLoss(base, model, self.tune.get("reg", 0.0))
        return batch

    def build_optimizer(self, model, *args, **kwargs):
        """ultralytics' optimizer, with the tuned embeddings in a group without weight decay (as YOLO-World's
        prompt-tuning config sets `embeddings: weight_decay 0`)."""
        optimizer = super().build_optimizer(model, *args, **kwargs)
        table = getattr(unwrap_model(model), prompt_tuning.ATTR, None)
        if self.tune and table is not None:
            for group in optimizer.param_groups:
                group["params"] = [p for p in group["params"] if p is not table.weight]
            no_decay = next((g for g in optimizer.param_groups if g.get("param_group") == "bn"),
                            next(g for g in optimizer.param_groups if not g.get("weight_decay")))
            no_decay["params"].append(table.weight)
        return optimizer

    def validate(self):
        if self.ema is not None:  # validate (and then save) the current class embeddings
            ema = unwrap_model(self.ema.ema)
            baked = bool(self.tune) and prompt_tuning.bake(ema)  # the tuned ones
            if not baked and model_family(ema) == YOLOE:  # YOLOE's projection (reprta) trains: project again
                set_class_embeddings(ema, self._names(), self._embedding_matrix())
        return super().validate()

    # --- checkpoints: atomic writes, a truncated best.pt never reaches the final validation ---
    def save_model(self) -> bool:
        """ultralytics' save_model, with last.pt and best.pt written to temporary files and renamed: a kill during
        the write leaves the previous epoch's checkpoint intact (and a stale temporary file, removed next run)."""
        last, best = self.last, self.best
        tmp_last, tmp_best = temp_name(last), temp_name(best)
        self.last, self.best = tmp_last, tmp_best
        try:
            saved = super().save_model()
            for tmp, target in ((tmp_last, last), (tmp_best, best)):  # last first: resume reads it
                if tmp.exists():
                    replace_durably(tmp, target)
        finally:
            self.last, self.best = last, best
            for tmp in (tmp_last, tmp_best):
                tmp.unlink(missing_ok=True)
        return saved

    def final_eval(self) -> None:
        """ultralytics' final_eval (strip the optimizer from last.pt and best.pt, validate best.pt), with the strips
        written atomically, and an unreadable best.pt replaced by last.pt (with a warning) instead of crashing."""
        model = None
        with torch_distributed_zero_first(LOCAL_RANK):  # strip only on GPU 0; the others wait
            if RANK in {-1, 0}:
                ckpt = strip_optimizer_atomic(self.last) if self.last.exists() else {}
                if self.best.exists() and load_checkpoint_dict(self.best) is not None:
                    strip_optimizer_atomic(self.best, updates={"train_results": ckpt.get("train_results")})
                elif ckpt:
                    LOGGER.warning(f"{self.best}: missing or unreadable (truncated?); the final model is "
                                   f"{self.last.name}, the last epoch's weights")
                    copy_atomic(self.last, self.best)
        if self.best.exists():
            model = self.best
        if model:
            LOGGER.info(f"\nValidating {model}...")
            self.validator.args.plots = self.args.plots
            self.validator.args.compile = False  # as ultralytics: final val compile is too slow
            self.metrics = self.validator(model=model)
            self.metrics.pop("fitness", None)
            self.epoch += 1  # log best metrics at step epochs+1, not overwriting last epoch
            self.run_callbacks("on_fit_epoch_end")
            self.epoch -= 1

    # --- dataset errors: one plain line naming data.yaml, not a coloured traceback ---
    def get_dataset(self):
        with relayed(str(self.args.data)):
            return super().get_dataset()

    def build_dataset(self, img_path: str, mode: str = "train", batch: int | None = None):
        with relayed(str(self.args.data)):
            return super().build_dataset(img_path, mode, batch)

    # --- class-balanced sampling ---
    def get_dataloader(self, dataset_path: str, batch_size: int = 16, rank: int = 0, mode: str = "train"):
        if mode != "train" or not self.balanced:
            return super().get_dataloader(dataset_path, batch_size, rank, mode)
        if rank != -1:
            raise NotImplementedError("--balanced sampling is single-process only (no DDP)")
        dataset = self.build_dataset(dataset_path, mode, batch_size)
        factors = repeat_factors([lb["cls"] for lb in dataset.labels], len(self.data["names"]))
        self.sampler = RepeatFactorSampler(factors, seed=self.args.seed)
        LOGGER.info(f"class-balanced sampling: {len(factors)} images -> {len(self.sampler)} draws per epoch "
                    f"(repeat factors {factors.min():.2f}..{factors.max():.2f})")
        batches = math.ceil(len(self.sampler) / batch_size)
        workers = min(self.args.workers, 0 if batches <= 1 else batches)
        generator = torch.Generator().manual_seed(self.args.seed)
        return InfiniteDataLoader(dataset=dataset, batch_size=min(batch_size, len(self.sampler)), shuffle=False,
                                  num_workers=workers, sampler=self.sampler, collate_fn=dataset.collate_fn,
                                  worker_init_fn=seed_worker, generator=generator,
                                  pin_memory=self.device.type == "cuda")
