#!/usr/bin/env python
"""Benchmark the model families (issue 19): per segmenter family (SAM ViT, MobileSAM, SAM 2.1) and detector family
(YOLO-World v2, YOLOE), on torch / onnxruntime / OpenVINO, one table per device:

- segmenters: parameters, encoder ms per image, decoder ms per box (`--boxes` fixed boxes, full-size masks
  included), and end-to-end images/s of `defect-vision predict` on `--size` px images with its detector;
- detectors: parameters, ms per image at `--imgsz`;
- the anomaly stage of `predict --anomaly` (issue 21): per method (`--anomaly-methods`), parameters and ms per image
  of the heat map at the model's input size, resized back to `--size` px, plus its unknown-defect regions;
- the ratios the issue targets: the light path (a light segmenter + the light detector, exported) against the ViT-B
  path in the same run (target >= 5x) and against the loop a user writes with ultralytics on the same light models
  (`YOLOE(det).predict(img)` -> `SAM("mobile_sam.pt")(img, bboxes=boxes)`, one image at a time; target >= 1.3x).

Models are random-init checkpoints in each family's real format and size (no weights can be downloaded; speed does
not depend on the weights). The random detectors' score bias is 0, so they find `--boxes` boxes on every image, and the random SAMs' IoU
head predicts a high mask quality, so ultralytics' SAM() keeps every box's mask (as ours does).

Component times (encoder, decoder, detector) are measured in this process, one model worker on every thread: a
warm-up call, then the median of `--repeat` calls. End-to-end runs are `python -m defect_vision predict` as a user
runs it (a fresh process, its default workers), timed from outside, so interpreter start, imports and model
loading are counted; the user loop is timed the same way; both alternate, median of `--repeat`. The ViT paths
(> 10 s per image on a 2-core CPU) run `--heavy-repeat` times. The exported backends run what
`defect_vision.models.onnx_export` writes; a family it cannot export reads "not exported".
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

os.environ.setdefault("YOLO_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling script's images: the same as the head-to-head
from bench_vs_loop import make_images

from defect_vision.offline import go_offline

BACKENDS = ("torch", "onnxruntime", "openvino")
DEFAULT_SEGMENTERS = ("vit_b", "mobile_sam", "sam2.1_t")
ALL_SEGMENTERS = ("vit_b", "vit_l", "vit_h", "mobile_sam", "sam2.1_t", "sam2.1_s", "sam2.1_b+", "sam2.1_l")
HEAVY = ("vit_b", "vit_l", "vit_h", "vit_tiny")  # the ViT-B path's family (vit_tiny stands in for it in --smoke)
NAMES = ["scratch", "hole", "stain"]
SMOKE = {"segmenters": ["vit_tiny", "mobile_sam_test"], "light": "mobile_sam_test",
         "ref_detector": "yolov8n-worldv2.yaml", "light_detector": "yoloe-11n-seg.yaml", "images": 1, "repeat": 1,
         "heavy_repeat": 1, "size": 256, "imgsz": 320, "backends": ["torch", "onnxruntime"], "loop": False,
         "anomaly_methods": ["draem", "padim"], "anomaly_size": 64}
ANOMALY_METHODS = ("draem", "padim", "patchcore")


@dataclass
class Pair:
    """A path: a segmenter family with its detector, their checkpoints and (when exportable) their export."""

    sam_type: str
    detector: str  # model yaml
    sam: Path
    det: Path
    params: float = 0.0  # millions
    onnx: Path | None = None
    export_error: str | None = None
    components: dict = field(default_factory=dict)  # backend -> {"encoder_ms", "decoder_ms", "detector_ms"}
    e2e: dict = field(default_factory=dict)  # backend -> [(process img/s, in-run img/s), ...]

    @property
    def name(self) -> str:
        return f"{self.sam_type} + {Path(self.detector).stem}"

    @property
    def heavy(self) -> bool:
        return self.sam_type in HEAVY

    def backends(self, wanted: list[str]) -> list[str]:
        return [b for b in wanted if b == "torch" or self.onnx is not None]


def save_detector(path: Path, cfg: str, imgsz: int) -> Path:
    from defect_vision.models.random_init import save_random_detector, save_random_yoloe

    if "yoloe" in cfg:
        return save_random_yoloe(path, NAMES, cfg, imgsz=imgsz)
    return save_random_detector(path, NAMES, cfg=cfg, score_bias=0.0, imgsz=imgsz)


def save_sam(path: Path, sam_type: str) -> Path:
    """A random-init SAM checkpoint (save_random_sam) whose IoU head predicts a high mask quality: ultralytics' SAM()
    drops masks predicted below its conf (0.25), ours keeps every box's mask, so both sides write 5 masks."""
    import torch

    from defect_vision.io import torch_save
    from defect_vision.models.random_init import save_random_sam

    save_random_sam(path, sam_type)
    obj = torch.load(path, map_location="cpu", weights_only=True)
    state = obj.get("model", obj)
    key = next(k for k in state if "iou_prediction_head.layers." in k and k.endswith(".bias")
               and int(k.split(".")[-2]) == max(int(j.split(".")[-2]) for j in state
                                                 if "iou_prediction_head.layers." in j))
    state[key].fill_(3.0)  # sigmoid(3) = 0.95 for SAM 2 (sigmoid IoU), 3 for SAM (raw IoU)
    torch_save(obj, path)
    return path


