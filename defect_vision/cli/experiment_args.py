"""The options `defect-vision openvocab` and `defect-vision curve` share: where the converted category is, the
detector fine-tune every run uses (YOLO-World or YOLOE: the family of --model / --model-cfg), and `--fast` (the CPU
setting for the synthetic category: random-init nano YOLO-World, or --model-cfg's model, with a random text encoder,
64 px, 3 epochs; tiny random-init SAM)."""
from __future__ import annotations

import argparse
from pathlib import Path

from defect_vision.cli.common import CategoryPaths, add_force

FAST = {"from_scratch": True, "model_cfg": "yolov8n-worldv2.yaml", "text_encoder": "random", "imgsz": 64,
        "epochs": 3, "batch": 8, "workers": 0}
FAST_OVERRIDES = {"mosaic": 0.0}


def add_common(p: argparse.ArgumentParser) -> None:
    from defect_vision.models.text_embeddings import (
        DEFAULT_CACHE_DIR,
        DEFAULT_CLIP,
        ENCODERS,
    )
    from defect_vision.training.yolo_world import DetectorTrainConfig as D

    p.add_argument("--category", required=True, help="a converted category (defect-vision convert)")
    p.add_argument("--datasets", type=Path, default=Path("datasets"), help="the converted data: DIR/{coco,yolo,sam}/<C>")
    p.add_argument("--runs", type=Path, default=Path("runs"), help="runs folder: the output goes to DIR/<C>/<command>")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default: <runs>/<C>/<command>); replaced only when the run completes; a "
                        "symlink to a folder is written into that folder")
    p.add_argument("--fast", action="store_true",
                   help="CPU setting for the synthetic category: --from-scratch yolov8n-worldv2, --text-encoder random, "
                        "--imgsz 64, --epochs 3, mosaic=0, SAM vit_tiny random-init (explicit options still win)")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--model", type=Path, default=None, help=f"start weights [{D.model}]")
    start.add_argument("--from-scratch", action="store_true", default=None, help="random-init model from --model-cfg")
    p.add_argument("--model-cfg", default=None,
                   help=f"model yaml of --from-scratch [{D.model_cfg}; --fast yolov8n-worldv2.yaml]; a YOLOE yaml "
                        "(yoloe-11s-seg.yaml) runs the experiment on YOLOE (-seg: polygon labels, convert --task segment)")
    p.add_argument("--text-encoder", choices=ENCODERS, default=None, help=f"[{D.text_encoder}]")
    p.add_argument("--clip", type=Path, default=DEFAULT_CLIP, help="OpenAI-format CLIP ViT-B-32 weights file")
    p.add_argument("--embedding-cache", type=Path, default=DEFAULT_CACHE_DIR, help="prompt-embedding cache folder")
    p.add_argument("--prompt-template", default=D.prompt_template, help="prompt per phrasing ({name}, {category})")
    p.add_argument("--tune-prompts", action="store_true", help="every fine-tune tunes the class embeddings")
    p.add_argument("--prompt-reg", type=float, default=D.prompt_reg, help="L2 pull of tuned embeddings to CLIP")
    p.add_argument("--prompt-only", action="store_true", help="only the embeddings train (YOLO-World prompt tuning)")
    p.add_argument("--epochs", type=int, default=None, help=f"detector epochs per fine-tune [{D.epochs}; --fast 3]")
    p.add_argument("--imgsz", type=int, default=None, help=f"detector image size [{D.imgsz}; --fast 64]")
    p.add_argument("--batch", type=int, default=None, help=f"detector batch [{D.batch}]")
    p.add_argument("--workers", type=int, default=None, help=f"data-loading workers [{D.workers}; --fast 0]")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda:N")
    p.add_argument("--seed", type=int, default=0, help="training seed")
    p.add_argument("--conf", type=float, default=0.01, help="detector confidence (low on purpose: AP needs low scores)")
    p.add_argument("--score-threshold", type=float, default=0.25,
                   help="mask IoU counts detections at or above this score (AP uses all)")
    add_force(p)
    p.add_argument("overrides", nargs="*", metavar="key=value", help="extra ultralytics training arguments")


def _pick(value, fast: bool, key: str, default):
    return value if value is not None else (FAST[key] if fast else default)


def train_template(a: argparse.Namespace, out: Path):
    """The DetectorTrainConfig every fine-tune of the experiment starts from (data, coco, out set per run)."""
    from defect_vision.cli.train_detector import parse_overrides
    from defect_vision.training.yolo_world import DetectorTrainConfig as D

    fast = a.fast
    overrides = {**(FAST_OVERRIDES if fast else {}), **parse_overrides(a.overrides)}
    return D(category=a.category, data=out / "unset", coco=out / "unset", out=out / "unset",
             model=a.model or D.model, from_scratch=bool(_pick(a.from_scratch, fast, "from_scratch", False)),
             model_cfg=_pick(a.model_cfg, fast, "model_cfg", D.model_cfg),
             text_encoder=_pick(a.text_encoder, fast, "text_encoder", D.text_encoder), clip=a.clip,
             embedding_cache=a.embedding_cache, prompt_template=a.prompt_template, tune_prompts=a.tune_prompts,
             prompt_reg=a.prompt_reg, prompt_only=a.prompt_only, epochs=_pick(a.epochs, fast, "epochs", D.epochs),
             imgsz=_pick(a.imgsz, fast, "imgsz", D.imgsz), batch=_pick(a.batch, fast, "batch", D.batch),
             workers=_pick(a.workers, fast, "workers", D.workers), device=a.device, seed=a.seed, plots=not fast,
             overrides=overrides)


def export_of(a: argparse.Namespace):
    from defect_vision.experiments.subsets import Export

    paths = CategoryPaths(a.category, a.datasets, a.runs)
    return Export(paths.format_dir("coco"), paths.format_dir("yolo"), paths.format_dir("sam")), paths
