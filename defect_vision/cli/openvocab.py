"""`defect-vision openvocab`: leave-one-defect-out, does the fine-tuned detector still find a defect by a name it
was never trained on (defect_vision.experiments.openvocab)."""
from __future__ import annotations

import logging
from pathlib import Path

from defect_vision.cli.common import parser, run_command
from defect_vision.cli.experiment_args import add_common, export_of, train_template

DESCRIPTION = ("Leave-one-defect-out: for each defect class k, fine-tune the detector (YOLO-World, or YOLOE with a "
               "YOLOE --model / --model-cfg) on every class but k (k's images "
               "kept out of training entirely), then detect on the test split with the full vocabulary including "
               "k's name. Reports per held-out class box AP50 and mask IoU by name, beside the start model's "
               "zero-shot and the model fine-tuned with k ('seen'). The HTML report shows the seen / unseen table.")
EPILOG = ("Writes <out>/results.json, seen_unseen.png, data/without_<k>/ (the training set of each run, manifest.json "
          "lists its images) and models/. With the official weights (scripts/download_weights.sh) the numbers "
          "measure the start model's family (results.json's \"detector\", named in the report's table); --fast "
          "numbers (random-init) only show the mechanics.")


def build_parser(prog: str = "defect-vision openvocab"):
    p = parser(prog, DESCRIPTION, EPILOG)
    add_common(p)
    p.add_argument("--classes", nargs="+", default=None, help="the classes to hold out, one run each (default: all)")
    p.add_argument("--no-seen", dest="seen", action="store_false",
                   help="skip the fine-tune with every class (the 'seen' column)")
    p.add_argument("--sam", type=Path, default=None,
                   help="SAM checkpoint for the masks (default: <runs>/<C>/sam/best.pth when it exists and not "
                        "--fast; without SAM each box is its mask)")
    p.add_argument("--sam-model-type", default=None, help="SAM model type (default: best.json beside --sam, else vit_b)")
    return p


def main(argv: list[str] | None = None, prog: str = "defect-vision openvocab") -> int:
    a = build_parser(prog).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    export, paths = export_of(a)
    out = a.out or paths.run / "openvocab"

    def body() -> None:
        from defect_vision.experiments.openvocab import (
            OpenVocabConfig,
            run_openvocab,
            summary_line,
        )

        sam = a.sam or (paths.sam_run / "best.pth" if not a.fast and (paths.sam_run / "best.pth").is_file() else None)
        config = OpenVocabConfig(a.category, export, out, train_template(a, out), held_out=a.classes, seen=a.seen,
                                 sam=sam, sam_model_type=a.sam_model_type, conf=a.conf,
                                 score_threshold=a.score_threshold, force=a.force)
        print(summary_line(run_openvocab(config), out))

    return run_command(body, out)
