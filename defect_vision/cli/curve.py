"""`defect-vision curve`: the few-shot learning curve, how many labelled defect images per class are enough
(defect_vision.experiments.curve)."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from defect_vision.cli.common import parser, run_command
from defect_vision.cli.experiment_args import add_common, export_of, train_template
from defect_vision.errors import DatasetError

DESCRIPTION = ("Few-shot learning curve: fine-tune the detector (YOLO-World, or YOLOE with a YOLOE --model / "
               "--model-cfg) and SAM on k labelled defect images per class (the same seeded, nested subsets for both; repeated over --seeds for k <= --repeat-up-to), measure detector box "
               "AP50, SAM mask IoU on ground-truth boxes and end-to-end mask IoU on the test split, plot metric vs k "
               "with the seed spread (k = 0: zero-shot) and state the smallest k within --target of 'all'.")
EPILOG = ("Writes <out>/results.json, curve.png, data/k<k>_s<seed>/ (manifest.json: the images of each run) and "
          "models/. Runs in minutes on a GPU with the official weights; --fast is the CPU setting for the synthetic "
          "category (random-init models: the numbers show the mechanics, not model quality). results.json's "
          "\"detector\" and the report's table name the family used.")


def shot(text: str):
    if text == "all":
        return "all"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: a whole number or 'all'") from None


def build_parser(prog: str = "defect-vision curve"):
    from defect_vision.training.sam_config import SamTrainConfig as S

    p = parser(prog, DESCRIPTION, EPILOG)
    add_common(p)
    p.add_argument("--shots", nargs="+", type=shot, default=[1, 2, 5, 10, "all"],
                   help="labelled defect images per class of each point (k = 0, zero-shot, always runs)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="subset seeds of the repeated points")
    p.add_argument("--repeat-up-to", type=int, default=5, help="k up to this runs once per seed; larger k once")
    p.add_argument("--target", type=float, default=0.9, help="'enough' = mean within this fraction of 'all'")
    p.add_argument("--sam-model-type", default=None, help="SAM model type [vit_b; --fast vit_tiny]")
    p.add_argument("--sam-checkpoint", type=Path, default=None,
                   help="SAM start weights (default: the official file of the type in weights/)")
    p.add_argument("--sam-epochs", type=int, default=None, help="SAM epochs per fine-tune [20; --fast 1]")
    p.add_argument("--sam-lr", type=float, default=None, help=f"SAM learning rate [{S.lr}; --fast 1e-3]")
    p.add_argument("--sam-batch-images", type=int, default=None, help=f"images per SAM step [{S.batch_images}; --fast 2]")
    return p


def sam_template(a: argparse.Namespace, prompts: Path, out: Path):
    from defect_vision.training.sam_config import SamTrainConfig

    fast = a.fast
    model_type = a.sam_model_type or ("vit_tiny" if fast else "vit_b")
    scratch = fast and a.sam_checkpoint is None
    return SamTrainConfig(prompts=prompts, out=out / "unset", category=a.category, model_type=model_type,
                          checkpoint=None if scratch else a.sam_checkpoint, from_scratch=scratch,
                          epochs=a.sam_epochs if a.sam_epochs is not None else (1 if fast else 20),
                          lr=a.sam_lr if a.sam_lr is not None else (1e-3 if fast else SamTrainConfig.lr),
                          batch_images=a.sam_batch_images or (2 if fast else SamTrainConfig.batch_images),
                          train_prompt_encoder=scratch, device=a.device, quiet=True, seed=a.seed)


def main(argv: list[str] | None = None, prog: str = "defect-vision curve") -> int:
    a = build_parser(prog).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    export, paths = export_of(a)
    out = a.out or paths.run / "curve"

    def body() -> None:
        from defect_vision.experiments.curve import CurveConfig, run_curve, summary_line

        if not 0 < a.target <= 1:
            raise DatasetError(f"--target {a.target}: must be in (0, 1]")
        config = CurveConfig(a.category, export, out, train_template(a, out), sam_template(a, export.sam, out),
                             shots=a.shots, seeds=a.seeds, repeat_up_to=a.repeat_up_to, target=a.target, conf=a.conf,
                             score_threshold=a.score_threshold, force=a.force)
        print(summary_line(run_curve(config), out))

    return run_command(body, out)