def parameters(module) -> float:
    """Millions of parameters."""
    return sum(p.numel() for p in module.parameters()) / 1e6


def fixed_boxes(n: int, size: int, seed: int) -> np.ndarray:
    """n xyxy boxes inside a size x size image, 5-25 % of its side."""
    rng = np.random.default_rng(seed)
    wh = rng.uniform(0.05, 0.25, (n, 2)) * size
    xy = rng.uniform(0, 1, (n, 2)) * (size - wh)
    return np.hstack([xy, xy + wh]).astype(np.float32)


def measure_components(pair: Pair, backend: str, images: list[np.ndarray], boxes: np.ndarray, repeat: int,
                       device: str) -> dict:
    """Median ms of the detector per image, the segmenter's encoder per image and decoder per box: one worker on
    every thread, a warm-up call on the first image, then `repeat` calls."""
    from defect_vision.devices import Timings, cpu_threads
    from defect_vision.inference.predictor import DefectPredictor, PredictConfig

    config = PredictConfig(conf=0.01, max_det=len(boxes), model_type=pair.sam_type, device=device, backend=backend,
                           onnx=pair.onnx if backend != "torch" else None, workers=1, threads=cpu_threads())
    predictor = DefectPredictor(pair.det, pair.sam, config)
    det, seg = predictor.detector, predictor.segmenter
    samples: dict[str, list[float]] = {"detector_ms": [], "encoder_ms": [], "decoder_ms": []}
    for i in range(repeat + 1):
        image = images[i % len(images)]
        timings = Timings()
        t0 = time.perf_counter()
        det.predict([image], 0.01, 0.5, len(boxes), None, Timings())
        detector = time.perf_counter() - t0
        seg.segment_batch([image], [boxes], timings)
        timings.settle()
        if i:  # the first call warms up
            samples["detector_ms"].append(1000 * detector)
            samples["encoder_ms"].append(1000 * timings.sam_encoder)
            samples["decoder_ms"].append(1000 * timings.sam_decoder / len(boxes))
    return {k: statistics.median(v) for k, v in samples.items()}


