#!/usr/bin/env python
"""Benchmark YOLO-World v2: training and inference images/s at a given size on this machine's CPU (and GPU if any).

Training: forward + loss + backward + optimizer step on synthetic batches (3 boxes per image), i.e. the model's
cost without data loading, with the trainer's precision on CUDA (AMP: fp16 autocast + GradScaler, as ultralytics
trains; --precision fp32 to compare). Inference: the pipeline's Detector (defect_vision.inference.detector:
letterbox, forward, NMS) on synthetic images, batch 1, in `defect-vision predict`'s precision (--precision auto:
fp16 autocast on CUDA, fp32 on CPU). Checkpoint save: one epoch's last.pt (half-precision EMA + Adam state, as ultralytics
serialises it) written in place (ultralytics) vs to a temporary file + fsync + rename (DefectWorldTrainer, which
survives a kill -9 inside the write). Random-init weights unless --model names a checkpoint; offline.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from copy import deepcopy
from pathlib import Path

from defect_vision.offline import go_offline  # noqa: E402

go_offline()

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402


def build_model(cfg: str, model_path: Path | None, nc: int):
    from ultralytics.nn.tasks import WorldModel, load_checkpoint

    from defect_vision.models.text_embeddings import random_embed
    from defect_vision.training.world_trainer import set_class_embeddings

    model = load_checkpoint(str(model_path))[0] if model_path else WorldModel(cfg, nc=nc, verbose=False)
    names = [f"defect {i}" for i in range(nc)]
    set_class_embeddings(model, names, random_embed(names))
    return model.float()


def train_amp(device: str, precision: str) -> bool:
    """Whether training runs AMP: on CUDA unless fp32 is asked for (ultralytics' trainer, amp=True)."""
    return device.startswith("cuda") and precision != "fp32"


def bench_train(model, device: str, imgsz: int, batch: int, steps: int, warmup: int, precision: str = "auto") -> float:
    from types import SimpleNamespace

    from ultralytics.cfg import DEFAULT_CFG_DICT

    model = deepcopy(model).to(device).train()
    model.args = SimpleNamespace(**DEFAULT_CFG_DICT)  # loss gains (box, cls, dfl)
    for p in model.parameters():
        p.requires_grad_(True)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    nc = model.txt_feats.shape[1]
    g = torch.Generator().manual_seed(0)
    img = torch.rand(batch, 3, imgsz, imgsz, generator=g).to(device)
    n = 3 * batch
    targets = {
        "img": img,
        "batch_idx": torch.arange(batch).repeat_interleave(3).float().to(device),
        "cls": torch.randint(0, nc, (n, 1), generator=g).float().to(device),
        "bboxes": torch.cat([torch.rand(n, 2, generator=g) * 0.6 + 0.2, torch.rand(n, 2, generator=g) * 0.2 + 0.05], 1).to(device),
        "txt_feats": model.txt_feats.expand(batch, -1, -1).to(device),
    }
    amp = train_amp(device, precision)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    times = []
    for i in tqdm(range(warmup + steps), desc=f"train {device}", unit="batch", leave=False):
        sync(device)
        t = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.float16, enabled=amp):  # as BaseTrainer: autocast(self.amp)
            loss, _ = model.loss(targets)
        opt.zero_grad()
        scaler.scale(loss.sum()).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=10.0)
        scaler.step(opt)
        scaler.update()
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return batch * len(times) / sum(times)


def bench_predict(model, device: str, imgsz: int, images: int, warmup: int, precision: str = "auto") -> tuple[float, str]:
    """(images/s, autocast dtype name) of the pipeline's Detector, batch 1."""
    from defect_vision.devices import autocast_dtype, resolve_device
    from defect_vision.inference.detector import Detector

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.pt"
        torch.save({"model": deepcopy(model).half(), "train_args": {"imgsz": imgsz}}, path)
        dev = resolve_device(device)
        dtype = autocast_dtype(dev, precision)
        detector = Detector(path, dev, dtype, imgsz)
        rng = np.random.default_rng(0)
        ims = [rng.integers(0, 255, (imgsz, imgsz, 3), dtype=np.uint8) for _ in range(images + warmup)]
        times = []
        for i, im in enumerate(tqdm(ims, desc=f"predict {device}", unit="img", leave=False)):
            t = time.perf_counter()
            detector.predict([im], conf=0.25)  # ends with the boxes on the host: no extra sync needed
            if i >= warmup:
                times.append(time.perf_counter() - t)
    return len(times) / sum(times), str(dtype).replace("torch.", "") if dtype else "fp32"


