"""ultralytics' WorldTrainer with the class embeddings supplied (no CLIP download) and optional class-balanced sampling."""
from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from finetune.offline import go_offline, strip_network_callbacks

go_offline()

from ultralytics.data.build import InfiniteDataLoader, seed_worker  # noqa: E402
from ultralytics.models.yolo.world import train as world_train  # noqa: E402
from ultralytics.models.yolo.world.train import WorldTrainer  # noqa: E402
from ultralytics.utils import DEFAULT_CFG, LOGGER  # noqa: E402
from ultralytics.utils.torch_utils import unwrap_model  # noqa: E402


def set_class_embeddings(model: torch.nn.Module, names: Sequence[str], embeddings: torch.Tensor) -> None:
    """Bake class names and their (N, 512) text embeddings into a WorldModel (what `set_classes` does, minus CLIP)."""
    if embeddings.ndim != 2 or embeddings.shape[0] != len(names):
        raise ValueError(f"need one embedding row per class name: got {tuple(embeddings.shape)} for {len(names)} names")
    model.txt_feats = embeddings.detach().float().reshape(1, len(names), -1).clone()
    model.model[-1].nc = len(names)
    model.names = dict(enumerate(names))


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


class DefectWorldTrainer(WorldTrainer):
    """WorldTrainer fed with precomputed class embeddings; never calls `WorldModel.get_text_pe` (CLIP download)."""

    def __init__(self, cfg=DEFAULT_CFG, overrides: dict | None = None, _callbacks: dict | None = None, *,
                 class_embeddings: dict[str, torch.Tensor], balanced: bool = False):
        super().__init__(cfg, overrides, _callbacks)
        self.class_embeddings = {k: v.detach().float().cpu() for k, v in class_embeddings.items()}
        self.balanced = balanced
        self.sampler: RepeatFactorSampler | None = None
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

    def get_model(self, cfg=None, weights=None, verbose: bool = True):
        model = super().get_model(cfg, weights, verbose)
        # ultralytics' callback calls ema.set_classes(names) -> get_text_pe -> CLIP download: replace it
        hooks = self.callbacks["on_pretrain_routine_end"]
        self.callbacks["on_pretrain_routine_end"] = [f for f in hooks if f is not world_train.on_pretrain_routine_end]
        if _bake_ema not in self.callbacks["on_pretrain_routine_end"]:
            self.add_callback("on_pretrain_routine_end", _bake_ema)
        set_class_embeddings(model, self._names(), self._embedding_matrix())
        return model

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


def _bake_ema(trainer: DefectWorldTrainer) -> None:
    """on_pretrain_routine_end: the EMA model (validated and saved) gets the class names and embeddings."""
    set_class_embeddings(unwrap_model(trainer.ema.ema), trainer._names(), trainer._embedding_matrix())
