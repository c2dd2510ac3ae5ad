"""Fine-tune SAM's mask decoder on defect box prompts, reading image embeddings from an fp16 disk cache.

python -m finetune.sam --category wood [--model-type vit_b] ...   (or under torchrun for DDP)
Epoch 0 validates the start model; the best checkpoint is chosen by val mask IoU including epoch 0.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from segment_anything.modeling import Sam
from segment_anything.utils.transforms import ResizeLongestSide
from torch.utils.data import DistributedSampler
from tqdm import tqdm

from converters.errors import DatasetError
from converters.io import atomic_path, atomic_write_text
from finetune.sam_data import PromptSet, SamImage, jitter_boxes, load_prompts, lowres_target, padded_points
from finetune.sam_embeddings import EmbeddingCache
from finetune.sam_losses import mask_iou, sam_loss
from finetune.sam_model import MODEL_TYPES, CheckpointError, build_sam, default_checkpoint

RESUME_FILE = "resume.pt"
RESUME_KEYS = ("model_type", "epochs", "seed", "batch_images", "train_prompt_encoder")  # must match to --resume


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Show defaults, except empty ones (None, False)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False or action.required:
            return action.help or ""
        return super()._get_help_string(action)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m finetune.sam",
        description="Fine-tune SAM's mask decoder (image encoder frozen, embeddings cached on disk in fp16) on the "
        "box prompts of converters/mvtec_to_sam.py. Writes <out>/best.pth, last.pth (plain state_dicts that "
        "segment_anything.sam_model_registry[model_type](checkpoint=...) loads) and best.json. Runs under "
        "`torchrun --nproc_per_node N` with DDP.",
        epilog="scripts/finetune_sam.sh takes the same options; NPROC=N there runs N processes under torchrun "
        "(DDP: nccl on GPUs, gloo on CPU). --resume continues after the last finished epoch (resume.pt).",
        formatter_class=_Help,
    )
    p.add_argument("--category", required=True, help="MVTec category (names the default paths)")
    p.add_argument("--prompts", type=Path, help="folder with prompts_{train,val}.json (default: datasets/sam/<category>)")
    p.add_argument("--model-type", default="vit_b", choices=MODEL_TYPES, help="SAM size (vit_tiny: the project's small test config)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", type=Path, help="start weights (default: weights/<official file> of --model-type)")
    src.add_argument("--from-scratch", action="store_true", help="random-init SAM: smoke runs only, masks are meaningless")
    p.add_argument("--epochs", type=int, default=10, help="training epochs after the epoch-0 validation of the start model")
    p.add_argument("--lr", type=float, default=1e-4, help="AdamW peak learning rate")
    p.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay")
    p.add_argument("--warmup", type=float, default=0.05, help="linear warm-up, as a fraction of all steps (then cosine to 0)")
    p.add_argument("--clip-grad", type=float, default=1.0, help="gradient norm clipping (0: off)")
    p.add_argument("--batch-images", type=int, default=4, help="images per optimizer step (all instances of each image)")
    p.add_argument("--jitter", type=float, default=0.1, help="box noise std as a fraction of the box side")
    p.add_argument("--jitter-max", type=float, default=20.0, help="box noise clipped to this many pixels")
    p.add_argument("--points", action="store_true", help="also give the instance's point prompts with the box")
    p.add_argument("--train-prompt-encoder", action="store_true", help="train the prompt encoder too (default: frozen)")
    p.add_argument("--multimask", action="store_true", help="multimask_output=True; the loss takes each instance's best mask")
    p.add_argument("--mask-threshold", type=float, default=0.0, help="logit threshold for val masks (SamPredictor's)")
    p.add_argument("--device", default="auto", help="auto (cuda if available, fp16 autocast there), cpu, cuda, cuda:N")
    p.add_argument("--out", type=Path, help="output folder (default: runs/<category>/sam)")
    p.add_argument("--cache-dir", type=Path, help="embedding cache (default: runs/<category>/sam/embeddings)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out after its last finished epoch")
    p.add_argument("--seed", type=int, default=0, help="seed for init (--from-scratch), shuffling and box jitter")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    args.prompts = args.prompts or Path("datasets/sam") / args.category
    args.out = args.out or Path("runs") / args.category / "sam"
    args.cache_dir = args.cache_dir or args.out / "embeddings"
    if args.epochs < 0 or args.batch_images < 1:
        p.error("--epochs must be >= 0 and --batch-images >= 1")
    return args


# ---------------------------------------------------------------- distributed helpers
@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def sum(self, *values: float) -> list[float]:
        if self.world == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t)
        return t.tolist()


def init_distributed(device_arg: str) -> Dist:
    """DDP when launched by torchrun (WORLD_SIZE > 1): nccl on GPUs, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_arg != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Dist(rank, world, local)


