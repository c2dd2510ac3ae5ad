"""Fine-tune YOLO-World on defect boxes, offline, with class prompts encoded by the project's own CLIP.

python -m finetune.yolo_world --category wood [--from-scratch] [--text-encoder random] [key=value ...]
writes <out>/best.pt (class names + text embeddings baked in: `YOLOWorld(path).predict()` needs no text
encoder) and <out>/best.json (classes, prompts, encoder, data hash, zero-shot and fine-tuned metrics).
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import math
import sys
import time
from pathlib import Path

import yaml

from converters.errors import DatasetError
from converters.io import atomic_path, atomic_write_text
from converters.mvtec import IMAGE_SUFFIXES
from finetune.offline import go_offline, strip_network_callbacks
from finetune.text_embeddings import DEFAULT_CACHE_DIR, DEFAULT_CLIP, ENCODERS, RANDOM_WARNING, MissingWeightsError, encode_prompts

LOG = logging.getLogger("defect_vision.yolo_world")
WORLD_V2_URL = "https://github.com/ultralytics/assets/releases/download/v8.4.0/{name}"
SEED_REPORT_DEFAULTS = {"optimizer": "Adam", "lr0": 1e-3, "cos_lr": True, "epochs": 50}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="finetune_yolo_world",
        description="Fine-tune YOLO-World (ultralytics) on the YOLO export of a category, with class prompts from "
        "the COCO export encoded by a local CLIP ViT-B-32; offline. Extra key=value arguments are passed to "
        "ultralytics' trainer (e.g. mosaic=0 close_mosaic=0 patience=20).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--category", required=True, help="category name, e.g. wood")
    p.add_argument("--data", type=Path, help="ultralytics data.yaml (default: datasets/yolo/<category>/data.yaml)")
    p.add_argument("--coco", type=Path, help="COCO export folder whose categories[].prompt give the prompts "
                   "(default: datasets/coco/<category>; if missing, prompt = class name with '_' -> ' ')")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--model", type=Path, default=Path("weights/yolov8s-worldv2.pt"),
                       help="start weights: any YOLO-World v2 checkpoint (s/m/l/x)")
    start.add_argument("--from-scratch", action="store_true",
                       help="random-init model from --model-cfg instead of start weights (tests/smoke runs)")
    p.add_argument("--model-cfg", default="yolov8s-worldv2.yaml",
                   help="model yaml for --from-scratch (ultralytics built-in or a file; scale from the name, e.g. yolov8n-worldv2.yaml)")
    p.add_argument("--text-encoder", choices=ENCODERS, default="clip",
                   help="clip: open-clip ViT-B-32 with OpenAI weights from --clip; random: fixed random vectors (tests only)")
    p.add_argument("--clip", type=Path, default=DEFAULT_CLIP, help="OpenAI-format CLIP ViT-B-32 weights file")
    p.add_argument("--embedding-cache", type=Path, default=DEFAULT_CACHE_DIR,
                   help="folder of cached prompt embeddings keyed by (encoder, weights sha256, prompt)")
    p.add_argument("--prompt-template", default="{name}",
                   help="prompt per class; {name} = the COCO prompt (e.g. 'faulty imprint'), {category} = the category")
    p.add_argument("--epochs", type=int, default=SEED_REPORT_DEFAULTS["epochs"], help="training epochs")
    p.add_argument("--imgsz", type=int, default=640, help="training/validation image size")
    p.add_argument("--batch", type=int, default=8, help="batch size")
    p.add_argument("--device", default="auto", help="auto (cuda:0 if available, else cpu), cpu, or cuda:N")
    p.add_argument("--workers", type=int, default=4, help="data-loading worker processes")
    p.add_argument("--optimizer", default=SEED_REPORT_DEFAULTS["optimizer"],
                   help="ultralytics optimizer (Adam, AdamW, SGD, auto, ...); seed-report default")
    p.add_argument("--lr0", type=float, default=SEED_REPORT_DEFAULTS["lr0"], help="initial learning rate")
    p.add_argument("--cos-lr", action=argparse.BooleanOptionalAction, default=SEED_REPORT_DEFAULTS["cos_lr"],
                   help="cosine learning-rate schedule")
    p.add_argument("--freeze", type=int, default=None, help="freeze the first N model layers (backbone = 10)")
    p.add_argument("--balanced", action="store_true",
                   help="class-balanced sampling: repeat images by LVIS repeat factor from per-class image frequency")
    p.add_argument("--eval-zero-shot", action="store_true",
                   help="first evaluate the start model with the defect prompts on the val split (zero-shot baseline)")
    p.add_argument("--plots", action=argparse.BooleanOptionalAction, default=True,
                   help="ultralytics plots (fonts come from matplotlib; nothing is downloaded)")
    p.add_argument("--out", type=Path, help="run folder (default: runs/<category>/yolo_world)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from <out>/weights/last.pt")
    p.add_argument("--seed", type=int, default=0, help="random seed (training is deterministic where torch allows)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="extra ultralytics training arguments")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    args.data = args.data or Path("datasets/yolo") / args.category / "data.yaml"
    args.coco = args.coco or Path("datasets/coco") / args.category
    args.out = args.out or Path("runs") / args.category / "yolo_world"
    return args


def parse_overrides(items: list[str]) -> dict:
    """`key=value` strings -> dict with YAML-typed values; keys must be ultralytics train arguments."""
    from ultralytics.cfg import DEFAULT_CFG_DICT

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise DatasetError(f"{item}: extra arguments must be key=value ultralytics overrides")
        if key not in DEFAULT_CFG_DICT:
            raise DatasetError(f"{item}: '{key}' is not an ultralytics argument")
        out[key] = yaml.safe_load(value)
    return out


def resolve_device(device: str) -> str:
    """The CLI's auto|cpu|cuda:N -> ultralytics' device string."""
    import torch

    if device == "auto":
        return "0" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        return device.partition(":")[2] or "0"
    return device


def text_encoder_device(device: str) -> str:
    """ultralytics' device string ("cpu", "0", "1,2", "mps") -> the torch device the CLIP text tower runs on."""
    if device in ("cpu", "mps"):
        return "cpu"
    return f"cuda:{device.split(',')[0]}"


