"""Benchmark: SAM fine-tune epoch time with the fp16 embedding cache vs recomputing the image encoder each step.

python scripts/bench_sam_finetune.py [--model-type vit_b] [--images 4] [--size 1024] [--device auto]
Prints a table: cold-cache encode time, epoch time with / without cache, ratio, encoder calls per image,
cache MB per image. Random-init weights unless --checkpoint (timings do not depend on the weights).
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import tempfile
import time

import numpy as np
import torch

from converters.mvtec import read_image
from converters.mvtec_to_sam import main as mvtec_to_sam
from converters.synthetic import make_category
from finetune.sam import Dist, PromptedDecoder, Samples, _Help, resolve_device, train_epoch
from finetune.sam_data import load_prompts
from finetune.sam_embeddings import EmbeddingCache
from finetune.sam_model import MODEL_TYPES, build_sam


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=_Help)
    p.add_argument("--model-type", default="vit_b", choices=MODEL_TYPES, help="SAM size to time")
    p.add_argument("--checkpoint", type=Path, help="weights to load (default: random init)")
    p.add_argument("--images", type=int, default=4, help="training images per epoch")
    p.add_argument("--size", type=int, default=1024, help="side of the synthetic images (MVTec wood: 1024)")
    p.add_argument("--epochs", type=int, default=2, help="cached epochs to time (the mean is reported)")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic images and the random init")
    args = p.parse_args(argv)
    device = resolve_device(args.device, Dist())
    torch.manual_seed(args.seed)
    sam = build_sam(args.model_type, args.checkpoint).to(device)
    for prm in sam.parameters():
        prm.requires_grad_(prm in set(sam.mask_decoder.parameters()))

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_category(tmp / "root", "bench", size=args.size, per_defect=max(2, args.images), good_train=1, good_test=1,
                      combined=0, seed=args.seed)
        mvtec_to_sam(["--category", "bench", "--root", str(tmp / "root"), "--out", str(tmp / "sam"), "--splits",
                      str(tmp / "split.json"), "--split", "0.8", "0.1", "0.1", "--no-progress"])
        prompts = load_prompts(tmp / "sam" / "prompts_train.json")
        prompts.images = prompts.with_instances[: args.images]
        samples = Samples(prompts, sam)
        cache = EmbeddingCache(tmp / "cache", sam, args.model_type)
        opt_args = argparse.Namespace(batch_images=1, jitter=0.1, jitter_max=20.0, points=False, multimask=False, clip_grad=1.0)
        decoder = PromptedDecoder(sam)
        optimizer = torch.optim.AdamW(sam.mask_decoder.parameters(), lr=1e-5)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
        scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
        order = list(range(len(samples)))
        for im in samples.images:  # targets and hashes prepared outside the timings
            samples.target(im)
            cache.key_of(im.path)

        def epoch(embed) -> float:
            sync(device)
            t0 = time.perf_counter()
            train_epoch(decoder, samples, order, embed, optimizer, scheduler, scaler, np.random.default_rng(0), opt_args, device)
            sync(device)
            return time.perf_counter() - t0

        t0 = time.perf_counter()
        cache.ensure([im.path for im in samples.images], device, progress=True)
        sync(device)
        cold = time.perf_counter() - t0
        cold_calls = cache.encoder_calls
        cached = [epoch(lambda path: cache.get(path, device)) for _ in range(args.epochs)]
        warm_calls = cache.encoder_calls - cold_calls
        images = {im.path: read_image(im.path) for im in samples.images}
        before = cache.encoder_calls
        uncached = epoch(lambda path: cache.encode(images[path], device))
        uncached_calls = cache.encoder_calls - before
        mb = cache.megabytes_per_image()

    n = len(samples)
    t_cached = float(np.mean(cached))
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    rows = [
        ("model / device", f"{args.model_type} / {gpu}"),
        ("images x instances", f"{n} x {samples_total(samples)} ({args.size} px)"),
        ("cold cache: encode all images", f"{cold:.2f} s ({cold / n:.3f} s/image, {cold_calls / n:.0f} encoder call/image)"),
        ("epoch with cache", f"{t_cached:.3f} s (mean of {args.epochs}; {warm_calls} encoder calls)"),
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
    return sum(len(im.instances) for im in samples.images)


if __name__ == "__main__":
    sys.exit(main())
