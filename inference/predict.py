"""python -m inference.predict: YOLO-World boxes -> SAM masks on new images -> predictions.json, label masks, overlays."""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from converters.errors import DatasetError
from converters.io import atomic_dir, read_json
from inference.devices import PRECISIONS, DeviceError, Timings, autocast_dtype, resolve_device, timed
from inference.sources import Loaded, Source, SourceImage, prefetch, resolve_source
from inference.thresholds import ClassThresholds, load_thresholds
from inference.writers import box_masks, label_mask, overlay, result_entries, write_png


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show defaults, except None/False ones (their help text says what happens)."""

    def _get_help_string(self, action):
        return action.help if action.default in (None, False) else super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m inference.predict",
        description="Detect defects with a fine-tuned YOLO-World checkpoint, refine every box into a mask with SAM "
                    "(image encoder once per image, all boxes decoded in one batched call; no SAM call for images "
                    "without detections), and write COCO results, label-mask PNGs and optional overlays.",
        formatter_class=_HelpFormatter,
    )
    p.add_argument("--source", required=True,
                   help="a folder (searched recursively), a glob ('imgs/*.png'), one image, or a COCO instances json "
                        "(images from info.image_root + file_name, keeping its image ids)")
    p.add_argument("--detector", type=Path, help="YOLO-World checkpoint (runs/<C>/yolo_world/best.pt); "
                                                 "not needed with --gt-boxes")
    p.add_argument("--sam", type=Path, help="SAM state_dict (runs/<C>/sam/best.pth); not needed with --box-only")
    p.add_argument("--model-type", default=None,
                   help="SAM model type (vit_b|vit_l|vit_h|vit_tiny); default: model_type of best.json beside --sam, "
                        "else vit_b")
    p.add_argument("--out", type=Path, required=True, help="output folder (runs/<C>/predict); replaced as a whole")
    p.add_argument("--conf", type=float, default=0.25, help="detector confidence threshold (per-class ones: --thresholds)")
    p.add_argument("--iou", type=float, default=0.5, help="NMS IoU threshold")
    p.add_argument("--max-det", type=int, default=100, help="most detections per image")
    p.add_argument("--classes", nargs="+", default=None, help="keep only these class names (default: all classes)")
    p.add_argument("--imgsz", type=int, default=None, help="detector input size (default: the checkpoint's, else 640)")
    p.add_argument("--batch", type=int, default=4, help="images per detector forward")
    p.add_argument("--device", default="auto", help="auto|cpu|cuda|cuda:N (CUDA asked for but missing is an error)")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="autocast dtype on CUDA (auto: bf16 where supported, else fp16); CPU runs fp32")
    p.add_argument("--save-overlays", action="store_true", help="also write overlays/<name>.png (boxes, names, scores, masks)")
    p.add_argument("--box-only", action="store_true", help="skip SAM: the segmentation of a detection is its box")
    p.add_argument("--gt-boxes", type=Path, default=None,
                   help="COCO instances json: run SAM on its ground-truth boxes (score 1) instead of the detector "
                        "(the segmentation upper bound); images matched by id (same json) or path")
    p.add_argument("--thresholds", type=Path, default=None,
                   help="per-class confidence thresholds from evaluation.calibrate "
                        "({'thresholds': {name: t}, 'default': t}); classes not listed use 'default', else --conf")
    p.add_argument("--mask-threshold", type=float, default=0.0, help="SAM mask logit threshold")
    p.add_argument("--strict", action="store_true", help="an unreadable image is an error (default: skipped with a warning)")
    p.add_argument("--prefetch", type=int, default=4, help="images read ahead by the loader thread")
    p.add_argument("--seed", type=int, default=0, help="seed for torch/numpy/random (inference itself is deterministic)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


@dataclass
class Summary:
    images: int = 0  # images predicted
    skipped: list[str] = field(default_factory=list)  # one message per unreadable image
    detections: Counter = field(default_factory=Counter)  # class name -> count
    images_with_detections: int = 0
    sam_encoder_calls: int = 0
    sam_decoder_calls: int = 0
    detector_calls: int = 0
    timings: Timings = field(default_factory=Timings)
    warnings: list[str] = field(default_factory=list)

    @property
    def images_per_s(self) -> float:
        return self.images / self.timings.wall if self.timings.wall > 0 else 0.0

    def line(self, out: Path) -> str:
        per_class = ", ".join(f"{k} {v}" for k, v in sorted(self.detections.items())) or "none"
        skipped = f" ({len(self.skipped)} unreadable skipped)" if self.skipped else ""
        return (f"predicted {self.images} images{skipped} in {self.timings.wall:.1f} s ({self.images_per_s:.2f} img/s): "
                f"{sum(self.detections.values())} detections ({per_class}); SAM encoder ran on "
                f"{self.sam_encoder_calls} images -> {out}")


class GtBoxes:
    """Ground-truth boxes of a COCO json, looked up by image id (same json as --source) or by resolved path."""

    def __init__(self, path: Path, source: Source):
        coco = read_json(path, "COCO json")
        if not isinstance(coco, dict) or not isinstance(coco.get("annotations"), list) or not isinstance(coco.get("images"), list):
            raise DatasetError(f"{path}: not a COCO instances json (needs 'images' and 'annotations')")
        try:
            self.names = {int(c["id"]): str(c["name"]) for c in coco.get("categories", [])}
            root = Path((coco.get("info") or {}).get("image_root", path.parent))
            by_path = {(root / im["file_name"]).resolve(): int(im["id"]) for im in coco["images"]}
            self.boxes: dict[int, list[tuple[list[float], int]]] = {}
            for a in coco["annotations"]:
                x, y, w, h = (float(v) for v in a["bbox"])
                self.boxes.setdefault(int(a["image_id"]), []).append(([x, y, x + w, y + h], int(a["category_id"])))
        except (KeyError, TypeError, ValueError) as exc:
            raise DatasetError(f"{path}: malformed COCO entry ({exc.__class__.__name__}: {exc})") from None
        same = source.kind == "coco" and Path(source.origin).resolve() == Path(path).resolve()
        self.gt_id = {img.id: (img.id if same else by_path.get(img.path)) for img in source.images}
        if not any(v is not None for v in self.gt_id.values()):
            raise DatasetError(f"{path}: none of the source images is in this json (matched by path under info.image_root)")

    def detections_for(self, image: SourceImage):
        from inference.detector import Detections

        found = self.boxes.get(self.gt_id.get(image.id), []) if self.gt_id.get(image.id) is not None else []
        if not found:
            return Detections.empty()
        boxes = np.array([b for b, _ in found], np.float32)
        return Detections(boxes, np.ones(len(found), np.float32), np.array([c - 1 for _, c in found], np.int64))


def _check_args(args: argparse.Namespace) -> None:
    if args.gt_boxes is None and args.detector is None:
        raise DatasetError("--detector: required unless --gt-boxes gives the boxes")
    if not args.box_only and args.sam is None:
        raise DatasetError("--sam: required unless --box-only")
    for name in ("conf", "iou"):
        if not 0.0 <= getattr(args, name) <= 1.0:
            raise DatasetError(f"--{name.replace('_', '-')} {getattr(args, name)}: must be within [0, 1]")
    if args.max_det < 1 or args.batch < 1:
        raise DatasetError("--max-det and --batch: must be >= 1")


def run(args: argparse.Namespace, progress: bool = True):
    """Run the whole prediction; returns (Summary, segmenter or None). Raises DatasetError/DeviceError on bad input."""
    import torch
    from tqdm import tqdm

    _check_args(args)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    device = resolve_device(args.device)
    dtype = autocast_dtype(device, args.precision)
    source = resolve_source(args.source)
    summary = Summary()

    gt = GtBoxes(args.gt_boxes, source) if args.gt_boxes is not None else None
    detector = None
    if gt is None:
        from inference.detector import Detector

        detector = Detector(args.detector, device, dtype, args.imgsz)
        names = {k + 1: v for k, v in detector.names.items()}  # category id -> name
    else:
        names = gt.names or {}
    thresholds = load_thresholds(args.thresholds, names, args.conf) if args.thresholds else ClassThresholds({}, args.conf)
    summary.warnings += thresholds.warnings
    class_filter = None
    if args.classes:
        unknown = [c for c in args.classes if c not in names.values()]
        if unknown:
            raise DatasetError(f"--classes: unknown class name(s) {', '.join(unknown)} (known: {', '.join(names.values())})")
        class_filter = [cid - 1 for cid, n in names.items() if n in args.classes]
    if source.coco is not None:
        summary.warnings += _category_mismatch(source, names)

    segmenter = None
    if not args.box_only:
        from inference.segmenter import Segmenter, load_sam, model_type_for

        model_type = model_type_for(args.sam, args.model_type)
        segmenter = Segmenter(load_sam(args.sam, model_type), device, dtype, args.mask_threshold)

    for w in summary.warnings:
        print(f"warning: {w}", file=sys.stderr)

    predictions: list[dict] = []
    ids: list[dict] = []
    t = summary.timings
    with atomic_dir(args.out) as tmp, ThreadPoolExecutor(max_workers=1, thread_name_prefix="writer") as writer:
        pending = []

        def write(loaded: Loaded, det, masks: np.ndarray) -> None:
            with timed(t, "write"):
                img = loaded.image
                h, w = loaded.pixels.shape[:2]
                cids = det.classes + 1
                predictions.extend(result_entries(img.id, det.boxes, det.scores, cids, masks))
                write_png(tmp / "masks" / f"{img.name}.png", label_mask(masks, cids, det.scores, h, w))
                if args.save_overlays:
                    write_png(tmp / "overlays" / f"{img.name}.png",
                              overlay(loaded.pixels, det.boxes, masks, cids, det.scores, names))

        def flush(batch: list[Loaded]) -> None:
            if gt is not None:
                dets = [gt.detections_for(b.image) for b in batch]
                if class_filter is not None:
                    dets = [d.keep(np.isin(d.classes, class_filter)) for d in dets]
            else:
                dets = detector.predict([b.pixels for b in batch], thresholds.nms_conf, args.iou, args.max_det,
                                        class_filter, t)
                dets = [thresholds.apply(d) for d in dets]
            for loaded, det in zip(batch, dets):
                h, w = loaded.pixels.shape[:2]
                if segmenter is not None:
                    masks, _ = segmenter.segment(loaded.pixels, det.boxes, t)
                else:
                    masks = box_masks(det.boxes, h, w)
                pending.append(writer.submit(write, loaded, det, masks))
                summary.images += 1
                summary.images_with_detections += int(len(det) > 0)
                summary.detections.update(names.get(int(c) + 1, str(int(c) + 1)) for c in det.classes)
                bar.update(1)

        t0 = time.perf_counter()
        batch: list[Loaded] = []
        with tqdm(total=len(source.images), desc="predict", unit="img", disable=not progress) as bar:
            for loaded in prefetch(source.images, args.prefetch):
                t.load += loaded.load_s
                entry = {"id": loaded.image.id, "file_name": loaded.image.file_name, "path": str(loaded.image.path)}
                if loaded.pixels is None:
                    if args.strict:
                        raise DatasetError(loaded.error)
                    print(f"warning: skipped: {loaded.error}", file=sys.stderr)
                    summary.skipped.append(loaded.error)
                    ids.append({**entry, "skipped": loaded.error})
                    bar.update(1)
                    continue
                h, w = loaded.pixels.shape[:2]
                ids.append({**entry, "height": h, "width": w, "mask": f"masks/{loaded.image.name}.png"})
                batch.append(loaded)
                if len(batch) == args.batch:
                    flush(batch)
                    batch = []
            if batch:
                flush(batch)
            for f in pending:
                f.result()
        t.wall = time.perf_counter() - t0
        if segmenter is not None:
            summary.sam_encoder_calls, summary.sam_decoder_calls = segmenter.encoder_calls, segmenter.decoder_calls
        summary.detector_calls = detector.calls if detector is not None else 0
        predictions.sort(key=lambda p: (p["image_id"], -p["score"]))
        (tmp / "predictions.json").write_text(json.dumps(predictions))
        (tmp / "image_ids.json").write_text(json.dumps(ids, indent=1))
        (tmp / "summary.json").write_text(json.dumps(_summary_dict(summary, args, source, device, dtype, names), indent=2))
    return summary, segmenter


def _category_mismatch(source: Source, names: dict[int, str]) -> list[str]:
    cats = {int(c["id"]): (c.get("name"), c.get("prompt")) for c in source.coco.get("categories", []) if "id" in c}
    bad = [f"{cid}: model '{n}' vs json {cats.get(cid, ('missing',))[0]!r}"
           for cid, n in names.items() if cats and n not in cats.get(cid, ())]
    return [f"{source.origin}: category ids differ from the model's classes ({'; '.join(bad)})"] if bad else []


def _summary_dict(s: Summary, args: argparse.Namespace, source: Source, device, dtype, names) -> dict:
    return {
        "images": s.images, "skipped": s.skipped, "images_with_detections": s.images_with_detections,
        "detections": sum(s.detections.values()), "detections_per_class": dict(sorted(s.detections.items())),
        "categories": {str(k): v for k, v in sorted(names.items())},
        "sam_encoder_calls": s.sam_encoder_calls, "sam_decoder_calls": s.sam_decoder_calls,
        "detector_calls": s.detector_calls, "images_per_s": round(s.images_per_s, 4),
        "timings_s": s.timings.as_dict(), "device": str(device), "autocast": str(dtype).replace("torch.", "") if dtype else None,
        "source": {"kind": source.kind, "origin": source.origin},
        "mode": "gt_boxes" if args.gt_boxes else ("box_only" if args.box_only else "detector+sam"),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "warnings": s.warnings,
    }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        summary, _ = run(args, progress=not args.quiet)
    except (DatasetError, DeviceError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary.line(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
