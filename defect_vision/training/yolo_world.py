"""Fine-tune YOLO-World on defect boxes, offline, with class prompts encoded by the project's own CLIP.

`finetune_detector(DetectorTrainConfig(...))` writes <out>/best.pt (class names + text embeddings baked in:
`YOLOWorld(path).predict()` needs no text encoder) and <out>/best.json (classes, prompts, encoder, data hash,
zero-shot and fine-tuned metrics), and returns best.json's content. The command line is
`defect-vision train-detector` (defect_vision/cli/train_detector.py).

Interrupted runs: `resume=True` continues <out>/weights/last.pt; a run whose training finished but whose final
step (validation of best.pt, best.pt + best.json) was interrupted is completed without training again. A
checkpoint truncated by a kill is detected by loading it and replaced by the other one, with a warning.
"""
from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from defect_vision.data.images import IMAGE_SUFFIXES
from defect_vision.devices import ultralytics_device
from defect_vision.errors import DatasetError
from defect_vision.io import MARKER, atomic_write_text, check_output_dir, remove_stale_temps, torch_save
from defect_vision.models.text_embeddings import (DEFAULT_CACHE_DIR, DEFAULT_CLIP, ENCODERS, RANDOM_WARNING,
                                                  MissingWeightsError)
from defect_vision.offline import go_offline, strip_network_callbacks

LOG = logging.getLogger("defect_vision.yolo_world")
KIND = "train-detector"  # the output folder's marker kind
WORLD_V2_URL = "https://github.com/ultralytics/assets/releases/download/v8.4.0/{name}"
SEED_REPORT_DEFAULTS = {"optimizer": "Adam", "lr0": 1e-3, "cos_lr": True, "epochs": 50}


@dataclass
class DetectorTrainConfig:
    """Everything one fine-tuning run needs; `overrides` are extra ultralytics train arguments (key -> value)."""

    category: str
    data: Path  # ultralytics data.yaml (the YOLO export)
    coco: Path  # COCO export folder whose categories[].prompt give the prompts
    out: Path  # run folder
    model: Path = Path("weights/yolov8s-worldv2.pt")  # start weights (any YOLO-World v2 checkpoint)
    from_scratch: bool = False  # random-init model from model_cfg instead of `model`
    model_cfg: str = "yolov8s-worldv2.yaml"
    text_encoder: str = "clip"  # clip | random (tests only)
    clip: Path = DEFAULT_CLIP
    embedding_cache: Path | None = DEFAULT_CACHE_DIR
    prompt_template: str = "{name}"
    prompts: Path | None = None  # prompts.yaml (class -> phrasings); default: <coco>/prompts.yaml when present
    tune_prompts: bool = False  # learnable class embeddings initialised from CLIP (saved in best.pt)
    prompt_reg: float = 1.0  # L2 pull of tuned embeddings towards their CLIP initialisation
    prompt_only: bool = False  # YOLO-World's prompt tuning: only the embeddings train (implies tune_prompts)
    encoder: Callable | None = field(default=None, repr=False)  # stand-in text encoder (tests): list[str] -> (N, 512)
    epochs: int = SEED_REPORT_DEFAULTS["epochs"]
    imgsz: int = 640
    batch: int = 8
    device: str = "auto"
    workers: int = 4
    optimizer: str = SEED_REPORT_DEFAULTS["optimizer"]
    lr0: float = SEED_REPORT_DEFAULTS["lr0"]
    cos_lr: bool = SEED_REPORT_DEFAULTS["cos_lr"]
    freeze: int | None = None
    balanced: bool = False
    eval_zero_shot: bool = False
    plots: bool = True
    resume: bool = False
    seed: int = 0
    force: bool = False  # replace an --out folder that is not a previous train-detector output
    overrides: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("data", "coco", "out", "model", "clip"):
            setattr(self, name, Path(getattr(self, name)))
        if self.prompts is not None:
            self.prompts = Path(self.prompts)
        self.tune_prompts = self.tune_prompts or self.prompt_only
        if self.prompt_reg < 0:
            raise DatasetError(f"--prompt-reg {self.prompt_reg}: must be >= 0")
        if self.embedding_cache is not None:
            self.embedding_cache = Path(self.embedding_cache)
        if self.text_encoder not in ENCODERS:
            raise DatasetError(f"--text-encoder {self.text_encoder}: choose from {', '.join(ENCODERS)}")


