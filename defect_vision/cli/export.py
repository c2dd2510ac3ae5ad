"""`defect-vision export`: a run's detector (YOLO-World or YOLOE) and SAM as ONNX files + manifest.json, for
`predict --backend onnxruntime|openvino`."""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from defect_vision.cli.common import add_force, parser, run_command


def build_parser(prog: str) -> argparse.ArgumentParser:
    p = parser(prog, "Export a run's fine-tuned YOLO-World or YOLOE detector (ultralytics' exporter, class names "
                     "baked in, no NMS; a YOLOE -seg detector as its boxes: --masks detector|refine stay torch-only), "
                     "SAM's image encoder and SAM's prompt encoder + mask decoder (box prompts) as ONNX files, "
                     "with manifest.json (input sizes, class names, thresholds). `defect-vision predict --backend "
                     "onnxruntime --onnx DIR` runs them on the CPU and writes the same outputs as the torch backend.",
               epilog="--run runs/<C> stands for --detector runs/<C>/yolo_world/best.pt --sam runs/<C>/sam/best.pth "
                      "--thresholds runs/<C>/thresholds.json (when it exists) --out runs/<C>/onnx; explicit options "
                      "win. Needs onnx (pip install 'defect-vision[export]').")
    p.add_argument("--run", type=Path, default=None, help="a pipeline run folder: its detector, SAM and thresholds")
    p.add_argument("--detector", type=Path, default=None, help="YOLO-World or YOLOE checkpoint (runs/<C>/yolo_world/best.pt)")
    p.add_argument("--sam", type=Path, default=None, help="SAM state_dict (runs/<C>/sam/best.pth)")
    p.add_argument("--model-type", default=None,
                   help="SAM model type (vit_b|vit_l|vit_h|vit_tiny, mobile_sam|mobile_sam_test; SAM 2 types are not "
                        "exported yet); default: model_type of best.json beside --sam, else vit_b")
    p.add_argument("--thresholds", type=Path, default=None, help="per-class thresholds of `defect-vision calibrate`")
    p.add_argument("--format", default="onnx", choices=("onnx",), help="export format")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default with --run: runs/<C>/onnx); replaced as a whole")
    p.add_argument("--imgsz", type=int, default=None, help="detector input size (default: the checkpoint's)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset of the three files")
    add_force(p)
    return p


def main(argv: list[str] | None = None, prog: str = "defect-vision export") -> int:
    from defect_vision.errors import DatasetError

    a = build_parser(prog).parse_args(argv)

    def body() -> None:
        from defect_vision.models.onnx_export import ExportConfig, export_onnx

        if a.run is not None:
            config = ExportConfig.for_run(a.run, a.out, model_type=a.model_type, imgsz=a.imgsz, opset=a.opset,
                                          force=a.force)
            config = dataclasses.replace(config, detector=a.detector or config.detector, sam=a.sam or config.sam,
                                         thresholds=a.thresholds or config.thresholds)
        else:
            for name in ("detector", "sam", "out"):
                if getattr(a, name) is None:
                    raise DatasetError(f"--{name}: required without --run")
            config = ExportConfig(a.detector, a.sam, a.out, a.model_type, a.thresholds, a.imgsz, a.opset, a.force)
        manifest = export_onnx(config)
        det, sam = manifest["detector"], manifest["sam"]
        family = det.get("family_name", "YOLO-World") + (" -seg, boxes only" if det.get("segment") else "")
        print(f"exported {family} detector ({len(det['class_names'])} classes: {', '.join(det['class_names'])}; {det['imgsz']} px), "
              f"SAM {sam['model_type']} encoder + decoder ({sam['image_size']} px), opset {manifest['opset']}"
              f"{', thresholds' if manifest['thresholds'] else ''} -> {config.out}")

    return run_command(body, a.out)
