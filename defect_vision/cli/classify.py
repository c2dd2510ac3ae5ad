"""`defect-vision classify`: the course reports' image classifier (ResNet18 / EfficientNet-v2 transfer learning) of
defect types, trained and tested on the pipeline's own split, as a baseline beside the pipeline (the library:
defect_vision.training.classifier)."""
from __future__ import annotations

import argparse
from pathlib import Path

from defect_vision.cli.common import CategoryPaths, add_force, parser, run_command
from defect_vision.models.classifier import MODELS

DESCRIPTION = (
    "Fine-tune a torchvision image classifier to each image's type (good + the defect types; MVTec's combined is a "
    "type of its own) on the COCO export's train split, keep the best epoch by val accuracy and measure it on the "
    "test split: the course reports' baseline, on the same images as the pipeline. Defaults are the reports' "
    "settings (Adam 1e-3, cosine schedule, resize 512, ImageNet normalisation, random rotation + colour jitter).")
EPILOG = (
    "Writes <out>/best.pt, <out>/metrics.json (accuracy, per_class_recall, confusion with its class order, model, "
    "weights: imagenet | random-init, balanced_loss, history) and <out>/confusion.png. Start weights: torchvision's "
    "official ImageNet file in weights/ (e.g. weights/resnet18-f37072fd.pth, weights/efficientnet_v2_s-dd5fe13b.pth; "
    "never downloaded); without it the model is random-init and the run says so (a smoke run). --imgsz 128 and a "
    "few epochs keep a CPU run short.")


def build_parser(prog: str) -> argparse.ArgumentParser:
    p = parser(prog, DESCRIPTION, EPILOG)
    p.add_argument("--category", required=True, help="category name (names the default paths)")
    p.add_argument("--coco", type=Path, help="COCO export folder with instances_{train,val,test}.json "
                   "(default: datasets/coco/<category>)")
    p.add_argument("--model", default="resnet18", choices=MODELS, help="torchvision classifier")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--weights", type=Path, help="start weights: a torchvision ImageNet state_dict of --model "
                       "(default: weights/<torchvision's file name>, random init when absent)")
    start.add_argument("--from-scratch", action="store_true", help="random init even when the weights are there")
    p.add_argument("--epochs", type=int, default=50, help="training epochs (the wood report's 50)")
    p.add_argument("--imgsz", type=int, default=512, help="images resized to imgsz x imgsz")
    p.add_argument("--batch", type=int, default=32, help="batch size")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate, cosine-annealed to 0")
    p.add_argument("--rotation", type=float, default=15.0, help="train augmentation: random rotation, +- degrees")
    p.add_argument("--jitter", type=float, default=0.2, help="train augmentation: colour jitter strength")
    p.add_argument("--balanced-loss", action="store_true",
                   help="logit-adjusted cross-entropy (Menon et al. 2021; = balanced softmax): rare classes are not "
                        "out-voted by good images")
    p.add_argument("--tau", type=float, default=1.0, help="with --balanced-loss: strength of the prior correction")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    p.add_argument("--seed", type=int, default=0, help="seed for the head, random init, shuffling and augmentation")
    p.add_argument("--out", type=Path, help="output folder (default: runs/<category>/classify)")
    add_force(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None, prog: str = "defect-vision classify") -> int:
    a = build_parser(prog).parse_args(argv)
    paths = CategoryPaths(a.category)
    out = a.out or paths.run_folder.stage("classify")

    def body() -> None:
        from defect_vision.errors import ConfigError, DatasetError
        from defect_vision.training.classifier import finetune_classifier, summary
        from defect_vision.training.classifier_config import ClassifierTrainConfig

        try:
            config = ClassifierTrainConfig(
                coco=a.coco or paths.format_dir("coco"), out=out, category=a.category, model=a.model,
                weights=a.weights, from_scratch=a.from_scratch, epochs=a.epochs, imgsz=a.imgsz, batch=a.batch,
                lr=a.lr, rotation=a.rotation, jitter=a.jitter, balanced_loss=a.balanced_loss, tau=a.tau,
                device=a.device, seed=a.seed, progress=not a.no_progress, force=a.force)
        except ConfigError as exc:  # the library names config fields; here they are flags
            raise DatasetError(exc.flag_message()) from None
        print(summary(finetune_classifier(config), out))

    return run_command(body, out)