def check_overrides(overrides: dict) -> dict:
    """The overrides, if every key is an ultralytics train argument; DatasetError naming the first that is not."""
    from ultralytics.cfg import DEFAULT_CFG_DICT

    for key, value in overrides.items():
        if key not in DEFAULT_CFG_DICT:
            raise DatasetError(f"{key}={value}: '{key}' is not an ultralytics argument")
    return dict(overrides)


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


def prompts_file(config: DetectorTrainConfig) -> Path | None:
    """--prompts, else <coco>/prompts.yaml when the converters wrote one, else None."""
    if config.prompts is not None:
        return config.prompts
    default = config.coco / "prompts.yaml"
    return default if default.is_file() else None


def class_phrasings(names: list[str], coco_dir: Path, template: str, category: str,
                    prompts_path: Path | None = None) -> tuple[list[list[str]], list[int]]:
    """(phrasings, COCO category ids) per YOLO class: prompts.yaml's phrasings when given (classes it does not list
    keep their COCO prompt), each through the template; the first phrasing is the class's prompt."""
    from defect_vision.data.source import load_phrasings
    from defect_vision.models.prompts import templated

    prompts, ids = class_prompts(names, coco_dir, "{name}", category)
    table = load_phrasings(prompts_path, "prompts") if prompts_path is not None else {}
    unknown = sorted(set(table) - set(names))
    if unknown:
        raise DatasetError(f"{prompts_path}: classes {', '.join(unknown)} are not in the training data "
                           f"(its classes: {', '.join(names)})")
    return templated([table.get(n) or [p] for n, p in zip(names, prompts)], template, category), ids


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


def start_model(config: DetectorTrainConfig) -> tuple[str, str]:
    """(what ultralytics builds the model from, "official" | "random-init")."""
    if config.from_scratch:
        from ultralytics.nn.tasks import yaml_model_load

        try:
            cfg = yaml_model_load(config.model_cfg)
        except Exception as exc:  # noqa: BLE001
            raise DatasetError(f"{config.model_cfg}: not a model yaml ({exc.__class__.__name__}: {exc})") from None
        if "world" not in Path(str(config.model_cfg)).stem or not any("WorldDetect" in str(layer) for layer in cfg.get("head", [])):
            raise DatasetError(f"{config.model_cfg}: not a YOLO-World model yaml (no WorldDetect head)")
        LOG.warning("=" * 72)
        LOG.warning("--from-scratch: %s with RANDOM initial weights, no pre-training; results are "
                    "for tests/smoke runs, not YOLO-World's open-vocabulary quality", config.model_cfg)
        LOG.warning("=" * 72)
        return str(config.model_cfg), "random-init"
    path = Path(config.model)
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


def evaluate_start_model(model_spec: str, config: DetectorTrainConfig, names: list[str], embeddings, device: str,
                         save_dir: Path) -> dict:
    """Zero-shot baseline: the start model with the defect prompts' embeddings, on the val split."""
    import torch
    from ultralytics.models.yolo.detect import DetectionValidator
    from ultralytics.nn.tasks import WorldModel, load_checkpoint
    from ultralytics.utils.torch_utils import init_seeds

    from defect_vision.training.world_trainer import set_class_embeddings

    init_seeds(config.seed)
    if config.from_scratch:
        model = WorldModel(model_spec, nc=len(names), verbose=False)
    else:
        model = load_checkpoint(model_spec, device="cpu")[0]
    model = model.float().eval()
    set_class_embeddings(model, names, embeddings)
    validator = DetectionValidator(save_dir=save_dir, args=dict(
        data=str(config.data), split="val", imgsz=config.imgsz, batch=config.batch, device=device, plots=False,
        save_json=False, half=False, workers=min(config.workers, 2), verbose=False, seed=config.seed))
    strip_network_callbacks(validator)
    with torch.no_grad():
        validator(model=model)
    return box_metrics(validator, names)


def validate_checkpoint(path: Path, data: Path, names: list[str], imgsz: int, batch: int, device: str, workers: int,
                        seed: int, plots: bool, save_dir: Path) -> dict:
    """Box metrics of a saved checkpoint on the val split, as ultralytics' final validation computes them (used
    when that validation did not run in this process: an interrupted final step, or DDP workers)."""
    from ultralytics.models.yolo.detect import DetectionValidator

    validator = DetectionValidator(save_dir=save_dir, args=dict(
        model=str(path), data=str(data), split="val", imgsz=imgsz, batch=batch * 2, device=device, plots=plots,
        save_json=False, half=False, workers=min(workers, 2), verbose=False, seed=seed,
        rect=True))  # the trainer's val loader: rectangular batches (batch x 2), which change the letterbox
    strip_network_callbacks(validator)
    validator(model=str(path))
    return box_metrics(validator, names)


