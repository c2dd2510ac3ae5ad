"""`defect-vision select`: which unlabelled images to label next (defect_vision.inference.selection_run)."""
from __future__ import annotations

import argparse
from pathlib import Path

from defect_vision.cli.common import add_force, parser, run_command

TOOLS = ("labelstudio", "cvat", "fiftyone")  # formats/annotations.py TOOLS (not imported: --help stays light)
KIND = "select"  # inference/selection_run.py KIND, the output folder's marker
DESCRIPTION = (
    "Rank unlabelled images by how much a label would teach the models and write the top --budget with their "
    "pre-annotations. Score = uncertainty (a detection's score near its class's calibrated threshold) + "
    "disagreement (1 - IoU of a box with the tight box of its SAM mask) + rarity (1/sqrt of the labelled images of "
    "the predicted class, the rarest class 1), each in [0, 1], weighted by --weights; near-duplicate images "
    "(difference hash) are skipped.")
EPILOG = ("Writes <out>/selection.csv (rank, image, score, reason, the three terms), candidates.csv (every image), "
          "summary.json, images/ (the picked images, symlinked or --copy), the pre-annotations of the picked images "
          "(--annotations; the detections at the thresholds) and predictions/ (the prediction run over every "
          "candidate). Thresholds: --thresholds, else the run's calibrated thresholds.json, else 0.25.")


def build_parser(prog: str) -> argparse.ArgumentParser:
    p = parser(prog, DESCRIPTION, EPILOG)
    p.add_argument("--run", type=Path, required=True,
                   help="a pipeline run folder: yolo_world/best.pt, sam/best.pth and thresholds.json when calibrated")
    p.add_argument("--source", required=True,
                   help="the unlabelled images: a folder (searched recursively), a glob, a COCO json or a CSV manifest")
    p.add_argument("--budget", type=int, required=True, help="how many images to pick")
    p.add_argument("--out", type=Path, required=True,
                   help="output folder; replaced as a whole, never one holding the source or the run's models")
    p.add_argument("--annotations", action="append", choices=(*TOOLS, "none"), default=None,
                   help=f"pre-annotation format of the picked images, repeatable (default: all of {', '.join(TOOLS)}; "
                        "none: no pre-annotations)")
    p.add_argument("--model-version", default=None,
                   help="model_version in the pre-annotations (default: <run name>/best.pt:<sha256[:12]>)")
    p.add_argument("--image-root-url", default=None,
                   help="prefix of each image's name in Label Studio's data.image (e.g. '/data/local-files/?d=to_label/"
                        "images/'; default: the name in <out>/images as is)")
    p.add_argument("--copy", action="store_true", help="copy the picked images into <out>/images (default: symlinks)")
    p.add_argument("--thresholds", type=Path, default=None,
                   help="per-class thresholds file (default: the run's calibrated thresholds.json, else 0.25)")
    p.add_argument("--labelled", type=Path, default=None,
                   help="COCO json of the labelled images whose per-class counts set the rarity term (default: the "
                        "train split of the data.yaml the run's detector was trained on, from yolo_world/best.json)")
    p.add_argument("--weights", type=float, nargs=3, default=(1.0, 1.0, 1.0), metavar=("U", "D", "R"),
                   help="weights of uncertainty, disagreement and rarity")
    p.add_argument("--conf-floor", type=float, default=None,
                   help="detector confidence of the candidates (default: half the lowest threshold in use)")
    p.add_argument("--near-duplicate", type=int, default=4,
                   help="an image whose 64-bit difference hash is within this many bits of a picked one is skipped "
                        "(-1: no check)")
    p.add_argument("--max-det", type=int, default=100, help="most detections per image")
    p.add_argument("--imgsz", type=int, default=None, help="detector input size (default: the checkpoint's)")
    p.add_argument("--batch", type=int, default=None, help="images per detector forward (default: 4 CUDA, 1 CPU)")
    p.add_argument("--workers", type=int, default=None, help="model workers on the CPU (default: 2-4)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda:N")
    p.add_argument("--seed", type=int, default=0, help="seed for torch/numpy/random and the order of equal scores")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_force(p)
    return p


