"""`defect-vision predict`: YOLO-World boxes -> SAM masks on new images -> predictions.json, label masks, overlays."""
from __future__ import annotations

import argparse
from pathlib import Path

from defect_vision.cli.common import add_force, parser, run_command

ANNOTATION_TOOLS = ("labelstudio", "cvat", "fiftyone")  # formats/annotations.py TOOLS (not imported: light --help)


def build_parser(prog: str) -> argparse.ArgumentParser:
    from defect_vision.devices import PRECISIONS
    from defect_vision.inference.config import BACKENDS

    p = parser(prog, "Detect defects with a fine-tuned YOLO-World checkpoint, refine every box into a mask with SAM "
                     "(image encoder once per image, all boxes decoded in one batched call; no SAM call for images "
                     "without detections), and write COCO results, label-mask PNGs and optional overlays.",
               epilog="--run runs/<C> stands for --detector runs/<C>/yolo_world/best.pt --sam runs/<C>/sam/best.pth "
                      "and the run's calibrated thresholds (runs/<C>/thresholds.json, used unless --conf or "
                      "--thresholds is given); explicit options win.")
    p.add_argument("--source", required=True,
                   help="a folder (searched recursively), a glob ('imgs/*.png'), one image, a COCO instances json "
                        "(images from info.image_root + file_name, keeping its image ids), or a CSV manifest (column "
                        "'image': paths absolute or relative to the CSV; ids 1..N in row order)")
    p.add_argument("--run", type=Path, default=None, help="a pipeline run folder: its detector, SAM and thresholds")
    p.add_argument("--detector", type=Path, help="YOLO-World checkpoint (runs/<C>/yolo_world/best.pt); "
                                                 "not needed with --gt-boxes")
    p.add_argument("--sam", type=Path, help="SAM state_dict (runs/<C>/sam/best.pth); not needed with --box-only")
    p.add_argument("--masks", choices=("sam", "detector", "refine"), default="sam",
                   help="mask of each box: sam (SAM on the box), detector (a YOLOE -seg detector's own mask, no SAM), "
                        "refine (SAM on the box with the detector's mask as its mask prompt)")
    p.add_argument("--model-type", default=None,
                   help="SAM model type (vit_b|vit_l|vit_h, mobile_sam, sam2.1_t|s|b+|l, sam2_t|s|b+|l; test configs "
                        "vit_tiny|mobile_sam_test|sam2.1_test); default: model_type of best.json beside --sam, "
                        "else vit_b")
    p.add_argument("--out", type=Path, required=True,
                   help="output folder (runs/<C>/predict); replaced as a whole, so it must not hold the source and "
                        "must be empty or a previous prediction run unless --force")
    p.add_argument("--conf", type=float, default=None,
                   help="detector confidence threshold for every class. Which thresholds apply, the same for every "
                        "backend and engine: --thresholds FILE if given (classes it lists their value, the others its "
                        "default, else --conf); else --conf if given; else the calibrated thresholds.json of --run "
                        "(or of the --onnx export), if it calibrated any class; else 0.25")
    p.add_argument("--iou", type=float, default=0.5, help="NMS IoU threshold")
    p.add_argument("--max-det", type=int, default=100, help="most detections per image")
    p.add_argument("--classes", nargs="+", default=None,
                   help="the vocabulary: names the detector knows are kept (a filter); any name it was never trained on "
                        "('crack' 'burn mark') is embedded with the local text encoder and the detector then detects "
                        "exactly these names (default: all trained classes)")
    p.add_argument("--text-encoder", choices=("clip", "random"), default=None,
                   help="encoder of new --classes names (default: the one the detector was trained with)")
    p.add_argument("--clip", type=Path, default=None,
                   help="OpenAI-format CLIP ViT-B-32 file for new --classes names (default: weights/clip/ViT-B-32.pt; "
                        "never downloaded)")
    p.add_argument("--prompts", type=Path, default=None,
                   help="prompts.yaml with phrasings of new --classes names (default: the name itself)")
    p.add_argument("--imgsz", type=int, default=None, help="detector input size (default: the checkpoint's, else 640)")
    p.add_argument("--batch", type=int, default=None,
                   help="images per detector forward (default: 4 on CUDA, 1 on the CPU, where batching gains nothing; "
                        "the same in each Ray actor)")
    p.add_argument("--workers", type=int, default=None,
                   help="batches through the models at once, sharing --threads (default on the CPU: 2 to 4, the "
                        "count leaving the fewest threads idle, each batch on its share of the threads, which keeps "
                        "throughput up when other processes share the cores; 1 on CUDA); outputs do not depend on "
                        "it beyond rounding (a thread count can flip a pixel whose SAM logit is ~0); --workers 1 for "
                        "the least memory")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for the models in all, shared by the workers (default: the cores this process "
                        "may run on; OMP_NUM_THREADS, which importing ultralytics sets to 1, is not used)")
    p.add_argument("--sam-batch", type=int, default=None,
                   help="images per SAM encoder forward, taken from the images of a detector batch that have boxes "
                        "(default: 4 on CUDA, 1 on CPU)")
    p.add_argument("--writers", type=int, default=None,
                   help="writer threads for masks and overlays (default: half the CPU cores, 1 to 4)")
    p.add_argument("--device", default="auto", help="auto|cpu|cuda|cuda:N (CUDA asked for but missing is an error)")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="autocast dtype on CUDA (auto: fp16, the dtype SAM is fine-tuned in; bf16 only where "
                        "native, compute capability >= 8.0); the CPU runs fp32 unless bf16 is asked for on a CPU with "
                        "AVX512-BF16/AMX (torch and openvino backends)")
    p.add_argument("--save-overlays", action="store_true", help="also write overlays/<name>.png (boxes, names, scores, masks)")
    p.add_argument("--box-only", action="store_true", help="skip SAM: the segmentation of a detection is its box")
    p.add_argument("--gt-boxes", type=Path, default=None,
                   help="COCO instances json: run SAM on its ground-truth boxes (score 1) instead of the detector "
                        "(the segmentation upper bound); images matched by id (same json) or path")
    p.add_argument("--thresholds", type=Path, default=None,
                   help="per-class confidence thresholds from `defect-vision calibrate` "
                        "({'thresholds': {name: t}, 'default': t}); classes not listed use 'default', else --conf; "
                        "wins over --conf and over the run's thresholds (see --conf)")
    p.add_argument("--mask-threshold", type=float, default=0.0, help="SAM mask logit threshold")
    p.add_argument("--strict", action="store_true", help="an unreadable image is an error (default: skipped with a warning)")
    p.add_argument("--prefetch", type=int, default=4, help="images read ahead by the loader thread")
    p.add_argument("--seed", type=int, default=0, help="seed for torch/numpy/random (inference itself is deterministic)")
    p.add_argument("--backend", default="torch", choices=BACKENDS,
                   help="torch: the checkpoints; onnxruntime or openvino: the ONNX files of --onnx on the CPU (same "
                        "outputs; --detector/--sam/--run are then only checked against the export; openvino also "
                        "runs --precision bf16 on CPUs with AVX512-BF16/AMX)")
    p.add_argument("--onnx", type=Path, default=None,
                   help="folder written by `defect-vision export` (default with --run: runs/<C>/onnx); "
                        "used by --backend onnxruntime and openvino, ignored by torch")
    p.add_argument("--anomaly", type=Path, default=None,
                   help="a `defect-vision train-anomaly` folder (e.g. runs/<C>/anomaly): per image a heat map "
                        "anomaly_maps/<name>.png (uint16) and its score in image_ids.json, plus `anomaly` detections "
                        "for map regions above its calibrated threshold that no named detection covers")
    p.add_argument("--annotations", nargs="+", action="extend", default=[], choices=ANNOTATION_TOOLS, metavar="TOOL",
                   help="also write the predictions as pre-annotations for a labelling tool, beside predictions.json "
                        "(repeatable; labelstudio: labelstudio_tasks.json + labelstudio_config.xml, brush and polygon "
                        "regions; cvat: cvat_annotations.zip, COCO 1.0 with masks; fiftyone: fiftyone_results.json, "
                        "COCO labels with scores)")
    p.add_argument("--image-root-url", default=None,
                   help="prefix of each image's file name in the Label Studio tasks' data.image, e.g. "
                        "'/data/local-files/?d=wood/' for Label Studio's local file serving (default: the file name "
                        "relative to the source folder)")
    p.add_argument("--model-version", default=None,
                   help="model_version of the pre-annotations (default: <run>/<detector file>:<sha256[:12]>)")
    add_force(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    from defect_vision.cli import predict_ray

    predict_ray.add_arguments(p)
    return p


def passive_omp_waits() -> None:
    """OpenMP threads that sleep at barriers instead of spinning, unless the user chose otherwise. With the loader and
    writer threads beside torch's intra-op threads, spinning collapses throughput as soon as another process shares
    the cores (measured, 2-core CPU, one busy process: 1.34 -> 1.92 img/s; quiet: 2.74 -> 2.63). Only takes effect
    before torch starts its thread pool, which the CLI does lazily."""
    import os

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main(argv: list[str] | None = None, prog: str = "defect-vision predict") -> int:
    from defect_vision.errors import ConfigError, DatasetError

    passive_omp_waits()
    a = build_parser(prog).parse_args(argv)

    def body() -> None:
        from defect_vision.inference.config import PredictConfig, predict_workers
        from defect_vision.inference.run import RunOptions, predict_files
        from defect_vision.inference.sources import resolve_source
        from defect_vision.run_folder import run_models

        detector, sam, onnx, implied = a.detector, a.sam, a.onnx, None
        if a.run is not None:
            run = run_models(a.run)
            detector, sam, onnx, implied = detector or run.detector, sam or run.sam, onnx or run.onnx, run.thresholds
        workers = a.workers if a.engine == "ray" else predict_workers(a.backend, a.workers, a.threads)
        config = PredictConfig(conf=a.conf, iou=a.iou, max_det=a.max_det, classes=a.classes, imgsz=a.imgsz,
                               text_encoder=a.text_encoder, clip=a.clip, prompts=a.prompts,
                               thresholds=a.thresholds, run_thresholds=implied, mask_threshold=a.mask_threshold,
                               model_type=a.model_type, box_only=a.box_only, masks=a.masks, device=a.device, precision=a.precision,
                               seed=a.seed, sam_batch=a.sam_batch, threads=a.threads, workers=workers,
                               backend=a.backend, onnx=onnx if a.backend != "torch" else None, anomaly=a.anomaly)
        from defect_vision.formats.annotations import model_version_of

        options = RunOptions(batch=a.batch, save_overlays=a.save_overlays, gt_boxes=a.gt_boxes, strict=a.strict,
                             prefetch=a.prefetch, force=a.force, progress=not a.quiet, writers=a.writers,
                             annotations=tuple(a.annotations), image_root_url=a.image_root_url,
                             model_version=a.model_version or model_version_of(None if a.gt_boxes else detector))
        source = resolve_source(a.source)  # bad sources fail before any model is loaded
        from defect_vision.cli import predict_ray

        if a.engine == "ray":
            summary = predict_ray.run(a, detector, sam, config, source, options)
        else:
            predict_ray.refuse_ray_options(a)
            summary = predict_files(detector, sam, config, source, a.out, options)
        print(summary.line(a.out))
        if options.annotations:
            from defect_vision.formats.annotations import annotation_files

            print(f"pre-annotations: {', '.join(annotation_files(options.annotations))} -> {a.out}")

    def flags() -> None:
        try:
            body()
        except ConfigError as exc:  # the library names config fields; here they are flags
            raise DatasetError(exc.flag_message()) from None

    return run_command(flags, a.out)