def read_history(results_csv: Path) -> list[dict]:
    """Per-epoch {epoch, loss (box+cls+dfl), map50, map50_95} from ultralytics' results.csv (one row per epoch:
    should an epoch appear twice, its last row counts)."""
    if not results_csv.is_file():
        return []
    rows = {}
    with open(results_csv) as f:
        for row in csv.DictReader(f):
            row = {k.strip(): v for k, v in row.items()}
            epoch = int(float(row["epoch"]))
            rows[epoch] = {
                "epoch": epoch,
                "loss": round(sum(float(row[k]) for k in ("train/box_loss", "train/cls_loss", "train/dfl_loss")), 5),
                "map50": round(float(row.get("metrics/mAP50(B)", "nan")), 4),
                "map50_95": round(float(row.get("metrics/mAP50-95(B)", "nan")), 4),
            }
    return [rows[e] for e in sorted(rows)]


def trim_results(results_csv: Path, last_epoch: int) -> int:
    """Drop results.csv rows after `last_epoch` (1-based): epochs logged but not saved before an interruption are
    trained again on resume and would otherwise appear twice. Returns the number of rows dropped."""
    if not results_csv.is_file():
        return 0
    lines = results_csv.read_text().splitlines(keepends=True)
    if not lines:
        return 0
    kept = [lines[0]]
    for line in lines[1:]:
        try:
            epoch = int(float(line.split(",", 1)[0]))
        except ValueError:
            continue  # a half-written row (killed inside the append)
        if epoch <= last_epoch:
            kept.append(line)
    dropped = len(lines) - len(kept)
    if dropped:
        atomic_write_text(results_csv, "".join(kept))
        LOG.warning("%s: dropped %d row(s) after epoch %d (trained but not saved before the interruption; "
                    "they are trained again)", results_csv, dropped, last_epoch)
    return dropped