def resolve_device(name: str, d: Dist) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and d.world > 1:
        name = f"cuda:{d.local_rank}"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    return torch.device(name)


# ---------------------------------------------------------------- model pieces
class PromptedDecoder(torch.nn.Module):
    """SAM's prompt encoder + mask decoder on a precomputed image embedding (the part that trains)."""

    def __init__(self, sam: Sam):
        super().__init__()
        self.prompt_encoder = sam.prompt_encoder
        self.mask_decoder = sam.mask_decoder

    def forward(self, embeddings: list[torch.Tensor], boxes: list[torch.Tensor],
                points: list[tuple[torch.Tensor, torch.Tensor] | None], multimask: bool = False) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per image (one forward call for a whole step, as DDP wants): embedding 1xCxgxg, boxes Nx4 in the
        input frame, optional points -> (low-res logits NxMx4gx4g, IoU predictions NxM)."""
        out = []
        for emb, box, pts in zip(embeddings, boxes, points):
            sparse, dense = self.prompt_encoder(points=pts, boxes=box, masks=None)
            out.append(self.mask_decoder(image_embeddings=emb, image_pe=self.prompt_encoder.get_dense_pe(),
                                         sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                         multimask_output=multimask))
        return out


class Samples:
    """Per-image prompts and targets of a prompt set, prepared once and kept in memory."""

    def __init__(self, prompts: PromptSet, sam: Sam):
        self.images = prompts.with_instances
        self.img_size = int(sam.image_encoder.img_size)
        self.low_res = int(sam.prompt_encoder.mask_input_size[0])
        self.transform = ResizeLongestSide(self.img_size)
        self._targets: dict[int, torch.Tensor] = {}
        self._masks: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.images)

    def target(self, im: SamImage) -> torch.Tensor:
        """N x low x low soft targets in the low-res logit frame."""
        if im.id not in self._targets:
            self._targets[im.id] = torch.from_numpy(np.stack([lowres_target(i.mask(), self.img_size, self.low_res) for i in im.instances]))
        return self._targets[im.id]

    def full_masks(self, im: SamImage) -> torch.Tensor:
        """N x H x W bool ground truth at original size."""
        if im.id not in self._masks:
            self._masks[im.id] = torch.from_numpy(np.stack([i.mask() for i in im.instances]))
        return self._masks[im.id]

    def prompts(self, im: SamImage, device: torch.device, rng: np.random.Generator | None, args) -> tuple:
        """(boxes Nx4, points or None) in the input frame; boxes jittered when rng is given."""
        boxes = np.array([i.box for i in im.instances], np.float64)
        if rng is not None:
            boxes = jitter_boxes(boxes, im.height, im.width, rng, args.jitter, args.jitter_max)
        size = (im.height, im.width)
        boxes_t = torch.as_tensor(self.transform.apply_boxes(boxes, size), dtype=torch.float32, device=device)
        points = None
        if args.points:
            coords, labels = padded_points(im.instances)
            points = (torch.as_tensor(self.transform.apply_coords(coords, size), dtype=torch.float32, device=device),
                      torch.as_tensor(labels, device=device))
        return boxes_t, points


EmbedFn = Callable[[Path], torch.Tensor]


def train_epoch(model: torch.nn.Module, samples: Samples, order: list[int], embed: EmbedFn, optimizer, scheduler,
                scaler, rng: np.random.Generator, args, device: torch.device, bar: bool = False,
                on_step: Callable[[int], None] | None = None) -> float:
    """One pass over `order` (image indices), `args.batch_images` images per step; mean loss per instance."""
    model.train()
    total, count = 0.0, 0
    steps = range(0, len(order), args.batch_images)
    for step, start in enumerate(tqdm(steps, desc="train", unit="step", disable=not bar, leave=False)):
        batch = [samples.images[i] for i in order[start : start + args.batch_images]]
        prompts = [samples.prompts(im, device, rng, args) for im in batch]
        n_inst = sum(len(im.instances) for im in batch)
        with torch.autocast("cuda", dtype=torch.float16, enabled=device.type == "cuda"):
            outputs = model([embed(im.path) for im in batch], [b for b, _ in prompts], [p for _, p in prompts], args.multimask)
            losses = [sam_loss(logits.float(), iou.float(), samples.target(im).to(device=device, dtype=torch.float32))
                      * len(im.instances) for im, (logits, iou) in zip(batch, outputs)]
            loss = torch.stack(losses).sum() / n_inst  # per-instance mean over all instances of the step
        count += n_inst
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if args.clip_grad > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], args.clip_grad)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        total += float(loss.detach()) * n_inst
        if on_step is not None:
            on_step(step)
    return total / max(count, 1)


@torch.no_grad()
def evaluate(sam: Sam, decoder: PromptedDecoder, samples: Samples, indices: list[int], embed: EmbedFn, args,
             device: torch.device) -> tuple[float, int]:
    """(sum of per-instance mask IoU at original resolution, number of instances) with exact GT boxes."""
    decoder.eval()
    total, n = 0.0, 0
    for idx in indices:
        im = samples.images[idx]
        boxes, points = samples.prompts(im, device, None, args)
        with torch.autocast("cuda", dtype=torch.float16, enabled=device.type == "cuda"):
            logits, iou = decoder([embed(im.path)], [boxes], [points], args.multimask)[0]
        if args.multimask:  # what SamPredictor users take: the mask with the highest predicted IoU
            logits = logits[torch.arange(len(logits)), iou.argmax(1)][:, None]
        input_size = samples.transform.get_preprocess_shape(im.height, im.width, samples.img_size)
        masks = sam.postprocess_masks(logits.float(), input_size, (im.height, im.width))[:, 0]
        total += float(mask_iou(masks, samples.full_masks(im).to(device).float(), args.mask_threshold).sum())
        n += len(im.instances)
    return total, n


# ---------------------------------------------------------------- checkpoints
def atomic_torch_save(obj, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def cpu_state(sam: torch.nn.Module) -> dict:
    return {k: v.detach().to("cpu").clone() for k, v in sam.state_dict().items()}


def warn(msg: str) -> None:
    print(f"\n{'!' * 78}\nWARNING: {msg}\n{'!' * 78}\n", file=sys.stderr)


def start_model(args, d: Dist) -> tuple[Sam, str, str | None]:
    """(model, weights kind, checkpoint path) of the start model."""
    torch.manual_seed(args.seed)
    if args.from_scratch:
        if d.main:
            warn(f"--from-scratch: {args.model_type} SAM with RANDOM weights. The masks will be meaningless; "
                 "use this for smoke tests only, never for results.")
        return build_sam(args.model_type, None), "random-init", None
    if args.checkpoint is None and args.model_type == "vit_tiny":
        raise ValueError("vit_tiny has no official checkpoint: pass --checkpoint PATH or --from-scratch")
    ckpt = args.checkpoint or default_checkpoint(args.model_type)
    return build_sam(args.model_type, ckpt), inherited_weights(Path(ckpt)), str(ckpt)


def inherited_weights(ckpt: Path) -> str:
    """"official", or what the best.json beside a checkpoint of ours says (a random-init run stays random-init)."""
    info = ckpt.with_name("best.json")
    try:
        return "random-init" if json.loads(info.read_text()).get("weights") == "random-init" else "official"
    except (OSError, ValueError, AttributeError):
        return "official"


def run(args: argparse.Namespace, on_step: Callable[[int, int], None] | None = None) -> dict:
    """The whole fine-tune; returns what best.json holds. `on_step(epoch, step)` is a hook for tests."""
    d = init_distributed(args.device)
    device = resolve_device(args.device, d)
    train_set = load_prompts(args.prompts / "prompts_train.json")
    val_set = load_prompts(args.prompts / "prompts_val.json")
    if not train_set.with_instances:
        raise DatasetError(f"{train_set.path}: no defect instances to train on")
    if not val_set.with_instances:
        raise DatasetError(f"{val_set.path}: no defect instances to validate on")

    resume_path = args.out / RESUME_FILE
    state = torch.load(resume_path, map_location="cpu", weights_only=True) if args.resume and resume_path.is_file() else None
    if args.resume and state is None and d.main:
        print(f"note: {resume_path} not found; starting a new run", file=sys.stderr)
    if state is not None:
        for key in RESUME_KEYS:
            started = state["config"].get(key, getattr(args, key))
            if started != getattr(args, key):
                raise ValueError(f"{resume_path}: run was started with --{key.replace('_', '-')} {started}, not {getattr(args, key)}")
        sam = build_sam(args.model_type, args.out / "last.pth")  # the frozen encoder; trained parts from resume.pt
        for name in ("mask_decoder", "prompt_encoder"):
            if name in state:  # resume.pt is the commit point: last.pth may already hold the next, unfinished epoch
                getattr(sam, name).load_state_dict(state[name])
        weights, checkpoint = state["weights"], state["checkpoint"]
    else:
        sam, weights, checkpoint = start_model(args, d)
    sam.to(device)
    for prm in sam.parameters():
        prm.requires_grad_(False)
    trainable = list(sam.mask_decoder.parameters()) + (list(sam.prompt_encoder.parameters()) if args.train_prompt_encoder else [])
    for prm in trainable:
        prm.requires_grad_(True)

    # embeddings: each rank encodes its share of the distinct images once, then everyone reads the cache
    cache = EmbeddingCache(args.cache_dir, sam, args.model_type)
    train, val = Samples(train_set, sam), Samples(val_set, sam)
    paths = list(dict.fromkeys(im.path for im in train.images + val.images))
    cache.ensure(paths[d.rank :: d.world], device, progress=d.main and not args.quiet)
    d.barrier()
    encoder_calls = int(d.sum(cache.encoder_calls)[0])

    def embed(path: Path) -> torch.Tensor:
        return cache.get(path, device)

    decoder = PromptedDecoder(sam)
    model = decoder
    if d.world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            decoder, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=args.train_prompt_encoder)
    sampler = DistributedSampler(range(len(train)), num_replicas=d.world, rank=d.rank, shuffle=True, seed=args.seed)
    steps_per_epoch = math.ceil(len(sampler) / args.batch_images)
    total_steps = max(1, steps_per_epoch * args.epochs)
    warmup = max(1, round(args.warmup * total_steps))
    optimizer = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: (s + 1) / warmup if s < warmup else
                                                  0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, total_steps - warmup))))
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    val_idx = list(range(d.rank, len(val), d.world))

    def validate() -> float:
        s, n = d.sum(*evaluate(sam, decoder, val, val_idx, embed, args, device))
        return s / max(n, 1)

    def record(epoch: int, loss: float | None, iou: float, seconds: float) -> None:
        history.append({"epoch": epoch, "train_loss": loss, "val_iou": iou, "seconds": round(seconds, 3)})

    def summary() -> dict:
        return {
            "model_type": args.model_type, "weights": weights, "checkpoint": checkpoint,
            "data": {"prompts": str(args.prompts), "category": args.category,
                     "train_images": len(train), "train_instances": train_set.num_instances,
                     "val_images": len(val), "val_instances": val_set.num_instances},
            "epochs": history[-1]["epoch"], "val_iou_start": history[0]["val_iou"], "val_iou_best": best_iou,
            "best_epoch": best_epoch, "history": history, "encoder_calls": encoder_calls,
            "cache_dir": str(cache.dir), "train_prompt_encoder": args.train_prompt_encoder, "points": args.points,
            "multimask": args.multimask, "lr": args.lr, "seed": args.seed, "world_size": d.world,
        }

    def save(epoch: int, improved: bool) -> None:
        if d.main:
            args.out.mkdir(parents=True, exist_ok=True)
            weights_now = cpu_state(sam)
            if improved:
                atomic_torch_save(weights_now, args.out / "best.pth")
            atomic_torch_save(weights_now, args.out / "last.pth")
            atomic_write_text(args.out / "best.json", json.dumps(summary(), indent=2) + "\n")
            atomic_torch_save({"epoch": epoch, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                               "scaler": scaler.state_dict(), "best_iou": best_iou, "best_epoch": best_epoch,
                               "history": history, "weights": weights, "checkpoint": checkpoint,
                               "mask_decoder": cpu_state(sam.mask_decoder), "prompt_encoder": cpu_state(sam.prompt_encoder),
                               "config": {key: getattr(args, key) for key in RESUME_KEYS}},
                              args.out / RESUME_FILE)  # written last: the commit point of the epoch
        d.barrier()

    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        history, best_iou, best_epoch, first = state["history"], state["best_iou"], state["best_epoch"], state["epoch"] + 1
    else:  # epoch 0: the start model on val; the best checkpoint can only get better than this
        t0 = time.perf_counter()
        history, first = [], 1
        best_iou, best_epoch = validate(), 0
        record(0, None, best_iou, time.perf_counter() - t0)
        save(0, improved=True)
        if d.main:
            print(f"epoch 0/{args.epochs}: val mask IoU of the start model {best_iou:.4f}", file=sys.stderr)

    for epoch in range(first, args.epochs + 1):
        t0 = time.perf_counter()
        sampler.set_epoch(epoch)
        rng = np.random.default_rng([args.seed, epoch, d.rank])
        hook = (lambda step, e=epoch: on_step(e, step)) if on_step else None
        loss = train_epoch(model, train, list(sampler), embed, optimizer, scheduler, scaler, rng, args, device,
                           bar=d.main and not args.quiet, on_step=hook)
        loss = d.sum(loss)[0] / d.world
        iou = validate()
        improved = iou > best_iou
        if improved:
            best_iou, best_epoch = iou, epoch
        record(epoch, loss, iou, time.perf_counter() - t0)
        save(epoch, improved)
        if d.main:
            print(f"epoch {epoch}/{args.epochs}: loss {loss:.4f}, val mask IoU {iou:.4f} (best {best_iou:.4f} @ {best_epoch})",
                  file=sys.stderr)
    result = summary()
    if d.world > 1:
        d.barrier()
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = run(args)
    except (DatasetError, CheckpointError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. --out or --cache-dir not writable
        print(f"error: {exc.filename or args.out}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"sam: {result['model_type']} ({result['weights']}) {result['epochs']} epochs, val mask IoU "
              f"{result['val_iou_start']:.4f} -> {result['val_iou_best']:.4f} (best epoch {result['best_epoch']}), "
              f"encoder ran {result['encoder_calls']}x for {result['data']['train_images'] + result['data']['val_images']} images, "
              f"-> {args.out / 'best.pth'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