def run_ours(pair: Pair, backend: str, folder: Path, out: Path, boxes: int, device: str) -> tuple[float, float]:
    """`defect-vision predict` in a fresh process: (images/s over the process's wall time, the run's own images/s)."""
    cmd = [sys.executable, "-m", "defect_vision", "predict", "--source", str(folder), "--detector", str(pair.det),
           "--sam", str(pair.sam), "--model-type", pair.sam_type, "--out", str(out), "--conf", "0.01",
           "--max-det", str(boxes), "--quiet", "--force", "--device", device]
    if backend != "torch":
        cmd += ["--backend", backend, "--onnx", str(pair.onnx)]
    t0 = time.perf_counter()
    run(cmd)
    wall = time.perf_counter() - t0
    summary = json.loads((out / "summary.json").read_text())
    if summary["sam_decoder_calls"] != summary["images"]:
        raise SystemExit(f"{pair.name} {backend}: SAM decoded {summary['sam_decoder_calls']} of {summary['images']} "
                         "images (the random detector found no box on some)")
    return summary["images"] / wall, summary["images_per_s"]


LOOP = """
import sys, time
from pathlib import Path
import torch  # first, as the CLI (ultralytics imported first sets OMP_NUM_THREADS=1)
import cv2, numpy as np
from ultralytics import SAM, YOLOE, YOLOWorld
det, sam, folder, out, boxes, device = sys.argv[1:7]
detector = (YOLOE if "yoloe" in sys.argv[7] else YOLOWorld)(det)
segmenter = SAM(sam)
Path(out).mkdir(parents=True, exist_ok=True)
n = 0
for path in sorted(Path(folder).glob("*.png")):
    bgr = cv2.imread(str(path))
    r = detector.predict(bgr, conf=0.01, max_det=int(boxes), device=device, verbose=False)[0]
    label = np.zeros(bgr.shape[:2], np.uint8)
    if len(r.boxes):
        masks = segmenter(bgr, bboxes=r.boxes.xyxy, device=device, verbose=False)[0].masks.data.cpu().numpy()
        for m, c in zip(masks, r.boxes.cls.int().tolist()):
            label[m > 0] = c + 1
        n += len(masks)
    cv2.imwrite(str(Path(out) / f"{path.stem}.png"), label)
print(n)
"""


def run_loop(pair: Pair, folder: Path, out: Path, boxes: int, device: str, images: int) -> float:
    """The user's ultralytics loop in a fresh process; images/s over its wall time (model loading counted). SAM()
    picks its builder from the file name, so the light SAM checkpoint is saved as mobile_sam.pt / sam2.1_t.pt."""
    t0 = time.perf_counter()
    masks = int(run([sys.executable, "-c", LOOP, str(pair.det), str(pair.sam), str(folder), str(out), str(boxes),
                     device, pair.detector]).split()[-1])
    wall = time.perf_counter() - t0
    if masks != boxes * images:
        raise SystemExit(f"user loop: {masks} masks, expected {boxes} on each of {images} images")
    return images / wall


def run(cmd: list[str]) -> str:
    r = subprocess.run(cmd, check=False, capture_output=True, text=True, env={**os.environ, "YOLO_OFFLINE": "1"})
    if r.returncode != 0:
        raise SystemExit(f"failed ({r.returncode}): {' '.join(cmd[:4])} ...\n{r.stderr[-2000:]}")
    return r.stdout


def device_name(device: str) -> str:
    import torch

    from defect_vision.devices import cpu_threads

    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(torch.device(device))} (CUDA)"
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "CPU") if Path("/proc/cpuinfo").exists() else "CPU"
    return f"CPU {model}, {cpu_threads()} cores"


def checkpoint_name(sam_type: str) -> str:
    """The file name ultralytics' SAM() recognises for a family (it builds by name), else <type>.pth."""
    return {"mobile_sam": "mobile_sam.pt", "sam2.1_t": "sam2.1_t.pt", "sam2.1_s": "sam2.1_s.pt",
            "sam2.1_b+": "sam2.1_b.pt", "sam2.1_l": "sam2.1_l.pt", "vit_b": "sam_b.pt"}.get(sam_type, f"{sam_type}.pth")


