"""`defect-vision <command> ...` (also `python -m defect_vision <command> ...`): one entry point for every stage."""
from __future__ import annotations

import importlib
import sys

# command -> (module under defect_vision.cli, one-line summary); modules are imported only when their command runs
COMMANDS = {
    "convert": ("convert", "MVTec AD-style category -> COCO, YOLO, VOC and SAM-prompt datasets (one split)"),
    "train-detector": ("train_detector", "fine-tune YOLO-World on a converted category (offline CLIP prompts)"),
    "train-sam": ("train_sam", "fine-tune SAM's mask decoder on box prompts (cached image embeddings)"),
    "predict": ("predict", "YOLO-World boxes -> SAM masks on new images: COCO results, label PNGs, overlays"),
    "export": ("export", "a run's detector and SAM as ONNX files + manifest, for predict --backend onnxruntime"),
    "calibrate": ("calibrate", "per-class confidence thresholds maximising detection F1 on val"),
    "evaluate": ("evaluate", "predictions vs COCO ground truth: mask IoU, COCO AP, pixel AUROC/AUPRO, max-F1"),
    "report": ("report", "the HTML report of a run folder"),
    "pipeline": ("pipeline", "every stage on one category (scripts/run_pipeline.sh)"),
    "openvocab": ("openvocab", "leave-one-defect-out: detect held-out defect names (seen / unseen table)"),
    "curve": ("curve", "few-shot learning curve: metrics vs labelled images per class, smallest k that is enough"),
    "select": ("select", "rank unlabelled images by what a label would teach; the top N with pre-annotations"),
    "train-anomaly": ("train_anomaly", "good-only anomaly model (unknown defects): heat maps for predict --anomaly"),
    "classify": ("classify", "the course reports' image classifier of defect types, as a baseline"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()]
    return ("usage: defect-vision <command> [options]   (or: python -m defect_vision <command> ...)\n\n"
            "Open-vocabulary defect detection (YOLO-World) and segmentation (SAM), fine-tuned on your defects.\n\n"
            "commands:\n" + "\n".join(lines) + "\n\n`defect-vision <command> --help` lists a command's options.")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] == "--version":
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(f"defect-vision {version('defect-vision')}")
        except PackageNotFoundError:
            print("defect-vision (not installed)")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command '{name}' (commands: {', '.join(COMMANDS)})", file=sys.stderr)
        return 2
    module = importlib.import_module(f"defect_vision.cli.{COMMANDS[name][0]}")
    return module.main(rest, prog=f"defect-vision {name}")
