"""`defect-vision pipeline` (= scripts/run_pipeline.sh): every stage on one category, one after the other.

convert (COCO, YOLO, VOC, SAM prompts) -> fine-tune YOLO-World -> fine-tune SAM -> predict (val, test, test on GT
boxes) -> calibrate thresholds -> evaluate -> HTML report in <runs>/<category>/report/index.html. Each stage runs as
its own `python -m defect_vision <stage>` process (its memory is freed when it ends); its output goes to the
terminal and to <runs>/<category>/pipeline.log, its time to pipeline.json.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from defect_vision.cli.common import CategoryPaths, parser, run_command
from defect_vision.errors import DatasetError
from defect_vision.run_folder import MASK_SOURCES, RunFolder

SAM_FILES = {"vit_b": "sam_vit_b_01ec64.pth", "vit_l": "sam_vit_l_0b3195.pth", "vit_h": "sam_vit_h_4b8939.pth"}


@dataclass
class PipelineConfig:
    category: str
    root: Path = Path("datasets/mvtec_ad")
    datasets: Path = Path("datasets")
    runs: Path = Path("runs")
    weights: Path = Path("weights")
    yolo_model: Path | None = None  # default <weights>/yolov8s-worldv2.pt
    clip: Path | None = None  # default <weights>/clip/ViT-B-32.pt (YOLOE: <weights>/<its MobileCLIP file>)
    sam_model_type: str = "vit_b"
    sam_checkpoint: Path | None = None  # default <weights>/<official file of the type>
    from_scratch: bool = False  # random-init smoke run: YOLO-World from yolo_cfg, SAM vit_tiny
    yolo_cfg: str = "yolov8s-worldv2.yaml"
    yolo_epochs: int = 80
    sam_epochs: int = 20
    imgsz: int = 640
    batch: int = 16
    conf: float = 0.01  # low on purpose: AP and calibration need the low-score detections
    device: str = "auto"
    seed: int = 0
    zero_shot: bool = True
    calibrate: bool = True
    resplit: bool = False
    force: bool = False  # stages replace output folders that are not previous outputs of theirs
    reader_args: list[str] = field(default_factory=list)  # --format and the reader options, passed to convert
    anomaly: bool = False  # train-anomaly (runs/<C>/anomaly) and predict the test split with --anomaly (issue 21)
    anomaly_args: list[str] = field(default_factory=list)  # e.g. --method draem --epochs 20
    classify: bool = False  # the course reports' image classifier as a baseline (runs/<C>/classify)
    classify_args: list[str] = field(default_factory=list)  # e.g. --epochs 10 --from-scratch

    def check(self) -> None:
        if not 0.0 <= self.conf <= 1.0:
            raise DatasetError(f"{self.conf}: --conf must be a number in [0, 1]")
        mvtec = "--format" not in self.reader_args or self.reader_args[self.reader_args.index("--format") + 1] == "mvtec"
        if mvtec and not (Path(self.root) / self.category / "test").is_dir():
            raise DatasetError(f"{Path(self.root) / self.category}: no MVTec category here "
                               f"(expected {Path(self.root) / self.category / 'test'}/; other layouts: --format)")
        if not Path(self.root).is_dir():
            raise DatasetError(f"{self.root}: no such folder (the dataset root)")
        if self.sam_model_type not in SAM_FILES:
            raise DatasetError(f"{self.sam_model_type}: unknown SAM model type (vit_b | vit_l | vit_h; --from-scratch "
                               "uses vit_tiny)")


@dataclass
class Stage:
    name: str
    argv: list[str]  # `defect-vision` arguments: command first
    before: Callable[[], None] | None = None  # a check run when the stage is reached


@dataclass
class PipelinePlan:
    stages: list[Stage]
    weights: str  # "official" | "random-init"
    sam_model_type: str
    yolo_desc: str
    sam_checkpoint: str | None
    run: Path
    notes: list[str] = field(default_factory=list)
    mask_sources: list[str] = field(default_factory=lambda: ["sam"])  # predict --masks of the test split


def detector_masks(c: PipelineConfig, yolo_model: Path) -> bool:
    """True when the pipeline's detector is a YOLOE -seg model: convert then writes polygon labels (it trains masks
    too), and the test split is also predicted with its own masks (--masks detector, refine) for the report's
    mask-source table. A bad yaml or checkpoint is left to train-detector, which names it in one line."""
    from defect_vision.models.detector import (
        YOLOE,
        is_segmentation,
        load_detector_model,
        yaml_family,
    )

    if c.from_scratch:
        from ultralytics.nn.tasks import yaml_model_load

        try:
            cfg = yaml_model_load(c.yolo_cfg)
        except Exception:  # noqa: BLE001 - ultralytics raises FileNotFoundError/yaml errors/...
            return False
        return yaml_family(cfg) == YOLOE and any("YOLOESegment" in str(layer) for layer in cfg.get("head", []))
    try:
        return is_segmentation(load_detector_model(yolo_model))
    except DatasetError:
        return False


def need_weights(f: Path) -> Path:
    if not f.is_file() or f.stat().st_size == 0:
        raise DatasetError(f"{f}: official weights missing (run scripts/download_weights.sh, or pass "
                           "--from-scratch for a smoke run with random-init models)")
    return f


def text_weights(c: PipelineConfig, yolo_model: Path) -> Path:
    """The start detector's text-encoder file: --clip when given, else CLIP ViT-B-32 for YOLO-World and the
    checkpoint's own MobileCLIP file for YOLOE (the family read from the checkpoint; an unreadable one is left to
    train-detector, which names it in one line)."""
    w = Path(c.weights)
    if c.clip is not None:
        return Path(c.clip)
    from defect_vision.models.detector import YOLOE, load_detector_model, model_family
    from defect_vision.models.text_embeddings import MOBILECLIP_FILES

    try:
        model = load_detector_model(yolo_model)
    except DatasetError:
        return w / "clip" / "ViT-B-32.pt"
    if model_family(model) != YOLOE:
        return w / "clip" / "ViT-B-32.pt"
    return w / MOBILECLIP_FILES.get(str(getattr(model, "text_model", "mobileclip:blt")), "mobileclip_blt.ts")


def plan(c: PipelineConfig) -> PipelinePlan:
    """The stages and their arguments; DatasetError when official weights are missing (unless from_scratch)."""
    c.check()
    w = Path(c.weights)
    yolo_model = Path(c.yolo_model or w / "yolov8s-worldv2.pt")
    sam_ckpt = Path(c.sam_checkpoint or w / SAM_FILES[c.sam_model_type])
    if c.from_scratch:
        sam_type, weights = "vit_tiny", "random-init"
        yolo_args = ["--from-scratch", "--model-cfg", c.yolo_cfg, "--text-encoder", "random"]
        # a random prompt encoder gives random box embeddings: from scratch it must learn too (measured on toy_wood:
        # frozen, val mask IoU stays at 0; trained at lr 1e-3, 0.2 after 10 epochs)
        sam_args = ["--model-type", "vit_tiny", "--from-scratch", "--train-prompt-encoder", "--lr", "1e-3", "--batch-images", "2"]
        zero_shot = False  # a random-init detector has no zero-shot ability to measure
    else:
        sam_type, weights = c.sam_model_type, "official"
        need_weights(yolo_model)
        clip = need_weights(text_weights(c, yolo_model))  # the detector says which text encoder it needs
        need_weights(sam_ckpt)
        yolo_args = ["--model", str(yolo_model), "--text-encoder", "clip", "--clip", str(clip)]
        sam_args = ["--model-type", sam_type, "--checkpoint", str(sam_ckpt)]
        zero_shot = c.zero_shot
    if zero_shot:
        yolo_args.append("--eval-zero-shot")
    paths = CategoryPaths(c.category, Path(c.datasets), Path(c.runs))
    ds, run, rf, cat = paths.datasets, paths.run, paths.run_folder, c.category
    coco = paths.format_dir("coco")
    gt_val, gt_test = str(coco / "instances_val.json"), str(coco / "instances_test.json")

    def converted() -> None:
        for f in (coco / "instances_val.json", coco / "instances_test.json", paths.data_yaml):
            if not f.is_file() or f.stat().st_size == 0:
                raise DatasetError(f"{f}: the converters did not write it")

    force = ["--force"] if c.force else []
    sources = list(MASK_SOURCES) if detector_masks(c, yolo_model) else ["sam"]
    task = ["--task", "segment"] if len(sources) > 1 else []  # a -seg detector trains on polygons
    predict = ["predict", "--detector", str(rf.detector), "--sam", str(rf.sam),
               "--model-type", sam_type, "--conf", str(c.conf), "--device", c.device, *force]
    stages = [
        Stage("convert", ["convert", "--category", cat, "--root", str(c.root), "--out", str(ds), "--splits",
                          str(paths.splits), "--seed", str(c.seed), "--no-progress", *task, *force, *c.reader_args,
                          *(["--resplit"] if c.resplit else [])]),
        Stage("yolo_world", ["train-detector", "--category", cat, "--data", str(paths.data_yaml),
                             "--coco", str(coco), "--out", str(paths.detector_run), "--epochs", str(c.yolo_epochs),
                             "--imgsz", str(c.imgsz), "--batch", str(c.batch), "--device", c.device, "--seed",
                             str(c.seed), *force, *yolo_args], before=converted),
        Stage("sam", ["train-sam", "--category", cat, "--prompts", str(paths.format_dir("sam")), "--out", str(paths.sam_run),
                      "--cache-dir", str(rf.sam_embeddings), "--epochs", str(c.sam_epochs), "--device",
                      c.device, "--seed", str(c.seed), *force, *sam_args]),
    ]
    val_eval: list[str] = []
    if c.calibrate:
        stages += [
            Stage("predict_val", [*predict, "--source", gt_val, "--out", str(rf.stage("predict_val"))]),
            Stage("calibrate", ["calibrate", "--gt", gt_val, "--pred", str(rf.stage("predict_val") / "predictions.json"),
                                "--out", str(rf.thresholds)]),
        ]
        val_eval = ["--val-gt", gt_val, "--val-pred", str(rf.stage("predict_val") / "predictions.json")]
    if c.anomaly:  # good-only heat maps: only the test predict carries them (calibrate reads named classes only)
        stages.append(Stage("anomaly", ["train-anomaly", "--category", cat, "--root", str(c.root), "--splits",
                                        str(paths.splits), "--out", str(rf.anomaly_dir), "--device", c.device, "--seed",
                                        str(c.seed), "--no-progress", *force, *c.reader_args, *c.anomaly_args]))
    if c.classify:
        stages.append(Stage("classify", ["classify", "--category", cat, "--coco", str(coco), "--device", c.device,
                                         "--out", str(rf.stage("classify")), *force, *c.classify_args]))
    anomaly = ["--anomaly", str(rf.anomaly_dir)] if c.anomaly else []
    stages += [
        Stage("predict", [*predict, "--source", gt_test, "--out", str(rf.stage("predict")), "--save-overlays", *anomaly]),
        Stage("predict_gt_boxes", [*predict, "--source", gt_test, "--gt-boxes", gt_test, "--out", str(rf.stage("predict_gt_boxes"))]),
        Stage("evaluate", ["evaluate", "--gt", gt_test, "--pred", str(rf.stage("predict") / "predictions.json"), "--out",
                           str(rf.stage("eval")), *force, *val_eval]),
        Stage("evaluate_gt_boxes", ["evaluate", "--gt", gt_test, "--pred", str(rf.stage("predict_gt_boxes") / "predictions.json"),
                                    "--out", str(rf.stage("eval_gt_boxes")), *force]),
    ]
    for source in sources[1:]:  # the same detections, each mask source: does SAM earn its cost?
        stages += [
            Stage(f"predict_masks_{source}", [*predict, "--source", gt_test, "--masks", source,
                                              "--out", str(rf.predict_masks(source))]),
            Stage(f"evaluate_masks_{source}", ["evaluate", "--gt", gt_test, "--pred",
                                               str(rf.predict_masks(source) / "predictions.json"), "--out",
                                               str(rf.eval_masks(source)), *force, *val_eval]),
        ]
    stages.append(Stage("report", ["report", "--run", str(run), *force]))
    return PipelinePlan(stages, weights, sam_type, str(yolo_model) if weights == "official" else c.yolo_cfg,
                        str(sam_ckpt) if weights == "official" else None, run, mask_sources=sources)


def run_stage(argv: list[str], log) -> int:
    """`python -m defect_vision <argv>` in its own process; its output goes to the terminal and to `log`."""
    proc = subprocess.Popen([sys.executable, "-m", "defect_vision", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace", bufsize=1)
    try:
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            log.write(line)
            log.flush()
        return proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise


def run_pipeline(c: PipelineConfig, runner: Callable[[list[str], object], int] | None = None) -> dict:
    """Run every stage; returns what pipeline.json holds. DatasetError names the stage that failed."""
    runner = runner or run_stage
    p = plan(c)
    rf = RunFolder(p.run)
    p.run.mkdir(parents=True, exist_ok=True)
    if not c.calibrate:  # a previous run's thresholds must not outlive it: the report draws at runs/<C>/thresholds.json
        rf.thresholds.unlink(missing_ok=True)
        shutil.rmtree(rf.stage("predict_val"), ignore_errors=True)
    for source in set(MASK_SOURCES) - set(p.mask_sources):  # nor a previous -seg detector's mask-source runs
        shutil.rmtree(rf.predict_masks(source), ignore_errors=True)
        shutil.rmtree(rf.eval_masks(source), ignore_errors=True)
    seconds: dict[str, int] = {}
    with open(p.run / "pipeline.log", "w") as log:
        def say(msg: str) -> None:
            print(msg, flush=True)
            log.write(msg + "\n")

        if p.weights == "official":
            say(f"pipeline: {c.category} from {c.root} with OFFICIAL weights ({p.yolo_desc}, {p.sam_checkpoint})")
        else:
            say(f"pipeline: {c.category} from {c.root} with RANDOM-INIT models (--from-scratch: the detector from "
                f"{c.yolo_cfg}, random text encoder; SAM vit_tiny). SMOKE RUN: the numbers test the plumbing, not "
                "model quality.")
        summary = {
            "category": c.category, "root": str(c.root), "datasets": str(c.datasets), "run": str(p.run),
            "gt_val": str(Path(c.datasets) / "coco" / c.category / "instances_val.json"),
            "gt_test": str(Path(c.datasets) / "coco" / c.category / "instances_test.json"),
            "weights": p.weights, "yolo_model": p.yolo_desc, "sam_model_type": p.sam_model_type,
            "sam_checkpoint": p.sam_checkpoint, "mask_sources": p.mask_sources,
            "settings": {"yolo_epochs": c.yolo_epochs, "sam_epochs": c.sam_epochs, "imgsz": c.imgsz, "batch": c.batch,
                         "conf": c.conf, "device": c.device, "seed": c.seed, "calibrate": c.calibrate},
            "seconds": seconds,
        }
        for stage in p.stages:
            if stage.name == "report":  # the report reads pipeline.json: write it first
                _write_json(p.run / "pipeline.json", summary)
            if stage.before is not None:
                stage.before()
            say(f"== [{stage.name}] defect-vision {' '.join(stage.argv)}")
            t0 = time.perf_counter()
            rc = runner(stage.argv, log)
            if rc != 0:
                raise DatasetError(f"pipeline stage '{stage.name}' failed (exit {rc}; see the messages above; "
                                   f"log: {p.run / 'pipeline.log'})")
            seconds[stage.name] = round(time.perf_counter() - t0)
            say(f"== [{stage.name}] done in {seconds[stage.name]} s")
        _write_json(p.run / "pipeline.json", summary)
        say(f"pipeline: {c.category} done in {sum(seconds.values())} s ({p.weights} weights); report: "
            f"{rf.stage('report') / 'index.html'}")
    return summary


def _write_json(path: Path, data: dict) -> None:
    from defect_vision.io import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def build_parser(prog: str):
    d = PipelineConfig("")
    p = parser(prog, "Every stage on one category: convert -> fine-tune YOLO-World -> fine-tune SAM -> predict (val, "
                     "test, test on GT boxes) -> calibrate -> evaluate -> HTML report. Writes <runs>/<C>/{yolo_world, "
                     "sam, predict_val, predict, predict_gt_boxes, eval, eval_gt_boxes, report}, thresholds.json, "
                     "pipeline.json (settings, weights, seconds per stage) and pipeline.log. Real runs need the "
                     "official weights (scripts/download_weights.sh); --from-scratch makes a smoke run with small "
                     "random-init models instead (the report says so; its numbers are not model quality).")
    p.add_argument("--category", required=True, help="MVTec category folder, e.g. wood")
    p.add_argument("--root", type=Path, default=d.root, help="MVTec AD root")
    p.add_argument("--datasets", type=Path, default=d.datasets,
                   help="where the converted datasets go: DIR/{coco,yolo,voc,sam}/<C>, DIR/splits/<C>.json")
    p.add_argument("--runs", type=Path, default=d.runs, help="where the run goes: DIR/<C>/...")
    p.add_argument("--weights", type=Path, default=d.weights, help="folder of the official weights")
    p.add_argument("--yolo-model", type=Path, help="YOLO-World weights (default: <weights>/yolov8s-worldv2.pt)")
    p.add_argument("--clip", type=Path, help="the detector's text encoder: CLIP ViT-B/32 (default: <weights>/clip/ViT-B-32.pt; a YOLOE detector: <weights>/<its MobileCLIP file>, e.g. mobileclip_blt.ts)")
    p.add_argument("--sam-model-type", default=d.sam_model_type,
                   help="vit_b | vit_l | vit_h (ignored with --from-scratch, which always builds vit_tiny)")
    p.add_argument("--sam-checkpoint", type=Path, help="SAM weights (default: <weights>/<official file of the type>)")
    p.add_argument("--from-scratch", action="store_true",
                   help="smoke run: YOLO-World from --yolo-cfg with a random text encoder and SAM vit_tiny, both "
                        "random-init (no weights needed)")
    p.add_argument("--yolo-cfg", default=d.yolo_cfg,
                   help="model config of --from-scratch, e.g. yolov8n-worldv2.yaml; a YOLOE -seg one "
                        "(yoloe-11n-seg.yaml) also predicts the test split with --masks detector and refine, and the "
                        "report compares the mask sources")
    p.add_argument("--yolo-epochs", type=int, default=d.yolo_epochs, help="YOLO-World fine-tune epochs")
    p.add_argument("--sam-epochs", type=int, default=d.sam_epochs, help="SAM fine-tune epochs")
    p.add_argument("--imgsz", type=int, default=d.imgsz, help="YOLO-World image size")
    p.add_argument("--batch", type=int, default=d.batch, help="YOLO-World batch size")
    p.add_argument("--conf", type=float, default=d.conf,
                   help="lowest detector confidence kept at inference; low, because AP and calibration need the "
                        "low-score detections (runs/<C>/thresholds.json has the calibrated ones)")
    p.add_argument("--device", default=d.device, help="auto | cpu | cuda:N")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the split, training and sampling")
    p.add_argument("--no-zero-shot", action="store_true", help="skip the zero-shot evaluation of the detector")
    p.add_argument("--no-calibrate", action="store_true",
                   help="skip predicting on val and calibrating per-class thresholds (runs/<C>/thresholds.json)")
    p.add_argument("--resplit", action="store_true", help="make a new split even if datasets/splits/<C>.json exists")
    p.add_argument("--force", action="store_true",
                   help="let every stage replace output folders that are not previous outputs of that stage")
    p.add_argument("--anomaly", action="store_true",
                   help="also train the good-only anomaly model (runs/<C>/anomaly) and predict the test split with it: "
                        "heat maps, `anomaly` detections and the map / named / fusion figures in eval and the report")
    p.add_argument("--anomaly-method", default=None, choices=("draem", "padim", "patchcore"),
                   help="train-anomaly --method (default: padim with weights/resnet18-*.pth, else draem)")
    p.add_argument("--anomaly-epochs", type=int, default=20, help="train-anomaly --epochs (draem)")
    p.add_argument("--anomaly-image-size", type=int, default=256, help="train-anomaly --image-size")
    p.add_argument("--anomaly-base-width", type=int, default=32, help="train-anomaly --base-width (draem)")
    p.add_argument("--classify", action="store_true",
                   help="also train the course reports' image classifier (runs/<C>/classify/metrics.json) as a baseline")
    p.add_argument("--classify-epochs", type=int, default=10, help="classify --epochs")
    readers = p.add_argument_group("dataset layout (passed to `defect-vision convert`; see its --help)")
    readers.add_argument("--format", default=None, help="mvtec (default) | mvtec_ad2 | mvtec_loco | mvtec_3d | visa | "
                                                         "kolektor2 | folder | coco | yolo | labelstudio | cvat | auto")
    for opt, what in (("--mask-threshold", "a mask pixel is defect when > this [0]"),
                      ("--defect-name", "class of unnamed defects (mvtec_ad2, kolektor2) [defect]"),
                      ("--names", "YAML: class name -> prompt text"), ("--images", "folder layout: image glob"),
                      ("--masks", "folder layout: mask template ({dir}, {stem})"),
                      ("--manifest", "folder layout: CSV image,mask[,label]"),
                      ("--annotations", "coco, labelstudio, cvat: the export's annotation file")):
        readers.add_argument(opt, default=None, help=what)
    readers.add_argument("--benchmark-split", action="store_true",
                         help="visa, kolektor2, coco (Roboflow), yolo, cvat: the dataset's own split")
    readers.add_argument("--strict", action="store_true", help="the reader's warnings are errors")
    return p


def main(argv: list[str] | None = None, prog: str = "defect-vision pipeline") -> int:
    p = build_parser(prog)
    a = p.parse_args(argv)
    for name in ("yolo_epochs", "sam_epochs", "imgsz", "batch", "seed"):
        if getattr(a, name) < 0:
            p.error(f"--{name.replace('_', '-')}: must be >= 0, got {getattr(a, name)}")
    reader_args = []
    for opt in ("format", "mask_threshold", "defect_name", "names", "images", "masks", "manifest", "annotations"):
        if getattr(a, opt) is not None:
            reader_args += [f"--{opt.replace('_', '-')}", str(getattr(a, opt))]
    reader_args += [flag for flag, on in (("--benchmark-split", a.benchmark_split), ("--strict", a.strict)) if on]
    config = PipelineConfig(
        a.category, a.root, a.datasets, a.runs, a.weights, a.yolo_model, a.clip, a.sam_model_type, a.sam_checkpoint,
        a.from_scratch, a.yolo_cfg, a.yolo_epochs, a.sam_epochs, a.imgsz, a.batch, a.conf, a.device, a.seed,
        not a.no_zero_shot, not a.no_calibrate, a.resplit, a.force, reader_args, a.anomaly,
        ["--epochs", str(a.anomaly_epochs), "--image-size", str(a.anomaly_image_size),
         "--base-width", str(a.anomaly_base_width),
         *(["--method", a.anomaly_method] if a.anomaly_method else [])], a.classify,
        ["--epochs", str(a.classify_epochs), *(["--from-scratch"] if a.from_scratch else [])])
    return run_command(lambda: run_pipeline(config) and None)