def export(pair: Pair, imgsz: int) -> None:
    """pair.onnx, or pair.export_error: why `defect_vision.models.onnx_export` could not export it."""
    from defect_vision.models.onnx_export import ExportConfig, export_onnx

    out = pair.sam.parent / f"onnx_{pair.sam_type}"
    try:
        export_onnx(ExportConfig(pair.det, pair.sam, out, model_type=pair.sam_type, imgsz=imgsz, force=True))
        pair.onnx = out
    except Exception as exc:  # noqa: BLE001 - any failure: the family is reported as not exported
        pair.export_error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"


def median_e2e(pair: Pair, backend: str, index: int) -> float | None:
    runs = pair.e2e.get(backend)
    return statistics.median(r[index] for r in runs) if runs else None


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_tables(pairs: list[Pair], detectors: dict, loop: list[float], args, device: str) -> None:
    light = next(p for p in pairs if p.sam_type == args.light)
    ref = next((p for p in pairs if p.heavy), None)
    print(f"\n## Models on {device_name(device)}: {args.images} images of {args.size} px, {args.boxes} boxes each, "
          f"detector @ {args.imgsz}; components median of {args.repeat} (ViT: {args.heavy_repeat}) after a warm-up, "
          f"end-to-end median of {args.repeat} fresh processes (ViT: {args.heavy_repeat})\n")
    print("| segmenter | params (M) | backend | encoder ms / image | decoder ms / box | path | end-to-end img/s "
          "(process, loading counted) | img/s in the run |")
    print("|---|---:|---|---:|---:|---|---:|---:|")
    for p in pairs:
        for backend in args.backends:
            c = p.components.get(backend)
            if c is None:
                why = "not exported" if backend != "torch" and p.onnx is None else "not measured"
                print(f"| {p.sam_type} | {p.params:.1f} | {backend} | {why} | {why} | {p.name} | {why} | {why} |")
                continue
            print(f"| {p.sam_type} | {p.params:.1f} | {backend} | {c['encoder_ms']:.0f} | {c['decoder_ms']:.1f} | "
                  f"{p.name} | {fmt(median_e2e(p, backend, 0), 3)} | {fmt(median_e2e(p, backend, 1), 3)} |")
    print(f"\n| detector | params (M) | backend | ms / image @ {args.imgsz} |")
    print("|---|---:|---|---:|")
    for cfg, (params, pair) in detectors.items():
        for backend in args.backends:
            c = pair.components.get(backend)
            cell = "not exported" if c is None else f"{c['detector_ms']:.0f}"
            print(f"| {Path(cfg).stem} | {params:.1f} | {backend} | {cell} |")
    print_ratios(pairs, light, ref, loop, args)


def measure_anomaly(method: str, images: list[np.ndarray], size: int, repeat: int, device: str) -> dict:
    """The anomaly stage on `images`: a random-init model of `method` (padim/patchcore fitted on the images; the
    speed does not depend on the weights), median ms per image of AnomalyStage.add after a warm-up."""
    import warnings

    import torch

    from defect_vision.detections import Detections, ImageInfo
    from defect_vision.inference.anomaly import AnomalyStage
    from defect_vision.models.anomaly import AnomalyMeta, build_model, to_input

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        meta = AnomalyMeta(method, "bench", size, backbone=None if method == "draem" else "resnet18",
                           map_threshold=0.5, map_scale=1.0)
        model = build_model(meta).to(device)
        if method != "draem":
            model.train()
            model(to_input(images, meta, device))
            model.fit() if method == "padim" else model.subsample_embedding(0.1)
    stage = AnomalyStage(Path("bench"), meta, model.eval(), torch.device(device))

    def dets() -> list[Detections]:
        return [Detections.empty(image=ImageInfo(i, f"{i}.png", *im.shape[:2])) for i, im in enumerate(images)]

    stage.add(images, dets())
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        stage.add(images, dets())
        times.append((time.perf_counter() - t0) * 1000 / len(images))
    return {"params": parameters(model), "ms": statistics.median(times)}


