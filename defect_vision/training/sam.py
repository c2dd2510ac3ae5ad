"""Fine-tune SAM's mask decoder on defect box prompts, reading image embeddings from an fp16 disk cache.

`finetune_sam(SamTrainConfig(...))` (CLI: `defect-vision train-sam`, DDP under torchrun). Epoch 0 validates the
start model; the best checkpoint is chosen by val mask IoU including epoch 0.
"""
from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DistributedSampler

from defect_vision.errors import DatasetError
from defect_vision.io import remove_stale_temps
from defect_vision.models.sam_family import ops_for
from defect_vision.training.sam_checkpoints import (
    Checkpointer,
    EpochHistory,
    Start,
    load_start,
    resume_training_state,
)
from defect_vision.training.sam_config import SamTrainConfig
from defect_vision.training.sam_data import PromptSet, load_prompts
from defect_vision.training.sam_dist import Dist, init_distributed
from defect_vision.training.sam_embeddings import EmbeddingCache, ResidentEmbeddings
from defect_vision.training.sam_steps import (
    PromptedDecoder,
    Samples,
    evaluate,
    step_dtype,
    train_epoch,
)

StepHook = Callable[[int, int], None]  # (epoch, step): called after every optimizer step (tests interrupt with it)


def load_data(config: SamTrainConfig) -> tuple[PromptSet, PromptSet]:
    """prompts_train.json and prompts_val.json, each with at least one instance."""
    sets = tuple(load_prompts(config.prompts / f"prompts_{split}.json") for split in ("train", "val"))
    for ps, what in zip(sets, ("train", "validate")):
        if not ps.with_instances:
            raise DatasetError(f"{ps.path}: no defect instances to {what} on")
    return sets


def trainable_parameters(sam: torch.nn.Module, train_prompt_encoder: bool) -> list[torch.nn.Parameter]:
    """Freeze everything but the mask decoder (and the prompt encoder when asked; SAM 2: less the decoder's
    high-resolution projections, whose outputs are cached); the parameters that train."""
    for prm in sam.parameters():
        prm.requires_grad_(False)
    params = ops_for(sam).trainable(train_prompt_encoder)
    for prm in params:
        prm.requires_grad_(True)
    return params


def build_optimizer(params: list[torch.nn.Parameter], config: SamTrainConfig, steps_per_epoch: int,
                    device: torch.device) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR, torch.amp.GradScaler]:
    """AdamW, linear warm-up (config.warmup of all steps) then cosine to 0, and a GradScaler (active on CUDA). On
    CUDA AdamW is the fused kernel, which takes the scaler's inf check on the device: a step without host sync."""
    total = max(1, steps_per_epoch * config.epochs)
    warmup = max(1, round(config.warmup * total))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, fused=device.type == "cuda" or None)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return optimizer, scheduler, torch.amp.GradScaler("cuda", enabled=device.type == "cuda")


@dataclass
class Session:
    """A set-up fine-tune: data, model, cache, optimizer and run folder; one method per thing an epoch does."""

    config: SamTrainConfig
    d: Dist
    run: Checkpointer
    start: Start
    train_set: PromptSet
    val_set: PromptSet
    train: Samples
    val: Samples
    cache: EmbeddingCache
    resident: ResidentEmbeddings  # the cache's embeddings held on the training device
    encoder_calls: int  # over all ranks
    decoder: PromptedDecoder
    model: torch.nn.Module  # the decoder, DDP-wrapped under torchrun
    sampler: DistributedSampler
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler

    def embed(self, path: Path) -> torch.Tensor:
        return self.resident(path)

    def train_epoch(self, epoch: int, on_step: StepHook | None = None) -> float:
        """One epoch (shuffling and box jitter seeded by seed, epoch and rank); mean loss per instance, all ranks."""
        self.sampler.set_epoch(epoch)
        rng = np.random.default_rng([self.config.seed, epoch, self.d.rank])
        loss = train_epoch(self.model, self.train, list(self.sampler), self.embed, self.optimizer, self.scheduler,
                           self.scaler, rng, self.config, self.d.device, bar=self.d.main and not self.config.quiet,
                           on_step=partial(on_step, epoch) if on_step else None)
        return self.d.sum(loss)[0] / self.d.world

    def validate(self) -> float:
        """Mean per-instance val mask IoU (each rank takes every world-th image)."""
        indices = list(range(self.d.rank, len(self.val), self.d.world))
        total, n = self.d.sum(*evaluate(self.start.sam, self.decoder, self.val, indices, self.embed, self.config,
                                        self.d.device))
        return total / max(n, 1)

    def summary(self, progress: EpochHistory) -> dict:
        """What best.json holds."""
        c = self.config
        return {
            "model_type": c.model_type, "weights": self.start.weights, "checkpoint": self.start.checkpoint,
            "data": {"prompts": str(c.prompts), "category": c.category,
                     "train_images": len(self.train), "train_instances": self.train_set.num_instances,
                     "val_images": len(self.val), "val_instances": self.val_set.num_instances},
            "epochs": progress.epoch, "val_iou_start": progress.history[0]["val_iou"], "val_iou_best": progress.best_iou,
            "best_epoch": progress.best_epoch, "history": progress.history, "encoder_calls": self.encoder_calls,
            "cache_dir": str(self.cache.dir), "cache_maps": list(self.cache.ops.names),
            "cache_mb_per_image": round(self.cache.megabytes_per_image(), 3), "train_prompt_encoder": c.train_prompt_encoder, "points": c.points,
            "multimask": c.multimask, "lr": c.lr, "seed": c.seed, "world_size": self.d.world,
        }

    def commit(self, progress: EpochHistory, improved: bool) -> None:
        """Write the epoch's checkpoints, best.json and (last) resume.pt."""
        self.run.save(self.start.sam, progress, self.summary(progress), improved, {
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(), "weights": self.start.weights, "checkpoint": self.start.checkpoint,
            "config": self.config.resume_settings()})


