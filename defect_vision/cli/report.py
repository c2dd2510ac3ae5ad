"""`defect-vision report`: the HTML report of a run folder (runs/<category>)."""
from __future__ import annotations

from pathlib import Path

from defect_vision.cli.common import add_force, parser, run_command

DESCRIPTION = (
    "Write an HTML report of one pipeline run (runs/<category>): detector zero-shot vs fine-tuned, SAM on GT vs "
    "detected boxes, mask IoU, mAP, pixel AUROC, AUPRO, max-F1, image-level defect-type accuracy beside the seed "
    "reports' (capsule 75.0%, wood 76.92%) with its confusion matrix, the weights used, and thumbnails of the best and "
    "worst test images. Writes index.html, report.json, thumbs/ and plots/ into --out, replacing the folder as a whole.")


def main(argv: list[str] | None = None, prog: str = "defect-vision report") -> int:
    p = parser(prog, DESCRIPTION)
    p.add_argument("--run", type=Path, required=True, help="run folder, e.g. runs/wood")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: <run>/report)")
    p.add_argument("--gt", type=Path, default=None,
                   help="COCO ground truth of the test split for the thumbnails (default: gt_test in <run>/pipeline.json)")
    p.add_argument("--top-k", type=int, default=4, help="number of best and of worst test images shown")
    add_force(p)
    a = p.parse_args(argv)
    out = a.out or a.run / "report"

    def body() -> None:
        from defect_vision.evaluation import write_report
        from defect_vision.evaluation.html_report import summary_line

        rep = write_report(a.run, out, a.gt, a.top_k, force=a.force)
        print(summary_line(rep, out))

    return run_command(body, out)