def tools_of(chosen: list[str] | None) -> tuple[str, ...]:
    """--annotations as given (repeats dropped), all tools by default, none for `none`."""
    if not chosen:
        return TOOLS
    return () if "none" in chosen else tuple(dict.fromkeys(chosen))


def labelled_counts(labelled: Path | None, best_json: Path) -> dict[str, int]:
    """Per class, the labelled images showing it: of the COCO json `labelled`, else of the train split of the
    data.yaml the detector was trained on (best.json's "data": one image per label file with a line of the class)."""
    from defect_vision.errors import DatasetError
    from defect_vision.io import read_json

    if labelled is not None:
        from defect_vision.coco import load_coco

        coco = load_coco(labelled, masks=False)
        return {n: sum(bool((d.class_id == k).any()) for d in coco.detections.values())
                for k, n in enumerate(coco.class_names)}
    meta = read_json(best_json, "detector metadata") if best_json.is_file() else {}
    data_yaml = Path(meta.get("data") or "") if isinstance(meta, dict) else Path()
    if not data_yaml.is_file():
        raise DatasetError(f"{best_json}: does not name the data.yaml the detector was trained on; give --labelled "
                           "(the COCO json of the labelled images) for the rarity term")
    from defect_vision.training.detector_data import (
        label_files,
        read_data_yaml,
        split_images,
    )

    data = read_data_yaml(data_yaml)
    names = data["names"]
    counts = dict.fromkeys(names.values(), 0)
    for label in label_files(split_images(data_yaml, data, "train")[1]):
        lines = label.read_text().split("\n") if label.is_file() else []
        for k in {int(ln.split()[0]) for ln in lines if ln.strip()}:
            counts[names[k]] = counts.get(names[k], 0) + 1
    return counts


def main(argv: list[str] | None = None, prog: str = "defect-vision select") -> int:
    from defect_vision.errors import DatasetError

    a = build_parser(prog).parse_args(argv)

    def body() -> None:
        from defect_vision.formats.annotations import check_tools, model_version_of
        from defect_vision.inference.selection import (
            SelectConfig,
            default_floor,
            threshold_values,
        )
        from defect_vision.inference.sources import resolve_source
        from defect_vision.io import check_output_dir
        from defect_vision.run_folder import run_models

        config = SelectConfig(a.budget, tuple(a.weights), a.conf_floor, a.near_duplicate, a.seed)  # bad values fail first
        tools = check_tools(tools_of(a.annotations))  # a missing library fails before any prediction
        run = run_models(a.run)
        if not run.detector.is_file():
            raise DatasetError(f"{run.detector}: the run has no detector (select ranks by its scores; run "
                               "defect-vision train-detector first)")
        if not run.sam.is_file():
            raise DatasetError(f"{run.sam}: the run has no SAM (the disagreement term needs its masks; run "
                               "defect-vision train-sam first)")
        source = resolve_source(a.source)  # a missing or empty source fails before any model is loaded
        inputs = tuple(p for p in (run.detector, run.sam, run.thresholds, a.thresholds, a.labelled) if p is not None)
        check_output_dir(a.out, KIND, [*source.inputs(), *inputs], a.force)  # and a bad --out too
        counts = labelled_counts(a.labelled, run.detector.parent / "best.json") if a.weights[2] > 0 else None
        floor = a.conf_floor if a.conf_floor is not None else default_floor(threshold_values(a.thresholds, run.thresholds))

        from defect_vision.inference.config import PredictConfig
        from defect_vision.inference.predictor import DefectPredictor
        from defect_vision.inference.run import RunOptions
        from defect_vision.inference.selection_run import (
            SelectOptions,
            select_images,
            summary_line,
        )
        from defect_vision.thresholds import choose

        predictor = DefectPredictor(run.detector, run.sam, PredictConfig(
            conf=floor, max_det=a.max_det, imgsz=a.imgsz, device=a.device, seed=a.seed, workers=a.workers))
        thresholds = choose(predictor.class_names, None, a.thresholds, run.thresholds)
        select = SelectOptions(tools, a.copy, a.model_version or model_version_of(run.detector), a.force,
                               a.image_root_url)
        summary = select_images(predictor, source, a.out, config, thresholds, counts,
                                RunOptions(batch=a.batch, progress=not a.no_progress), select, inputs)
        print(summary_line(summary, a.out))

    return run_command(body, a.out)
