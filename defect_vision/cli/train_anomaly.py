"""`defect-vision train-anomaly`: a good-only anomaly model of one category (unknown defects), for `predict --anomaly`."""
from __future__ import annotations

import argparse
from pathlib import Path

from defect_vision.cli.common import CategoryPaths, add_force, parser, run_command
from defect_vision.cli.reader_args import add_reader_options, source_of

METHODS = ("draem", "padim", "patchcore")  # = defect_vision.models.anomaly.METHODS (kept light for --help)
DESCRIPTION = (
    "Learn what normal looks like from the category's good TRAINING images only (the split's train and unused good "
    "images; never a val or test image), calibrate the anomaly-map and image-score thresholds on val (max F1), and "
    "write <out>/anomaly.json + model.pt. Methods (anomalib's models): padim / patchcore on a ResNet backbone from "
    "weights/ (never downloaded), draem (no pretrained weights at all: an autoencoder + segmentation net trained on "
    "synthetic anomalies). Default: padim when weights/resnet18-f37072fd.pth exists, else draem (said in red).")
EPILOG = "Then: defect-vision predict --run runs/<C> --anomaly runs/<C>/anomaly --source ... --out ..."


def build_parser(prog: str) -> argparse.ArgumentParser:
    p = parser(prog, DESCRIPTION, EPILOG)
    p.add_argument("--category", required=True, help="category folder under --root (names the default paths)")
    add_reader_options(p)
    p.add_argument("--splits", type=Path, default=None,
                   help="the split file convert wrote (default: datasets/splits/<category>.json when it exists, else "
                        "convert's default split, made the same way)")
    p.add_argument("--method", choices=METHODS, default=None,
                   help="padim | patchcore (backbone from weights/) | draem (weight-free); default: padim with "
                        "weights/resnet18-*.pth, else draem")
    p.add_argument("--backbone", default="resnet18", choices=("resnet18", "wide_resnet50_2"), help="padim/patchcore backbone")
    p.add_argument("--weights", type=Path, default=None, help="backbone state_dict (default: weights/<torchvision file>)")
    p.add_argument("--from-scratch", action="store_true",
                   help="padim/patchcore on a random-init backbone: smoke runs only, the maps are meaningless")
    p.add_argument("--image-size", type=int, default=256, help="square model input side (maps come back at each image's size)")
    p.add_argument("--epochs", type=int, default=20, help="draem training epochs")
    p.add_argument("--batch", type=int, default=8, help="images per forward / optimizer step")
    p.add_argument("--lr", type=float, default=1e-3, help="draem Adam learning rate")
    p.add_argument("--base-width", type=int, default=32, help="draem U-Net width (anomalib's paper setting: 128)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="output folder (default: runs/<category>/anomaly)")
    add_force(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def config_from_args(a: argparse.Namespace):
    from defect_vision.training.anomaly import AnomalyTrainConfig

    paths = CategoryPaths(a.category)
    splits = a.splits or (paths.splits if paths.splits.is_file() else None)
    return AnomalyTrainConfig(source_of(a), a.out or paths.run_folder.anomaly_dir, splits, a.method, a.backbone, a.weights,
                              from_scratch=a.from_scratch, image_size=a.image_size, epochs=a.epochs, batch=a.batch,
                              lr=a.lr, base_width=a.base_width, device=a.device, seed=a.seed, force=a.force,
                              progress=not a.no_progress)


def main(argv: list[str] | None = None, prog: str = "defect-vision train-anomaly") -> int:
    p = build_parser(prog)
    a = p.parse_args(argv)
    if a.layout == "folder" and not (a.images or a.manifest):
        p.error("--format folder: needs --images GLOB (with --masks TEMPLATE) or --manifest CSV")
    out = a.out or CategoryPaths(a.category).run / "anomaly"

    def body() -> None:
        from defect_vision.errors import ConfigError
        from defect_vision.training.anomaly import summary_line, train_anomaly

        try:
            config = config_from_args(a)
        except ConfigError as exc:
            p.error(exc.flag_message() if hasattr(exc, "flag_message") else str(exc))
        print(summary_line(train_anomaly(config), config.out))

    return run_command(body, out)