def print_anomaly(rows: dict, args, device: str) -> None:
    print(f"\n## Anomaly stage (predict --anomaly) on {device_name(device)}: {args.images} images of "
          f"{args.size} px, model input {args.anomaly_size} px, median of {args.repeat} after a warm-up\n")
    print("| anomaly method | params (M) | ms / image (map + unknown regions) |")
    print("|---|---:|---:|")
    for method, r in rows.items():
        print(f"| {method} | {r['params']:.1f} | {r['ms']:.1f} |")


def best(pair: Pair, backends: list[str], index: int) -> tuple[float | None, str]:
    """The highest median end-to-end img/s of `pair` over `backends` and which backend gave it."""
    found = [(median_e2e(pair, b, index), b) for b in backends if pair.e2e.get(b)]
    return max(found) if found else (None, "-")


def print_ratios(pairs: list[Pair], light: Pair, ref: Pair | None, loop: list[float], args) -> None:
    exported = [b for b in args.backends if b != "torch"]
    print("\n| ratio (end-to-end img/s) | light path | against | value | target | met |")
    print("|---|---|---|---:|---:|---|")
    lights = [p for p in pairs if not p.heavy]
    for index, what in ((0, "process, loading counted"), (1, "in the run")):
        if ref is None:
            break
        ref_ips, ref_b = best(ref, args.backends, index)
        cands = [(best(p, exported, index), p) for p in lights]
        cands = [(ips, b, p) for (ips, b), p in cands if ips is not None]
        if not cands or ref_ips is None:
            print(f"| light exported vs {ref.sam_type} ({what}) | none exported | - | - | 5x | - |")
            continue
        ips, b, p = max(cands, key=lambda c: c[0])
        ratio = ips / ref_ips
        print(f"| light exported vs ViT-B path ({what}) | {p.name}, {b} | {ref.name}, {ref_b} (its best) | "
              f"{ratio:.1f}x | 5x | {'yes' if ratio >= 5 else 'NO'} |")
    if loop:
        loop_ips = statistics.median(loop)
        for backend in args.backends:
            runs = light.e2e.get(backend)
            if not runs:
                continue
            ratios = [r[0] / lo for r, lo in zip(runs, loop)]
            med = statistics.median(ratios)
            print(f"| defect-vision predict vs the ultralytics loop ({loop_ips:.3f} img/s), same models | "
                  f"{light.name}, {backend} | loop {light.name} | {med:.2f}x ({min(ratios):.2f}..{max(ratios):.2f}) | "
                  f"1.3x | {'yes' if med >= 1.3 else 'NO'} |")
    for p in pairs:
        if p.export_error:
            print(f"\n{p.sam_type}: not exported ({p.export_error})")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--segmenters", nargs="+", default=list(DEFAULT_SEGMENTERS), help="SAM model types, one row each")
    p.add_argument("--all", action="store_true", help=f"every segmenter family ({' '.join(ALL_SEGMENTERS)})")
    p.add_argument("--light", default="mobile_sam", help="the light segmenter of the loop comparison")
    p.add_argument("--ref-detector", default="yolov8s-worldv2.yaml", help="the ViT paths' detector (today's default)")
    p.add_argument("--light-detector", default="yoloe-11s-seg.yaml", help="the light paths' detector")
    p.add_argument("--images", type=int, default=2, help="images per end-to-end run")
    p.add_argument("--repeat", type=int, default=3, help="timed component calls and end-to-end runs (median)")
    p.add_argument("--heavy-repeat", type=int, default=1, help="the same for the ViT paths (> 10 s per image on CPU)")
    p.add_argument("--size", type=int, default=1024, help="image side in pixels")
    p.add_argument("--imgsz", type=int, default=640, help="detector input size")
    p.add_argument("--boxes", type=int, default=5, help="boxes per image")
    p.add_argument("--backends", nargs="+", default=None, choices=BACKENDS,
                   help="default: all three on the CPU, torch on CUDA (the exported backends are CPU-only)")
    p.add_argument("--device", default="cpu", help="cpu | cuda:N")
    p.add_argument("--no-loop", dest="loop", action="store_false", help="skip the ultralytics user loop")
    p.add_argument("--anomaly-methods", nargs="*", default=list(ANOMALY_METHODS), choices=ANOMALY_METHODS,
                   help="anomaly stage rows (none: skip); random-init models, draem at anomalib's width 32")
    p.add_argument("--anomaly-size", type=int, default=256, help="anomaly model input side")
    p.add_argument("--smoke", action="store_true",
                   help="tiny settings for the test: vit_tiny and mobile_sam_test, 1 image of 256 px, 1 repeat, "
                        "torch and onnxruntime, no loop (ultralytics' SAM() builds only the official configs)")
    p.add_argument("--work", type=Path, default=None, help="work folder (default: a new temporary one)")
    args = p.parse_args(argv)
    if args.all:
        args.segmenters = list(ALL_SEGMENTERS)
    if args.smoke:
        args = argparse.Namespace(**{**vars(args), **SMOKE})
    if args.backends is None:
        args.backends = ["torch"] if args.device.startswith("cuda") else list(BACKENDS)
    if args.light not in args.segmenters:
        p.error(f"--light {args.light}: not among --segmenters")
    go_offline()
    import cv2
    import torch

    from defect_vision.devices import cpu_threads
    from defect_vision.models.detector import load_detector_model
    from defect_vision.models.sam import build_sam

    torch.set_num_threads(cpu_threads())
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_models_"))
    folder = work / "images"
    paths = make_images(folder, args.images, args.size, 0)
    images = [cv2.cvtColor(cv2.imread(str(x)), cv2.COLOR_BGR2RGB) for x in paths]
    boxes = fixed_boxes(args.boxes, args.size, 1)

    detectors: dict[str, tuple[float, Pair]] = {}
    dets = {cfg: save_detector(work / f"{Path(cfg).stem}.pt", cfg, args.imgsz)
            for cfg in dict.fromkeys([args.ref_detector, args.light_detector])}
    pairs = []
    for sam_type in args.segmenters:
        cfg = args.ref_detector if sam_type in HEAVY else args.light_detector
        pair = Pair(sam_type, cfg, save_sam(work / checkpoint_name(sam_type), sam_type), dets[cfg])
        pair.params = parameters(build_sam(sam_type, None))
        if any(b != "torch" for b in args.backends):
            export(pair, args.imgsz)
        pairs.append(pair)
        if cfg not in detectors or (detectors[cfg][1].onnx is None and pair.onnx is not None):
            detectors[cfg] = (parameters(load_detector_model(dets[cfg])), pair)
    print(f"work folder {work}; exports: " + ", ".join(f"{q.sam_type} {'ok' if q.onnx else 'not exported'}"
                                                         for q in pairs), flush=True)

    for pair in pairs:
        for backend in pair.backends(args.backends):
            repeat = args.heavy_repeat if pair.heavy else args.repeat
            pair.components[backend] = measure_components(pair, backend, images, boxes, repeat, args.device)
            print(f"{pair.name} {backend}: {pair.components[backend]}", flush=True)
    loop: list[float] = []
    light = next(q for q in pairs if q.sam_type == args.light)
    for r in range(args.repeat):
        for pair in pairs:
            if r >= (args.heavy_repeat if pair.heavy else args.repeat):
                continue
            for backend in pair.backends(args.backends):
                out = work / "out" / f"{pair.sam_type}_{backend}"
                pair.e2e.setdefault(backend, []).append(run_ours(pair, backend, folder, out, args.boxes, args.device))
                print(f"{pair.name} {backend} run {r + 1}: {pair.e2e[backend][-1]}", flush=True)
        if args.loop:
            loop.append(run_loop(light, folder, work / "out" / "loop", args.boxes, args.device, args.images))
            print(f"loop run {r + 1}: {loop[-1]:.3f} img/s", flush=True)
    print_tables(pairs, detectors, loop, args, args.device)
    if args.anomaly_methods:
        anomaly = {m: measure_anomaly(m, images, args.anomaly_size, args.repeat, args.device) for m in args.anomaly_methods}
        print_anomaly(anomaly, args, args.device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