def bench_save(model, repeats: int, folder: Path | None = None) -> tuple[float, float, float]:
    """(MB, ms per in-place write, ms per temporary write + fsync + rename) of one epoch's checkpoint."""
    import io

    from ultralytics.utils.torch_utils import convert_optimizer_state_dict_to_fp16

    from defect_vision.io import replace_durably, temp_name

    model = deepcopy(model).float()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for p in model.parameters():  # Adam state (exp_avg, exp_avg_sq) for every parameter, as after a step
        p.grad = torch.zeros_like(p)
    opt.step()
    buffer = io.BytesIO()
    state = convert_optimizer_state_dict_to_fp16(deepcopy(opt.state_dict()))  # what ultralytics stores
    torch.save({"epoch": 0, "ema": deepcopy(model).half(), "optimizer": state, "train_args": {}}, buffer)
    data = buffer.getvalue()
    in_place, atomic = [], []
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        target = Path(tmp) / "last.pt"
        for _ in range(repeats):
            t = time.perf_counter()
            target.write_bytes(data)
            in_place.append(time.perf_counter() - t)
            t = time.perf_counter()
            part = temp_name(target)
            part.write_bytes(data)
            replace_durably(part, target)
            atomic.append(time.perf_counter() - t)
    return len(data) / 1e6, 1000 * float(np.median(in_place)), 1000 * float(np.median(atomic))


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model-cfg", default="yolov8s-worldv2.yaml", help="model yaml (random init)")
    p.add_argument("--model", type=Path, default=None, help="a YOLO-World checkpoint instead of --model-cfg")
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--batch", type=int, default=4, help="training batch size")
    p.add_argument("--steps", type=int, default=3, help="timed training steps per device")
    p.add_argument("--images", type=int, default=10, help="timed inference images per device")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up steps/images")
    p.add_argument("--nc", type=int, default=5, help="number of classes (prompts)")
    p.add_argument("--devices", nargs="*", default=None, help="devices to run (default: cpu, and cuda:0 if available; none: only the checkpoint save)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    p.add_argument("--save-repeats", type=int, default=5, help="timed checkpoint saves (0: skip)")
    p.add_argument("--save-dir", type=Path, default=None, help="folder for the checkpoint-save timing (default: system temp)")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "fp16", "bf16"),
                   help="auto: what the pipeline runs (training AMP and fp16 inference autocast on CUDA, fp32 on CPU)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads or os.cpu_count() or 1)  # importing ultralytics sets OMP_NUM_THREADS=1
    devices = a.devices if a.devices is not None else ["cpu"] + (["cuda:0"] if torch.cuda.is_available() else [])
    model = build_model(a.model_cfg, a.model, a.nc)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    name = a.model.name if a.model else a.model_cfg
    rows = []
    for dev in devices:
        label = torch.cuda.get_device_name(int(dev.split(":")[-1] or 0)) if dev.startswith("cuda") else f"CPU x{torch.get_num_threads()} threads"
        train = bench_train(model, dev, a.imgsz, a.batch, a.steps, a.warmup, a.precision)
        infer, infer_dtype = bench_predict(model, dev, a.imgsz, a.images, a.warmup, a.precision)
        rows.append((dev, label, train, "amp fp16" if train_amp(dev, a.precision) else "fp32", infer, infer_dtype))
    print(f"\nYOLO-World v2 {name} ({params:.1f}M params), imgsz {a.imgsz}, train batch {a.batch}, predict batch 1")
    print("| device | hardware | train img/s | train precision | predict img/s | predict precision |\n"
          "|---|---|---:|---|---:|---|")
    for dev, label, train, train_prec, infer, infer_prec in rows:
        print(f"| {dev} | {label} | {train:.2f} | {train_prec} | {infer:.2f} | {infer_prec} |")
    if a.save_repeats > 0:
        mb, in_place, atomic = bench_save(model, a.save_repeats, a.save_dir)
        print(f"checkpoint save ({mb:.1f} MB, median of {a.save_repeats}): in place {in_place:.0f} ms, "
              f"temporary + fsync + rename {atomic:.0f} ms")
    print(f"bench_yolo_world: {len(rows)} device(s) measured")
    return 0


if __name__ == "__main__":
    sys.exit(main())
