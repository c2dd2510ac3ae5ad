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
    al = p.add_argument_group("active learning (experiments/selection_curve.py): with --strategy, the curve adds "
                              "labels round by round instead of k per class; output <runs>/<C>/selection_curve")
    al.add_argument("--strategy", nargs="+", choices=("select", "random"), default=None,
                    help="who picks the next labels: select (defect-vision select's ranking) and/or random")
    al.add_argument("--start", type=int, default=1, help="labelled defect images per class before the first round")
    al.add_argument("--step", type=int, default=4, help="labelled images added per round")
    al.add_argument("--rounds", type=int, default=2, help="rounds of adding labels")
    from defect_vision.training.self_training import RULES
    from defect_vision.training.self_training import SelfTrainConfig as T

    st = p.add_argument_group("self-training (experiments/unlabelled_curve.py): with --unlabelled-rest, k labels + the "
                              "rest of train as unlabelled images vs k labels alone; output <runs>/<C>/curve_unlabelled")
    st.add_argument("--unlabelled-rest", action="store_true",
                    help="compare k labels alone with k labels + the rest of train as unlabelled images (self-training)")
    st.add_argument("--pseudo-rules", nargs="+", choices=RULES, default=list(RULES),
                    help="pseudo-label threshold rules to compare (train-detector --pseudo-rule)")
    st.add_argument("--pseudo-rounds", type=int, default=T.rounds, help="self-training rounds (train-detector --rounds)")
    st.add_argument("--pseudo-conf", type=float, default=T.conf, help="train-detector --pseudo-conf")
    st.add_argument("--pseudo-floor", type=float, default=T.floor, help="train-detector --pseudo-floor")
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
    out = a.out or paths.run / ("selection_curve" if a.strategy else "curve_unlabelled" if a.unlabelled_rest else "curve")

    def body() -> None:
        from defect_vision.experiments.curve import CurveConfig, run_curve, summary_line

        if not 0 < a.target <= 1:
            raise DatasetError(f"--target {a.target}: must be in (0, 1]")
        config = CurveConfig(a.category, export, out, train_template(a, out), sam_template(a, export.sam, out),
                             shots=a.shots, seeds=a.seeds, repeat_up_to=a.repeat_up_to, target=a.target, conf=a.conf,
                             score_threshold=a.score_threshold, force=a.force)
        if a.unlabelled_rest:
            from defect_vision.experiments import unlabelled_curve as uc

            self_training = uc.UnlabelledCurveConfig(config, tuple(a.pseudo_rules), a.pseudo_rounds, a.pseudo_conf,
                                                     a.pseudo_floor)
            print(uc.summary_line(uc.run_unlabelled_curve(self_training), out))
            return
        if a.strategy:
            from defect_vision.experiments import selection_curve as sc

            active = sc.SelectionCurveConfig(config, tuple(a.strategy), a.start, a.step, a.rounds)
            print(sc.summary_line(sc.run_selection_curve(active), out))
            return
        print(summary_line(run_curve(config), out))

    return run_command(body, out)