# ---------------------------------------------------------------- run state, resume
def read_run_state(out: Path) -> str | None:
    """'training' | 'finished' from the run folder's marker, or None (no marker, or one written before states)."""
    try:
        data = json.loads((out / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data.get("state") if isinstance(data, dict) and data.get("kind") == KIND else None


def write_run_state(out: Path, state: str) -> None:
    atomic_write_text(out / MARKER, json.dumps({"kind": KIND, "state": state,
                                                "written": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n")


@dataclass
class ResumePlan:
    """What --resume does: "train" (continue from `ckpt`, ultralytics' resume) or "finalize" (training finished,
    only the final validation and best.pt/best.json are missing). `source` is the checkpoint file read."""

    action: str
    source: Path
    ckpt: dict
    epochs: int


def _training_done(ckpt: dict) -> bool:
    """True when ultralytics would not train any further epoch from this checkpoint: the optimizer was stripped
    (final step reached), the last epoch was saved, or early stopping (patience) had fired."""
    if ckpt.get("optimizer") is None:
        return True
    args = ckpt.get("train_args") or {}
    done = int(ckpt.get("epoch", -1)) + 1
    if done >= int(args.get("epochs", 0)):
        return True
    patience, stopper = args.get("patience"), ckpt.get("stopper") or {}
    return bool(patience) and stopper.get("best_epoch") is not None and done - int(stopper["best_epoch"]) >= patience


def plan_resume(out: Path) -> ResumePlan:
    """Inspect (without writing) the interrupted run in `out`; DatasetError when there is nothing to resume."""
    from defect_vision.training.world_trainer import load_checkpoint_dict

    wdir = out / "weights"
    last, best = wdir / "last.pt", wdir / "best.pt"
    if not last.is_file():
        raise DatasetError(f"{last}: nothing to resume (no interrupted run in {out})")
    source, ckpt = last, load_checkpoint_dict(last)
    if ckpt is None:
        source, ckpt = best, load_checkpoint_dict(best)
        if ckpt is None:
            raise DatasetError(f"{last}: not a readable checkpoint (truncated by a kill?), and no readable {best} "
                               f"to fall back to; start a new run without --resume")
    epochs = int((ckpt.get("train_args") or {}).get("epochs", 0))
    if _training_done(ckpt):
        state = read_run_state(out)
        finished = state == "finished" if state else (out / "best.json").is_file() and (out / "best.pt").is_file()
        if finished:
            raise DatasetError(f"{last}: the run in {out} finished ({epochs} epochs); nothing to resume "
                               "(start a new run without --resume, or raise --epochs in a new --out)")
        return ResumePlan("finalize", source, ckpt, epochs)
    return ResumePlan("train", source, ckpt, epochs)


def repair_for_resume(out: Path, plan: ResumePlan) -> None:
    """Make weights/last.pt and weights/best.pt consistent before ultralytics resumes from last.pt: an unreadable
    last.pt is replaced by best.pt, an unreadable or stale best.pt by last.pt (warnings say what was lost), and
    results.csv loses the rows of epochs that were logged but not saved."""
    from defect_vision.training.world_trainer import copy_atomic, load_checkpoint_dict, save_atomic

    wdir = out / "weights"
    last, best = wdir / "last.pt", wdir / "best.pt"
    ckpt = plan.ckpt
    epoch = int(ckpt.get("epoch", -1)) + 1  # 1-based, as results.csv
    if plan.source == best:
        LOG.warning("%s: unreadable (truncated by a kill?); resuming from %s (epoch %d): later epochs are trained "
                    "again", last, best, epoch)
        copy_atomic(best, last)
    elif plan.action == "train":
        fitness = (ckpt.get("train_metrics") or {}).get("fitness")
        best_ckpt = load_checkpoint_dict(best)
        last_is_best = fitness is not None and ckpt.get("best_fitness") == fitness
        if best_ckpt is None:
            if last_is_best:
                LOG.warning("%s: missing or unreadable (truncated by a kill?); epoch %d was the best so far: "
                            "rewritten from %s", best, epoch, last)
            else:
                LOG.warning("%s: missing or unreadable (truncated by a kill?); the best epoch's weights are lost. "
                            "best.pt restarts from %s (epoch %d, fitness %.4g) and later epochs replace it when "
                            "better", best, last, epoch, fitness if fitness is not None else float("nan"))
                ckpt["best_fitness"] = fitness
                ckpt["stopper"] = {**(ckpt.get("stopper") or {}), "best_fitness": fitness or 0.0, "best_epoch": epoch}
                save_atomic(ckpt, last)
            copy_atomic(last, best)
        elif last_is_best and best_ckpt.get("epoch") != ckpt.get("epoch"):
            LOG.warning("%s: from epoch %s, but epoch %d was the best (interrupted between the two saves): "
                        "rewritten from %s", best, int(best_ckpt.get("epoch", -2)) + 1, epoch, last)
            copy_atomic(last, best)
    if plan.action == "train":  # a training checkpoint: its epoch is the last one saved
        trim_results(out / "results.csv", epoch)


def finished_checkpoint(out: Path) -> dict:
    """Make weights/best.pt a readable final checkpoint (optimizer stripped), falling back to last.pt with a
    warning when best.pt is missing or unreadable; strip last.pt too (so a later --resume says "finished").
    Returns best.pt's checkpoint dict."""
    from defect_vision.training.world_trainer import copy_atomic, load_checkpoint_dict, strip_optimizer_atomic

    wdir = out / "weights"
    last, best = wdir / "last.pt", wdir / "best.pt"
    last_ckpt = load_checkpoint_dict(last)
    if last_ckpt is not None and last_ckpt.get("optimizer") is not None:
        last_ckpt = strip_optimizer_atomic(last) or last_ckpt
    best_ckpt = load_checkpoint_dict(best)
    if best_ckpt is None:
        if last_ckpt is None:
            raise DatasetError(f"{wdir}: neither best.pt nor last.pt is a readable checkpoint; start a new run")
        LOG.warning("%s: missing or unreadable (truncated by a kill?); the final model is %s, the last epoch's "
                    "weights", best, last)
        copy_atomic(last, best)
        best_ckpt = load_checkpoint_dict(best)
    elif best_ckpt.get("optimizer") is not None:
        best_ckpt = strip_optimizer_atomic(best) or best_ckpt
    return best_ckpt


def save_final(ckpt: dict, out: Path, meta: dict) -> None:
    """<out>/best.pt (ultralytics checkpoint + our metadata) and <out>/best.json, each written atomically."""
    ckpt = dict(ckpt)
    keys = ("classes", "category_ids", "prompts", "text_encoder", "weights", "data_hash", "phrasings",
            "prompt_template", "category", "prompt_tuning")
    ckpt["defect_vision"] = {k: meta[k] for k in keys if k in meta}
    torch_save(ckpt, out / "best.pt")
    atomic_write_text(out / "best.json", json.dumps(meta, indent=2) + "\n")


def class_embeddings(config: DetectorTrainConfig, phrasings: list[list[str]], device: str):
    """((K, 512) class embeddings = normalised mean of each class's phrasings, encoder description)."""
    from defect_vision.models.prompts import ensemble, make_encoder

    if config.encoder is not None:
        info = {"encoder": "custom", "weights_sha256": None}
        return ensemble(config.encoder, phrasings), info
    encode, info = make_encoder(config.text_encoder, config.clip, config.embedding_cache, text_encoder_device(device))
    emb = ensemble(encode, phrasings)
    info.setdefault("weights_sha256", None)
    return emb, info


def tuning_summary(config: DetectorTrainConfig, ckpt: dict, names: list[str], init) -> dict:
    """best.json's prompt_tuning block: on/off, settings and, when tuned, each class's drift (1 - cos) from CLIP."""
    if not config.tune_prompts:
        return {"tuned": False}
    from defect_vision.training.prompt_tuning import drift

    model = ckpt.get("ema") or ckpt.get("model")
    tuned = model.txt_feats.reshape(len(names), -1).float()
    return {"tuned": True, "reg": config.prompt_reg, "prompt_only": config.prompt_only,
            "drift": drift(tuned, init, names)}


def finetune_detector(config: DetectorTrainConfig, callbacks: dict | None = None) -> dict:
    """The whole stage; returns best.json's content. `callbacks` {event: [fn]} are added to the trainer (tests).

    Bad input raises DatasetError (or a subclass) before anything is written to `config.out`."""
    go_offline()
    t0 = time.time()
    overrides = check_overrides(config.overrides)
    data = read_data_yaml(config.data)
    names = [data["names"][i] for i in sorted(data["names"])]
    pfile = prompts_file(config)
    phrasings, category_ids = class_phrasings(names, config.coco, config.prompt_template, config.category, pfile)
    prompts = [ps[0] for ps in phrasings]
    dhash = data_hash(config.data, data)
    device = ultralytics_device(config.device)
    if config.balanced and "," in device:
        raise DatasetError(f"--balanced --device {config.device}: class-balanced sampling is single-process; "
                           "train on one device, or drop --balanced")
    if config.tune_prompts and "," in device:
        raise DatasetError(f"--tune-prompts --device {config.device}: prompt tuning is single-process; "
                           "train on one device")
    out = config.out.resolve()
    plan = plan_resume(out) if config.resume else None
    if plan is None:
        data_root = Path(data.get("path") or config.data.parent)
        if not data_root.is_absolute():
            data_root = config.data.parent / data_root
        inputs = [config.data.parent, data_root, config.coco] + ([] if config.from_scratch else [config.model])
        check_output_dir(config.out, KIND, inputs=inputs, force=config.force)
    model_spec, weights_tag = start_model(config)
    embeddings, enc = class_embeddings(config, phrasings, device)
    if config.text_encoder == "random" and config.encoder is None:
        print(f"WARNING: {RANDOM_WARNING}", file=sys.stderr)

    out.mkdir(parents=True, exist_ok=True)
    for folder in (out, out / "weights"):
        remove_stale_temps(folder)
    write_run_state(out, "training")
    if plan is None:  # a new run: a previous run's checkpoints in this folder must not be resumed into it
        for stale in ("last.pt", "best.pt"):
            (out / "weights" / stale).unlink(missing_ok=True)
    else:
        repair_for_resume(out, plan)

    zero_shot = None
    if config.eval_zero_shot:
        LOG.info("zero-shot baseline of %s on the val split", model_spec)
        zero_shot = evaluate_start_model(model_spec, config, names, embeddings, device, out / "zero_shot")

    metrics = None
    if plan is not None and plan.action == "finalize":
        LOG.info("%s: training finished (%d epochs) but its final step did not: validating best.pt and writing "
                 "best.pt + best.json, no training", out, plan.epochs)
        if config.plots and (out / "results.csv").is_file():
            from ultralytics.utils.plotting import plot_results

            plot_results(file=out / "results.csv")  # results.png, as at the end of training
    else:
        trainer = train(config, out, model_spec, data, names, embeddings, device, overrides, plan, callbacks)
        if not trainer.ddp and trainer.validator is not None and trainer.validator.metrics is not None:
            metrics = box_metrics(trainer.validator, names)  # ultralytics' final validation of best.pt
    best_ckpt = finished_checkpoint(out)
    train_args = best_ckpt.get("train_args") or {}
    if metrics is None:
        metrics = validate_checkpoint(out / "weights" / "best.pt", config.data.resolve(), names,
                                      int(train_args.get("imgsz", config.imgsz)),
                                      max(1, int(train_args.get("batch", config.batch))),  # -1/0.x: AutoBatch
                                      device, config.workers, config.seed, config.plots, out)
    meta = {
        "classes": names,
        "category_ids": category_ids,
        "prompts": prompts,
        "prompt_template": config.prompt_template,
        "phrasings": phrasings,
        "prompts_file": str(pfile) if pfile else None,
        "category": config.category,
        "text_encoder": enc["encoder"],
        "text_encoder_weights_sha256": enc["weights_sha256"],
        "data": str(config.data.resolve()),
        "data_hash": dhash,
        "metrics": {"zero_shot": zero_shot, "fine_tuned": metrics},
        "weights": weights_tag,
        "start_model": model_spec,
        "epochs": int(train_args.get("epochs", config.epochs)),
        "imgsz": int(train_args.get("imgsz", config.imgsz)),
        "balanced": bool(config.balanced),
        "prompt_tuning": tuning_summary(config, best_ckpt, names, embeddings),
        "seed": config.seed,
        "history": read_history(out / "results.csv"),
        "seconds": round(time.time() - t0, 1),
    }
    if meta["text_encoder"] == "random":
        meta["warning"] = RANDOM_WARNING
    save_final(best_ckpt, out, meta)
    write_run_state(out, "finished")
    return meta


def train(config: DetectorTrainConfig, out: Path, model_spec: str, data: dict, names: list[str], embeddings,
          device: str, overrides: dict, plan: ResumePlan | None, callbacks: dict | None):
    """ultralytics training (new or resumed) with DefectWorldTrainer; returns the finished trainer."""
    from defect_vision.training.world_trainer import DefectWorldTrainer

    train_args = dict(
        model=model_spec, data=str(config.data.resolve()), epochs=config.epochs, imgsz=config.imgsz,
        batch=config.batch, device=device, workers=config.workers, optimizer=config.optimizer, lr0=config.lr0,
        cos_lr=config.cos_lr, seed=config.seed, deterministic=True, project=str(out.parent), name=out.name,
        exist_ok=True, plots=config.plots, val=True, pretrained=not config.from_scratch, verbose=True,
    )
    if config.freeze is not None:
        train_args["freeze"] = config.freeze
    train_args.update(small_data_settings(config.data, data, config.batch, config.epochs))
    train_args.update(overrides)
    if plan is not None:
        train_args["resume"] = str(out / "weights" / "last.pt")
    tune = {"reg": config.prompt_reg, "only": config.prompt_only} if config.tune_prompts else None
    trainer = DefectWorldTrainer(overrides=train_args, class_embeddings=dict(zip(names, embeddings)),
                                 balanced=config.balanced, tune_prompts=tune)
    for event, fns in (callbacks or {}).items():
        for fn in fns:
            trainer.add_callback(event, fn)
    trainer.train()
    if Path(trainer.save_dir).resolve() != out:
        raise RuntimeError(f"ultralytics wrote to {trainer.save_dir}, expected {out}")
    return trainer


def summary(meta: dict, best_pt: Path) -> str:
    """The one line a finished run prints."""
    ft, zs = meta["metrics"]["fine_tuned"], meta["metrics"]["zero_shot"]
    zs_txt = f" (zero-shot {zs['map50']:.3f})" if zs else ""
    return (f"yolo_world: {best_pt}: {len(meta['classes'])} classes, {meta['epochs']} epochs, "
            f"val box mAP50 {ft['map50']:.3f}{zs_txt}, mAP50-95 {ft['map50_95']:.3f}, "
            f"text encoder {meta['text_encoder']}, {meta['weights']} weights, {meta['seconds']:.0f} s")


if __name__ == "__main__":  # the old entry point: fail loudly instead of doing nothing
    sys.exit("error: this module is the library; the command is `defect-vision train-detector` "
             "(python -m defect_vision train-detector, scripts/finetune_yolo_world.sh)")
