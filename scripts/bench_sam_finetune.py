"""Benchmark: SAM fine-tune epoch time with the fp16 embedding cache vs recomputing the image encoder each step.

python scripts/bench_sam_finetune.py [--model-type vit_b] [--images 4] [--size 1024] [--device auto]
Prints a table: cold-cache encode time; a cached epoch (what training runs: embeddings resident on the device after
their first read) against its floor (the same decoder forward+backward steps with every embedding already in
memory; target <= 1.2x), an epoch reading the cache file every step, an epoch without cache; encoder calls per
image, cache MB per image. Epochs are timed after one untimed warm-up epoch, --epochs times each, interleaved, and
the best of each is reported (the machine may be shared). Random-init weights unless --checkpoint (timings do not
depend on the weights).
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from defect_vision.cli.common import parser, run_command
from defect_vision.cli.convert import main as convert
from defect_vision.data.images import read_image
from defect_vision.data.synthetic import make_category
from defect_vision.devices import resolve_device, synchronize
from defect_vision.errors import DatasetError
from defect_vision.models.sam import MODEL_TYPES, build_random_sam, load_sam
from defect_vision.training.sam import trainable_parameters
from defect_vision.training.sam_config import SamTrainConfig
from defect_vision.training.sam_data import load_prompts
from defect_vision.training.sam_embeddings import EmbeddingCache, ResidentEmbeddings
from defect_vision.training.sam_steps import (
    PromptedDecoder,
    Samples,
    step_dtype,
    train_epoch,
)


def main(argv: list[str] | None = None) -> int:
    p = parser("scripts/bench_sam_finetune.py", __doc__.splitlines()[0])
    p.add_argument("--model-type", default="vit_b", choices=MODEL_TYPES, help="SAM size to time")
    p.add_argument("--checkpoint", type=Path, help="weights to load (default: random init)")
    p.add_argument("--images", type=int, default=4, help="training images per epoch")
    p.add_argument("--size", type=int, default=1024, help="side of the synthetic images (MVTec wood: 1024)")
    p.add_argument("--epochs", type=int, default=3, help="timed epochs of each kind (the best is reported)")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic images and the random init")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    sam = (load_sam(args.checkpoint, args.model_type) if args.checkpoint else build_random_sam(args.model_type, args.seed)).to(device)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_category(tmp / "root", "bench", size=args.size, per_defect=max(2, args.images), good_train=1, good_test=1,
                      combined=0, seed=args.seed)
        if convert(["--category", "bench", "--root", str(tmp / "root"), "--out", str(tmp / "sam"), "--splits",
                    str(tmp / "split.json"), "--split", "0.8", "0.1", "0.1", "--no-progress"], fmt="sam") != 0:
            raise DatasetError(f"{tmp / 'sam'}: the synthetic category's SAM export failed (see above)")
        prompts = load_prompts(tmp / "sam" / "prompts_train.json")
        prompts.images = prompts.with_instances[: args.images]
        samples = Samples(prompts, sam)
        cache = EmbeddingCache(tmp / "cache", sam, args.model_type)
        config = SamTrainConfig(tmp / "sam", tmp / "run", model_type=args.model_type, batch_images=1)
        decoder = PromptedDecoder(sam)
        optimizer = torch.optim.AdamW(trainable_parameters(sam, train_prompt_encoder=False), lr=1e-5,
                                      fused=device.type == "cuda" or None)  # as training builds it
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)  # a constant rate: timings only
        scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
        order = list(range(len(samples)))
        for det in samples.images:  # targets and hashes prepared outside the timings
            samples.target(det, device)
            cache.key_of(det.image.path)
        dtype = step_dtype(device) or torch.float32

        def epoch(embed) -> float:
            synchronize(device)
            t0 = time.perf_counter()
            train_epoch(decoder, samples, order, embed, optimizer, scheduler, scaler, np.random.default_rng(0), config, device)
            synchronize(device)
            return time.perf_counter() - t0

        t0 = time.perf_counter()
        cache.ensure(samples.paths, device, progress=True)
        synchronize(device)
        cold = time.perf_counter() - t0
        cold_calls = cache.encoder_calls
        resident = ResidentEmbeddings(cache, device, dtype, budget_bytes=1 << 40)  # what training reads through
        epoch(resident)  # untimed warm-up: first backward, optimizer state, allocator; fills the resident set
        in_memory = {path: cache.get(path, device, dtype) for path in samples.paths}  # the floor's embeddings
        cached, floor, disk = [], [], []
        for _ in range(args.epochs):  # interleaved, so a busy moment of a shared machine hits every kind
            floor.append(epoch(in_memory.__getitem__))
            cached.append(epoch(resident))
            disk.append(epoch(lambda path: cache.get(path, device, dtype)))
        warm_calls = cache.encoder_calls - cold_calls
        images = {path: read_image(path) for path in samples.paths}
        before = cache.encoder_calls
        uncached = epoch(lambda path: cache.encode(images[path], device))
        uncached_calls = cache.encoder_calls - before
        mb = cache.megabytes_per_image()

    n = len(samples)
    t_cached, t_floor, t_disk = min(cached), min(floor), min(disk)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    rows = [
        ("model / device", f"{args.model_type} / {gpu}"),
        ("images x instances", f"{n} x {samples_total(samples)} ({args.size} px)"),
        ("cold cache: encode all images", f"{cold:.2f} s ({cold / n:.3f} s/image, {cold_calls / n:.0f} encoder call/image)"),
        ("epoch with cache", f"{t_cached:.3f} s (best of {args.epochs}; {warm_calls} encoder calls; "
                             f"embeddings resident on the device)"),
        ("floor: same steps, embeddings in memory", f"{t_floor:.3f} s (best of {args.epochs})"),
        ("cached epoch / floor (target <= 1.2)", f"{t_cached / t_floor:.3f}"),
        ("epoch reading the cache file each step", f"{t_disk:.3f} s ({t_disk / t_floor:.3f}x the floor)"),
        ("epoch without cache", f"{uncached:.3f} s ({uncached_calls / n:.0f} encoder call/image/epoch)"),
        ("speed-up", f"{uncached / t_cached:.1f}x"),
        ("cache per image (fp16)", f"{mb:.3f} MB"),
    ]
    width = max(len(k) for k, _ in rows)
    print(f"| {'measure'.ljust(width)} | value |\n|{'-' * (width + 2)}|-------|")
    for k, v in rows:
        print(f"| {k.ljust(width)} | {v} |")
    return 0


def samples_total(samples: Samples) -> int:
    return sum(len(det) for det in samples.images)


if __name__ == "__main__":
    sys.exit(run_command(main))  # bad input (a missing checkpoint, no CUDA): one error line, exit 2