def set_up(config: SamTrainConfig, d: Dist) -> tuple[Session, dict | None]:
    """Read the prompts, check the run folder, load the start (or resumed) model, fill the embedding cache and
    build the optimizer; (session, resume.pt or None). Nothing is written before every input has been checked."""
    train_set, val_set = load_data(config)
    run = Checkpointer(config.out, d)
    resume = run.read_resume(config)
    if resume is None:
        run.check_new(config)
    start = load_start(config, resume, d.main)
    d.barrier()  # every rank has checked the folder before rank 0 writes to it
    run.open(new=resume is None)
    sam, device = start.sam.to(d.device), d.device
    params = trainable_parameters(sam, config.train_prompt_encoder)

    # embeddings: each rank encodes its share of the distinct images once, then everyone reads the cache
    cache = EmbeddingCache(config.cache_dir, sam, config.model_type)
    if d.main:
        remove_stale_temps(cache.dir)
    train, val = Samples(train_set, sam), Samples(val_set, sam)
    paths = list(dict.fromkeys(train.paths + val.paths))
    cache.ensure(paths[d.rank :: d.world], device, progress=d.main and not config.quiet)
    d.barrier()
    encoder_calls = int(d.sum(cache.encoder_calls)[0])
    resident = ResidentEmbeddings(cache, device, step_dtype(device) or torch.float32, int(config.resident_mb * 2**20))

    decoder = PromptedDecoder(sam)
    model = decoder if d.world == 1 else torch.nn.parallel.DistributedDataParallel(
        decoder, device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=config.train_prompt_encoder or decoder.ops.family == "sam2")  # SAM 2: object-score head
    sampler = DistributedSampler(range(len(train)), num_replicas=d.world, rank=d.rank, shuffle=True, seed=config.seed)
    optimizer, scheduler, scaler = build_optimizer(params, config, math.ceil(len(sampler) / config.batch_images), device)
    session = Session(config, d, run, start, train_set, val_set, train, val, cache, resident, encoder_calls, decoder,
                      model, sampler, optimizer, scheduler, scaler)
    return session, resume


def finetune_sam(config: SamTrainConfig, on_step: StepHook | None = None) -> dict:
    """The whole fine-tune (DDP when launched by torchrun); returns what best.json holds."""
    d = init_distributed(config.device)
    try:
        s, resume = set_up(config, d)
        if resume is not None:
            progress = resume_training_state(s.optimizer, s.scheduler, s.scaler, resume)
        else:  # epoch 0: the start model on val; the best checkpoint can only get better than this
            t0, progress = time.perf_counter(), EpochHistory()
            progress.add(0, None, s.validate(), time.perf_counter() - t0)
            s.commit(progress, improved=True)
            log(d, f"epoch 0/{config.epochs}: val mask IoU of the start model {progress.best_iou:.4f}")
        for epoch in range(progress.epoch + 1, config.epochs + 1):
            t0 = time.perf_counter()
            loss = s.train_epoch(epoch, on_step)
            iou = s.validate()
            s.commit(progress, progress.add(epoch, loss, iou, time.perf_counter() - t0))
            log(d, f"epoch {epoch}/{config.epochs}: loss {loss:.4f}, val mask IoU {iou:.4f} "
                   f"(best {progress.best_iou:.4f} @ {progress.best_epoch})")
        d.barrier()
        return s.summary(progress)
    finally:
        d.close()


def log(d: Dist, msg: str) -> None:
    if d.main:
        print(msg, file=sys.stderr)
