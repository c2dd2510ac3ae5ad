#!/usr/bin/env python
"""Head-to-head: `defect-vision predict` vs the loop a user writes from the Grounded-SAM / ultralytics READMEs
(`YOLOWorld(det).predict(img)` -> `SamPredictor.set_image(img)` -> `predict_torch(boxes=...)` -> a label PNG, one
image at a time). Same checkpoints (random-init in the real formats and sizes), same images, same device, one
process, model loading counted for both. Prints images/s of both and the ratio (median of --repeat runs), quiet
and with --busy other processes burning a core each.

Each run happens in a fresh process: ultralytics' `select_device('cpu')` sets torch's threads process-wide (to
cores - 1), so runs sharing an interpreter would inherit each other's settings.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from defect_vision.devices import PRECISIONS
from defect_vision.offline import go_offline


def burn(stop) -> None:
    """Another process on the machine: one core kept busy until `stop` is set."""
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x = (x * 1103515245 + 12345) & 0x7FFFFFFF


def make_images(folder: Path, n: int, size: int, seed: int) -> list[Path]:
    from defect_vision.data.synthetic import background, draw_defect

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        img, region = background(rng, size, "wood")
        for kind in ("scratch", "hole"):
            draw_defect(rng, img, region, kind, 0.8)
        paths.append(folder / f"{i:03d}.png")
        cv2.imwrite(str(paths[-1]), cv2.cvtColor(np.clip(img, 0, 255).astype(np.uint8), cv2.COLOR_RGB2BGR))
    return paths


def user_loop(det: Path, sam: Path, sam_type: str, images: list[Path], out: Path, conf: float, max_det: int,
              device: str) -> float:
    """The README loop; returns wall seconds including model loading."""
    import torch
    from segment_anything import SamPredictor
    from ultralytics import YOLOWorld

    from defect_vision.models.sam import (
        build_sam,  # registers vit_tiny, as a user of our checkpoints would
    )

    t0 = time.perf_counter()
    model = YOLOWorld(str(det))
    predictor = SamPredictor(build_sam(sam_type, sam).to(device))
    out.mkdir(parents=True, exist_ok=True)
    for path in images:
        bgr = cv2.imread(str(path))
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        r = model.predict(bgr, conf=conf, max_det=max_det, device=device, verbose=False)[0]
        label = np.zeros(rgb.shape[:2], np.uint8)
        if len(r.boxes):
            predictor.set_image(rgb)
            boxes = predictor.transform.apply_boxes_torch(r.boxes.xyxy.to(device), rgb.shape[:2])
            with torch.no_grad():
                masks, _, _ = predictor.predict_torch(None, None, boxes=boxes, multimask_output=False)
            for m, c in zip(masks[:, 0].cpu().numpy(), r.boxes.cls.int().tolist()):
                label[m] = c + 1
        cv2.imwrite(str(out / f"{path.stem}.png"), label)
    return time.perf_counter() - t0


def ours(det: Path, sam: Path, sam_type: str, folder: Path, out: Path, conf: float, max_det: int, device: str,
         batch: int | None, variant: str = "auto", onnx: Path | None = None, workers: int | None = None) -> float:
    """`predict_run` of one variant: a torch precision (auto, bf16), or an exported backend with its precision
    (onnxruntime, openvino, openvino-bf16) over the export `onnx`; returns wall seconds including model loading."""
    import defect_vision.inference.detector  # noqa: F401 - imports outside the timer, as the loop's
    import defect_vision.inference.segmenter  # noqa: F401
    from defect_vision.inference.predictor import (
        DefectPredictor,
        PredictConfig,
        predict_workers,
    )
    from defect_vision.inference.run import RunOptions, predict_run

    backend, _, precision = variant.partition("-") if variant not in PRECISIONS else ("torch", "", variant)
    workers = predict_workers(backend, workers, None)  # as `defect-vision predict`
    t0 = time.perf_counter()
    predictor = DefectPredictor(det, sam, PredictConfig(conf=conf, max_det=max_det, model_type=sam_type, device=device,
                                                           precision=precision or "auto", backend=backend,
                                                           onnx=onnx if backend != "torch" else None, workers=workers))
    predict_run(predictor, folder, out, RunOptions(batch=batch, progress=False, force=True))
    return time.perf_counter() - t0


def in_fresh_process(fn, *args) -> float:
    """fn(*args) (wall seconds) in a new interpreter: no thread settings, caches or warm-up shared between runs."""
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(_offline_call, (fn, *args))


def _offline_call(fn, *args) -> float:
    import torch  # noqa: F401 - before ultralytics (as the CLI): importing ultralytics first sets OMP_NUM_THREADS=1

    go_offline()
    return fn(*args)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--images", type=int, default=12, help="images per run")
    p.add_argument("--size", type=int, default=1024, help="image side in pixels")
    p.add_argument("--detector-cfg", default="yolov8s-worldv2.yaml", help="YOLO-World model yaml (random init)")
    p.add_argument("--imgsz", type=int, default=640, help="detector input size")
    p.add_argument("--sam-type", default="vit_b", help="SAM model type (vit_b | vit_tiny ...)")
    p.add_argument("--boxes", type=int, default=5, help="detections (SAM boxes) per image")
    p.add_argument("--batch", type=int, default=None, help="our detector batch (default: predict's)")
    p.add_argument("--workers", type=int, default=None, help="our model workers (default: predict's)")
    p.add_argument("--repeat", type=int, default=3, help="runs per side (alternating); the median is reported")
    p.add_argument("--busy", type=int, nargs="*", default=[0, 1], help="other busy processes during the runs")
    p.add_argument("--device", default="cpu", help="cpu | cuda:N")
    p.add_argument("--precision", "--variants", nargs="+", default=["auto"],
                   help="our variants, one row each: auto (fp32 on CPU, fp16 on CUDA), bf16 (a CPU with AVX512-BF16), "
                        "onnxruntime, openvino, openvino-bf16 (the `defect-vision export` of the same checkpoints, "
                        "CPU)")
    a = p.parse_args(argv)
    go_offline()
    import torch

    from defect_vision.models.random_init import save_random_detector, save_random_sam

    work = Path(tempfile.mkdtemp(prefix="bench_vs_loop_"))
    images = make_images(work / "images", a.images, a.size, 0)
    det = save_random_detector(work / "det.pt", ["scratch", "hole", "stain"], cfg=a.detector_cfg, score_bias=0.0,
                               imgsz=a.imgsz)
    sam = save_random_sam(work / "sam.pth", a.sam_type)
    onnx = None
    if any(v.startswith(("onnxruntime", "openvino")) for v in a.precision):
        from defect_vision.models.onnx_export import ExportConfig, export_onnx

        onnx = work / "onnx"
        export_onnx(ExportConfig(det, sam, onnx, model_type=a.sam_type))  # once, offline: not timed
    name = torch.cuda.get_device_name(0) if a.device.startswith("cuda") else f"CPU ({mp.cpu_count()} cores)"
    rows = []
    for busy in a.busy:
        stop = mp.Event()
        burners = [mp.Process(target=burn, args=(stop,), daemon=True) for _ in range(busy)]
        for b in burners:
            b.start()
        loop_s, our_s = [], {prec: [] for prec in a.precision}
        try:
            for r in range(a.repeat):
                loop_s.append(in_fresh_process(user_loop, det, sam, a.sam_type, images, work / "loop", 0.01, a.boxes,
                                               a.device))
                for prec in a.precision:
                    our_s[prec].append(in_fresh_process(ours, det, sam, a.sam_type, work / "images", work / "ours", 0.01,
                                                        a.boxes, a.device, a.batch, prec,
                                                        onnx, a.workers))
        finally:
            stop.set()
            for b in burners:
                b.join()
        loop_ips = [a.images / s for s in loop_s]
        for prec in a.precision:
            our_ips = [a.images / s for s in our_s[prec]]
            ratios = [o / l for o, l in zip(our_ips, loop_ips)]
            rows.append((busy, prec, statistics.median(loop_ips), statistics.median(our_ips), statistics.median(ratios),
                         min(ratios), max(ratios)))
    print(f"\nhead-to-head on {name}: {a.images} images of {a.size} px, {a.detector_cfg} @ {a.imgsz}, SAM {a.sam_type}, "
          f"{a.boxes} boxes/image, model loading included, median of {a.repeat}")
    print("| other busy processes | ours | user loop img/s | defect-vision img/s | ratio (median) | ratio min..max |")
    print("|---:|---|---:|---:|---:|---:|")
    for busy, prec, lo, ou, med, mn, mx in rows:
        print(f"| {busy} | {prec} | {lo:.2f} | {ou:.2f} | {med:.2f}x | {mn:.2f}..{mx:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