def read_data_yaml(path: Path) -> dict:
    if not path.is_file():
        raise DatasetError(f"{path}: no such file (run converters/mvtec_to_yolo.py for the category first)")
    try:
        data = yaml.safe_load(path.read_text())
        names = data["names"]
        names = names if isinstance(names, dict) else dict(enumerate(names))
    except (yaml.YAMLError, TypeError, KeyError) as exc:
        raise DatasetError(f"{path}: not an ultralytics data.yaml ({exc.__class__.__name__}: {exc})") from None
    if not names:
        raise DatasetError(f"{path}: no class names")
    data["names"] = {int(k): str(v) for k, v in names.items()}
    bad = [n for n in data["names"].values() if "/" in n]
    if bad:
        raise DatasetError(f"{path}: class names must not contain '/': {bad}")
    return data


def small_data_settings(data_yaml: Path, data: dict, batch: int, epochs: int) -> dict:
    """Ultralytics' defaults assume thousands of images: gradients accumulated to a nominal batch of 64 and at
    least 100 warm-up iterations. On a few dozen defect images that means one optimizer step every few epochs,
    all of them in warm-up. Below those sizes, step every batch and skip the warm-up."""
    root = Path(data.get("path") or data_yaml.parent)
    train = root / str(data.get("train", "images/train"))
    n_train = sum(1 for p in train.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if train.is_dir() else 0
    if batch <= 0 or n_train == 0:
        return {}
    settings = {}
    if n_train < 4 * 64:
        settings["nbs"] = batch
    if epochs * math.ceil(n_train / batch) < 400:
        settings["warmup_epochs"] = 0
    if settings:
        LOG.info("small dataset (%d training images): %s (override with key=value)", n_train,
                 ", ".join(f"{k}={v}" for k, v in settings.items()))
    return settings


def class_prompts(names: list[str], coco_dir: Path, template: str, category: str) -> tuple[list[str], list[int]]:
    """(prompts, COCO category ids) per YOLO class; prompts from the COCO export's categories[].prompt."""
    base = {n: n.replace("_", " ") for n in names}
    ids = list(range(1, len(names) + 1))
    coco = next((coco_dir / f"instances_{s}.json" for s in ("train", "val", "test") if (coco_dir / f"instances_{s}.json").is_file()), None)
    if coco is None:
        LOG.warning("%s: no COCO export; prompts are the class names with '_' -> ' '", coco_dir)
    else:
        try:
            cats = sorted(json.loads(coco.read_text())["categories"], key=lambda c: c["id"])
        except (ValueError, KeyError, TypeError) as exc:
            raise DatasetError(f"{coco}: not a COCO instances file ({exc.__class__.__name__})") from None
        if [c["name"] for c in cats] != names:
            raise DatasetError(f"{coco}: categories {[c['name'] for c in cats]} do not match data.yaml names {names}")
        base = {c["name"]: c.get("prompt") or c["name"].replace("_", " ") for c in cats}
        ids = [int(c["id"]) for c in cats]
    try:
        prompts = [template.format(name=base[n], category=category.replace("_", " ")) for n in names]
    except (KeyError, IndexError, ValueError) as exc:
        raise DatasetError(f"--prompt-template {template!r}: unknown placeholder {exc} (use {{name}} and {{category}})") from None
    return prompts, ids


def data_hash(data_yaml: Path, data: dict) -> str:
    """sha256 over class names and, for train and val, each image's name, size and label file."""
    from ultralytics.data.utils import IMG_FORMATS, img2label_paths

    root = Path(data.get("path") or data_yaml.parent)
    if not root.is_absolute():
        root = (data_yaml.parent / root).resolve()
    h = hashlib.sha256(json.dumps(data["names"], sort_keys=True).encode())
    for split in ("train", "val"):
        folder = root / str(data.get(split, ""))
        if not folder.is_dir():
            raise DatasetError(f"{data_yaml}: {split} folder {folder} does not exist")
        images = sorted(p for p in folder.rglob("*") if p.suffix[1:].lower() in IMG_FORMATS)
        if split == "train" and not images:
            raise DatasetError(f"{folder}: no training images")
        for img, lab in zip(images, img2label_paths([str(p) for p in images])):
            h.update(f"{split}/{img.relative_to(folder)}:{img.stat().st_size}\n".encode())
            h.update(Path(lab).read_bytes() if Path(lab).is_file() else b"<no label>")
    return h.hexdigest()


def start_model(args: argparse.Namespace) -> tuple[str, str]:
    """(what ultralytics builds the model from, "official" | "random-init")."""
    if args.from_scratch:
        from ultralytics.nn.tasks import yaml_model_load

        try:
            cfg = yaml_model_load(args.model_cfg)
        except Exception as exc:  # noqa: BLE001
            raise DatasetError(f"{args.model_cfg}: not a model yaml ({exc.__class__.__name__}: {exc})") from None
        if "world" not in Path(str(args.model_cfg)).stem or not any("WorldDetect" in str(layer) for layer in cfg.get("head", [])):
            raise DatasetError(f"{args.model_cfg}: not a YOLO-World model yaml (no WorldDetect head)")
        LOG.warning("=" * 72)
        LOG.warning("--from-scratch: %s with RANDOM initial weights, no pre-training; results are "
                    "for tests/smoke runs, not YOLO-World's open-vocabulary quality", args.model_cfg)
        LOG.warning("=" * 72)
        return str(args.model_cfg), "random-init"
    path = Path(args.model)
    if not path.is_file():
        raise MissingWeightsError(
            f"{path}: YOLO-World start weights not found; get them with `scripts/download_weights.sh` or "
            f"`curl -L -o {path} {WORLD_V2_URL.format(name=path.name if 'world' in path.name else 'yolov8s-worldv2.pt')}` "
            "(any of yolov8{s,m,l,x}-worldv2.pt), or pass --from-scratch for a random-init smoke run"
        )
    from ultralytics.nn.tasks import WorldModel, load_checkpoint

    try:
        model, _ = load_checkpoint(str(path), device="cpu")
    except Exception as exc:  # noqa: BLE001
        raise DatasetError(f"{path}: not a readable ultralytics checkpoint ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(model, WorldModel):
        raise DatasetError(f"{path}: a {type(model).__name__}, not a YOLO-World (WorldModel) checkpoint")
    return str(path.resolve()), "official"


def box_metrics(validator, names: list[str]) -> dict:
    """{map50, map50_95, per_class {name: {ap50, ap50_95} | null}} from a finished ultralytics DetectionValidator."""
    box = validator.metrics.box
    per_class = {n: None for n in names}
    for i, c in enumerate(validator.metrics.ap_class_index):
        per_class[names[int(c)]] = {"ap50": round(float(box.ap50[i]), 4), "ap50_95": round(float(box.ap[i]), 4)}
    return {"map50": round(float(box.map50), 4), "map50_95": round(float(box.map), 4), "per_class": per_class}


def evaluate_start_model(model_spec: str, from_scratch: bool, data: Path, names: list[str], embeddings, args, device: str,
                         save_dir: Path) -> dict:
    """Zero-shot baseline: the start model with the defect prompts' embeddings, on the val split."""
    import torch
    from ultralytics.models.yolo.detect import DetectionValidator
    from ultralytics.nn.tasks import WorldModel, load_checkpoint
    from ultralytics.utils.torch_utils import init_seeds

    from finetune.world_trainer import set_class_embeddings

    init_seeds(args.seed)
    if from_scratch:
        model = WorldModel(model_spec, nc=len(names), verbose=False)
    else:
        model = load_checkpoint(model_spec, device="cpu")[0]
    model = model.float().eval()
    set_class_embeddings(model, names, embeddings)
    validator = DetectionValidator(save_dir=save_dir, args=dict(
        data=str(data), split="val", imgsz=args.imgsz, batch=args.batch, device=device, plots=False,
        save_json=False, half=False, workers=min(args.workers, 2), verbose=False, seed=args.seed))
    strip_network_callbacks(validator)
    with torch.no_grad():
        validator(model=model)
    return box_metrics(validator, names)


def read_history(results_csv: Path) -> list[dict]:
    """Per-epoch {epoch, loss (box+cls+dfl), map50, map50_95} from ultralytics' results.csv."""
    if not results_csv.is_file():
        return []
    rows = []
    with open(results_csv) as f:
        for row in csv.DictReader(f):
            row = {k.strip(): v for k, v in row.items()}
            rows.append({
                "epoch": int(float(row["epoch"])),
                "loss": round(sum(float(row[k]) for k in ("train/box_loss", "train/cls_loss", "train/dfl_loss")), 5),
                "map50": round(float(row.get("metrics/mAP50(B)", "nan")), 4),
                "map50_95": round(float(row.get("metrics/mAP50-95(B)", "nan")), 4),
            })
    return rows


def check_resumable(last: Path, out: Path) -> None:
    """DatasetError unless `last` is an interrupted run's checkpoint (a finished run's last.pt has no optimizer)."""
    import torch

    if not last.is_file():
        raise DatasetError(f"{last}: nothing to resume (no interrupted run in {out})")
    try:
        ckpt = torch.load(last, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001
        raise DatasetError(f"{last}: not a readable checkpoint ({exc.__class__.__name__}: {exc})") from None
    if ckpt.get("optimizer") is None:
        epochs = (ckpt.get("train_args") or {}).get("epochs", "?")
        raise DatasetError(f"{last}: the run in {out} finished ({epochs} epochs); nothing to resume "
                           "(start a new run without --resume, or raise --epochs in a new --out)")


def save_final(best_src: Path, out: Path, meta: dict) -> None:
    """<out>/best.pt (ultralytics checkpoint + our metadata) and <out>/best.json, each written atomically."""
    import torch

    ckpt = torch.load(best_src, map_location="cpu", weights_only=False)
    ckpt["defect_vision"] = {k: meta[k] for k in ("classes", "category_ids", "prompts", "text_encoder", "weights", "data_hash")}
    with atomic_path(out / "best.pt") as tmp:
        torch.save(ckpt, tmp)
    atomic_write_text(out / "best.json", json.dumps(meta, indent=2) + "\n")


def run(args: argparse.Namespace, callbacks: dict | None = None) -> dict:
    """The whole stage; returns best.json's content. `callbacks` {event: [fn]} are added to the trainer (tests)."""
    go_offline()
    t0 = time.time()
    overrides = parse_overrides(args.overrides)
    data = read_data_yaml(args.data)
    names = [data["names"][i] for i in sorted(data["names"])]
    prompts, category_ids = class_prompts(names, args.coco, args.prompt_template, args.category)
    dhash = data_hash(args.data, data)
    out = args.out.resolve()
    last = out / "weights" / "last.pt"
    if args.resume:
        check_resumable(last, out)
    model_spec, weights_tag = start_model(args)
    device = resolve_device(args.device)
    embeddings, enc = encode_prompts(prompts, args.text_encoder, args.clip, args.embedding_cache,
                                     device=text_encoder_device(device))
    if args.text_encoder == "random":
        print(f"WARNING: {RANDOM_WARNING}", file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)

    zero_shot = None
    if args.eval_zero_shot:
        LOG.info("zero-shot baseline of %s on the val split", model_spec)
        zero_shot = evaluate_start_model(model_spec, args.from_scratch, args.data, names, embeddings, args, device,
                                         out / "zero_shot")

    from finetune.world_trainer import DefectWorldTrainer

    train_args = dict(
        model=model_spec, data=str(args.data.resolve()), epochs=args.epochs, imgsz=args.imgsz, batch=args.batch,
        device=device, workers=args.workers, optimizer=args.optimizer, lr0=args.lr0, cos_lr=args.cos_lr,
        seed=args.seed, deterministic=True, project=str(out.parent), name=out.name, exist_ok=True,
        plots=args.plots, val=True, pretrained=not args.from_scratch, verbose=True,
    )
    if args.freeze is not None:
        train_args["freeze"] = args.freeze
    train_args.update(small_data_settings(args.data, data, args.batch, args.epochs))
    train_args.update(overrides)
    if args.resume:
        train_args["resume"] = str(last)
    trainer = DefectWorldTrainer(overrides=train_args, class_embeddings=dict(zip(names, embeddings)),
                                 balanced=args.balanced)
    for event, fns in (callbacks or {}).items():
        for fn in fns:
            trainer.add_callback(event, fn)
    trainer.train()
    if Path(trainer.save_dir).resolve() != out:
        raise RuntimeError(f"ultralytics wrote to {trainer.save_dir}, expected {out}")
    best = out / "weights" / "best.pt"
    if not best.is_file():
        raise RuntimeError(f"{best}: training finished without a best checkpoint")
    meta = {
        "classes": names,
        "category_ids": category_ids,
        "prompts": prompts,
        "prompt_template": args.prompt_template,
        "text_encoder": "random" if args.text_encoder == "random" else enc["encoder"],
        "text_encoder_weights_sha256": enc["weights_sha256"],
        "data": str(args.data.resolve()),
        "data_hash": dhash,
        "metrics": {"zero_shot": zero_shot, "fine_tuned": box_metrics(trainer.validator, names)},
        "weights": weights_tag,
        "start_model": model_spec,
        "epochs": int(trainer.epochs),
        "imgsz": int(trainer.args.imgsz),
        "balanced": bool(args.balanced),
        "seed": args.seed,
        "history": read_history(out / "results.csv"),
        "seconds": round(time.time() - t0, 1),
    }
    if args.text_encoder == "random":
        meta["warning"] = RANDOM_WARNING
    save_final(best, out, meta)
    return meta


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    try:
        meta = run(args)
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    ft, zs = meta["metrics"]["fine_tuned"], meta["metrics"]["zero_shot"]
    zs_txt = f" (zero-shot {zs['map50']:.3f})" if zs else ""
    print(f"yolo_world: {args.out / 'best.pt'}: {len(meta['classes'])} classes, {meta['epochs']} epochs, "
          f"val box mAP50 {ft['map50']:.3f}{zs_txt}, mAP50-95 {ft['map50_95']:.3f}, "
          f"text encoder {meta['text_encoder']}, {meta['weights']} weights, {meta['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
