"""`defect-vision train-detector`: fine-tune YOLO-World on a converted category (the library:
defect_vision.training.yolo_world). `scripts/finetune_yolo_world.sh` and `python finetune/yolo_world.py` are this
command."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import yaml

from defect_vision.cli.common import CategoryPaths, add_force, parser, run_command
from defect_vision.errors import DatasetError

DESCRIPTION = ("Fine-tune YOLO-World (ultralytics) on the YOLO export of a category, with class prompts from the COCO "
               "export encoded by a local CLIP ViT-B-32; offline. Extra key=value arguments are passed to "
               "ultralytics' trainer (e.g. mosaic=0 close_mosaic=0 patience=20).")
EPILOG = ("Writes <out>/best.pt (loads with ultralytics.YOLOWorld(path); class names and prompt embeddings baked in) "
          "and <out>/best.json. --resume continues an interrupted run, or only completes its final step when "
          "training had finished.")


def build_parser(prog: str = "defect-vision train-detector") -> argparse.ArgumentParser:
    from defect_vision.models.text_embeddings import (
        DEFAULT_CACHE_DIR,
        DEFAULT_CLIP,
        ENCODERS,
    )
    from defect_vision.training.yolo_world import (
        SEED_REPORT_DEFAULTS,
        DetectorTrainConfig,
    )

    d = DetectorTrainConfig  # the library's defaults are the command's defaults
    p = parser(prog, DESCRIPTION, EPILOG)
    p.add_argument("--category", required=True, help="category name, e.g. wood")
    p.add_argument("--data", type=Path, help="ultralytics data.yaml (default: datasets/yolo/<category>/data.yaml)")
    p.add_argument("--coco", type=Path, help="COCO export folder whose categories[].prompt give the prompts "
                   "(default: datasets/coco/<category>; if missing, prompt = class name with '_' -> ' ')")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--model", type=Path, default=d.model, help="start weights: any YOLO-World v2 checkpoint (s/m/l/x)")
    start.add_argument("--from-scratch", action="store_true",
                       help="random-init model from --model-cfg instead of start weights (tests/smoke runs)")
    p.add_argument("--model-cfg", default=d.model_cfg,
                   help="model yaml for --from-scratch (ultralytics built-in or a file; scale from the name, e.g. "
                        "yolov8n-worldv2.yaml)")
    p.add_argument("--text-encoder", choices=ENCODERS, default=d.text_encoder,
                   help="clip: open-clip ViT-B-32 with OpenAI weights from --clip; random: fixed random vectors (tests only)")
    p.add_argument("--clip", type=Path, default=DEFAULT_CLIP, help="OpenAI-format CLIP ViT-B-32 weights file")
    p.add_argument("--embedding-cache", type=Path, default=DEFAULT_CACHE_DIR,
                   help="folder of cached prompt embeddings keyed by (encoder, weights sha256, prompt)")
    p.add_argument("--prompt-template", default=d.prompt_template,
                   help="prompt per class; {name} = the COCO prompt (e.g. 'faulty imprint'), {category} = the category")
    p.add_argument("--prompts", type=Path, default=None,
                   help="prompts.yaml: per class one or more phrasings (scratch: [scratch, thin scratch line]); the "
                        "class embedding is the normalised mean of theirs (default: <coco>/prompts.yaml when present)")
    p.add_argument("--tune-prompts", action="store_true",
                   help="learnable class embeddings initialised from CLIP (YOLO-World prompt tuning), saved in best.pt; "
                        "default: embeddings frozen")
    p.add_argument("--prompt-reg", type=float, default=d.prompt_reg,
                   help="with --tune-prompts: weight of the L2 pull of each embedding towards its CLIP initialisation")
    p.add_argument("--prompt-only", action="store_true",
                   help="YOLO-World's prompt-tuning recipe: only the embeddings train, the whole detector (backbone, "
                        "neck, head, BN statistics) stays frozen; implies --tune-prompts")
    p.add_argument("--epochs", type=int, default=SEED_REPORT_DEFAULTS["epochs"], help="training epochs")
    p.add_argument("--imgsz", type=int, default=d.imgsz, help="training/validation image size")
    p.add_argument("--batch", type=int, default=d.batch, help="batch size")
    p.add_argument("--device", default=d.device, help="auto (cuda:0 if available, else cpu), cpu, cuda:N, or N,M,... "
                   "(several GPUs: ultralytics DDP)")
    p.add_argument("--workers", type=int, default=d.workers, help="data-loading worker processes")
    p.add_argument("--optimizer", default=SEED_REPORT_DEFAULTS["optimizer"],
                   help="ultralytics optimizer (Adam, AdamW, SGD, auto, ...); seed-report default")
    p.add_argument("--lr0", type=float, default=SEED_REPORT_DEFAULTS["lr0"], help="initial learning rate")
    p.add_argument("--cos-lr", action=argparse.BooleanOptionalAction, default=SEED_REPORT_DEFAULTS["cos_lr"],
                   help="cosine learning-rate schedule")
    p.add_argument("--freeze", type=int, default=None, help="freeze the first N model layers (backbone = 10)")
    p.add_argument("--balanced", action="store_true",
                   help="class-balanced sampling: repeat images by LVIS repeat factor from per-class image frequency")
    p.add_argument("--balanced-loss", action="store_true",
                   help="class-rebalanced loss: logit adjustment (Menon et al. 2021) of the class scores by the "
                        "training instances' class frequencies (docs/notes/classify.md)")
    p.add_argument("--eval-zero-shot", action="store_true",
                   help="first evaluate the start model with the defect prompts on the val split (zero-shot baseline)")
    p.add_argument("--plots", action=argparse.BooleanOptionalAction, default=d.plots,
                   help="ultralytics plots (fonts come from matplotlib; nothing is downloaded)")
    p.add_argument("--out", type=Path, help="run folder (default: runs/<category>/yolo_world)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from <out>/weights/last.pt (or only finish its final step)")
    add_force(p)
    p.add_argument("--seed", type=int, default=d.seed, help="random seed (training is deterministic where torch allows)")
    add_self_training(p)
    p.add_argument("overrides", nargs="*", metavar="key=value", help="extra ultralytics training arguments")
    return p


def add_self_training(p: argparse.ArgumentParser) -> None:
    """--unlabelled and its options (defect_vision.experiments.self_training; docs/notes/self_training.md)."""
    from defect_vision.training.self_training import RULES
    from defect_vision.training.self_training import SelfTrainConfig as S

    g = p.add_argument_group("self-training on unlabelled images")
    g.add_argument("--unlabelled", type=Path, default=None,
                   help="folder (or glob) of unlabelled images: after the labels-only fine-tune, pseudo-label them "
                        "with it and fine-tune again on labels + pseudo-labels, --rounds times; writes "
                        "<out>/pseudo_labels.json")
    g.add_argument("--rounds", type=int, default=S.rounds, help="pseudo-label + fine-tune rounds")
    g.add_argument("--pseudo-rule", choices=RULES, default=S.rule,
                   help="adaptive: per-class thresholds, lower for classes the teacher is less sure of (Guo & Li "
                        "2022, Adsh); fixed: --pseudo-conf for every class")
    g.add_argument("--pseudo-conf", type=float, default=S.conf,
                   help="pseudo-label threshold of the most-labelled class (adaptive) or of every class (fixed)")
    g.add_argument("--pseudo-floor", type=float, default=S.floor, help="no pseudo-label below this score")
    g.add_argument("--no-progress", action="store_true", help="no progress bar while pseudo-labelling")


def self_training_from_args(a: argparse.Namespace):
    """The SelfTrainConfig of --unlabelled and its options (None without --unlabelled)."""
    from defect_vision.errors import ConfigError
    from defect_vision.training.self_training import SelfTrainConfig

    if a.unlabelled is None:
        return None
    try:
        return SelfTrainConfig(a.unlabelled, a.rounds, a.pseudo_rule, a.pseudo_conf, a.pseudo_floor)
    except ConfigError as exc:
        raise DatasetError(exc.flag_message()) from None


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


def config_from_args(a: argparse.Namespace):
    from defect_vision.training.yolo_world import DetectorTrainConfig

    paths = CategoryPaths(a.category)
    return DetectorTrainConfig(
        category=a.category, data=a.data or paths.data_yaml, coco=a.coco or paths.format_dir("coco"),
        out=a.out or paths.detector_run, model=a.model, from_scratch=a.from_scratch, model_cfg=a.model_cfg,
        text_encoder=a.text_encoder, clip=a.clip, embedding_cache=a.embedding_cache,
        prompt_template=a.prompt_template, prompts=a.prompts, tune_prompts=a.tune_prompts,
        prompt_reg=a.prompt_reg, prompt_only=a.prompt_only, epochs=a.epochs, imgsz=a.imgsz, batch=a.batch,
        device=a.device,
        workers=a.workers, optimizer=a.optimizer, lr0=a.lr0, cos_lr=a.cos_lr, freeze=a.freeze, balanced=a.balanced,
        balanced_loss=a.balanced_loss,
        eval_zero_shot=a.eval_zero_shot, plots=a.plots, resume=a.resume, seed=a.seed, force=a.force,
        overrides=parse_overrides(a.overrides))


def main(argv: list[str] | None = None, prog: str = "defect-vision train-detector") -> int:
    a = build_parser(prog).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    def body() -> None:
        from defect_vision.training.yolo_world import finetune_detector, summary

        config = config_from_args(a)
        self_training = self_training_from_args(a)
        if self_training is not None:
            from defect_vision.errors import ConfigError
            from defect_vision.experiments.self_training import self_train, summary_line

            try:
                meta = self_train(config, self_training, progress=not a.no_progress)
            except ConfigError as exc:
                raise DatasetError(exc.flag_message()) from None
            print(summary(meta, config.out / "best.pt"))
            print(summary_line(meta, config.out))
            return

        meta = finetune_detector(config)
        print(summary(meta, config.out / "best.pt"))

    return run_command(body, a.out)
