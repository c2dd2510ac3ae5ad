"""`defect-vision calibrate`: per-class confidence thresholds maximising detection F1 on val -> thresholds.json."""
from __future__ import annotations

from pathlib import Path

from defect_vision.cli.common import parser, run_command
from defect_vision.errors import DatasetError

DESCRIPTION = (
    "Per-class confidence thresholds maximising detection F1 on val (a prediction is a true positive when its box "
    "overlaps an unmatched GT box of its class with IoU >= --iou, greedily by score); writes the file "
    "`defect-vision predict --thresholds` takes. Run inference on val with a low --conf (e.g. 0.01): no threshold "
    "below it can be found.")


def main(argv: list[str] | None = None, prog: str = "defect-vision calibrate") -> int:
    p = parser(prog, DESCRIPTION)
    p.add_argument("--gt", type=Path, required=True, help="COCO ground truth of val (instances_val.json)")
    p.add_argument("--pred", type=Path, required=True, help="predictions.json of val (run inference with a low --conf)")
    p.add_argument("--out", type=Path, required=True, help="thresholds.json to write (replaced atomically)")
    p.add_argument("--iou", type=float, default=0.5, help="box IoU for a prediction to count as a true positive")
    p.add_argument("--default", type=float, default=0.25, help="threshold of classes that cannot be calibrated")
    a = p.parse_args(argv)

    def body() -> None:
        from defect_vision.evaluation import calibrate

        if not 0 < a.iou <= 1:
            raise DatasetError(f"--iou {a.iou}: must be in (0, 1]")
        thresholds = calibrate(a.gt, a.pred, a.iou, a.default)
        thresholds.save(a.out, inputs=[a.gt, a.pred])
        print(f"{thresholds.summary_line()} -> {a.out}")

    return run_command(body, a.out)
