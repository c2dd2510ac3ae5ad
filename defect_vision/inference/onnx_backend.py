"""The exported-model backends over a `defect-vision export` folder: onnxruntime (CPU provider) or OpenVINO (CPU
plugin, openvino_runtime.py) run the ONNX files in OnnxDetector and OnnxSegmenter, with the interfaces of Detector
and Segmenter. Only the networks run there; the letterbox, NMS, SAM's resize/normalise/pad and the chunked
full-size mask upsampling are the torch path's own code, so all backends agree."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from defect_vision.devices import COUNT, Timings, timed
from defect_vision.errors import ConfigError, DatasetError
from defect_vision.inference.detector import Detector
from defect_vision.inference.interfaces import BoxSegmenter
from defect_vision.inference.openvino_runtime import openvino_session
from defect_vision.inference.segmenter import (
    MASK_BUDGET_BYTES,
    upsampled_crops,
)
from defect_vision.io import read_json
from defect_vision.models.onnx_export import FORMAT, MANIFEST, VERSION, require, sha256

CPU = torch.device("cpu")
INPUTS = {"encoder": ["image"], "decoder": ["image_embeddings", "point_coords", "point_labels"]}


def session(path: Path, inputs: list[str], runtime: str = "onnxruntime", bf16: bool = False,
            split: tuple[int, int] = (1, 1)):
    """A CPU session of `path` (`run(None, feed) -> outputs`, callable from `split[0]` model workers at once, each
    on `split[1]` threads); one-line DatasetErrors for a missing, unreadable or too-new model, or one whose inputs
    are not `inputs`."""
    if not path.is_file():
        raise DatasetError(f"{path}: missing (listed in the export's {MANIFEST}; re-run defect-vision export)")
    workers, threads = split
    sess = openvino_session(path, threads, bf16, workers) if runtime == "openvino" else ort_session(path, threads)
    names = sess.input_names if runtime == "openvino" else [i.name for i in sess.get_inputs()]
    if names != inputs:
        raise DatasetError(f"{path}: inputs {', '.join(names)}, expected {', '.join(inputs)} (files swapped or "
                           "not from defect-vision export)")
    return sess


def ort_session(path: Path, threads: int):
    """An onnxruntime CPU session of `path`, `threads` per run (`run` may be called from several threads at once);
    a one-line DatasetError for an unreadable or too-new model."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    try:
        sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime's Fail / InvalidProtobuf / InvalidGraph / ...
        msg = str(exc)
        opset, latest = re.search(r"Opset (\d+)", msg), re.search(r"till opset (\d+)", msg)
        if opset:
            why = (f"opset {opset.group(1)} is newer than onnxruntime {ort.__version__} runs"
                   + (f" (up to {latest.group(1)})" if latest else "") + "; re-export with a lower --opset or upgrade onnxruntime")
        else:
            why = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", msg.strip().splitlines()[0])
            why = f"onnxruntime {ort.__version__} cannot load it: {why.replace(f'Load model from {path} failed:', '')[:200]}"
        raise DatasetError(f"{path}: {why}") from None
    return sess


def load_manifest(folder: Path) -> dict:
    """The export's manifest.json, checked; DatasetError naming the file otherwise."""
    path = Path(folder) / MANIFEST
    if not Path(folder).is_dir():
        raise DatasetError(f"{folder}: no such ONNX export folder (write one with defect-vision export --run runs/<C> "
                           f"--out {folder})")
    data = read_json(path, "ONNX export manifest")
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise DatasetError(f"{path}: not a defect-vision ONNX export manifest (format {FORMAT!r} expected)")
    if data.get("version") != VERSION:
        raise DatasetError(f"{path}: manifest version {data.get('version')!r}, this defect-vision reads {VERSION}")
    for key, fields in (("detector", ("file", "input", "class_names", "imgsz", "stride")),
                        ("sam", ("encoder", "decoder", "image_size", "pixel_mean", "pixel_std", "model_type"))):
        missing = [f for f in fields if f not in (data.get(key) or {})]
        if missing:
            raise DatasetError(f"{path}: '{key}' lacks {', '.join(missing)}")
    for name, digest in (data.get("files_sha256") or {}).items():  # each network is the one exported with it
        file = Path(folder) / name
        if file.is_file() and sha256(file) != digest:
            raise DatasetError(f"{file}: not the file this export wrote (sha256 differs from {path}); an ONNX file "
                               "copied from another export? re-run defect-vision export")
    return data


class OnnxModel:
    """A callable like the torch detection model: a float batch tensor in, the raw prediction tensor out."""

    def __init__(self, sess, input_name: str):
        self.sess, self.input_name = sess, input_name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.sess.run(None, {self.input_name: x.cpu().numpy()})[0])


class OnnxDetector(Detector):
    """Detector.predict (letterbox -> forward -> ultralytics NMS -> scale_boxes) with the forward in onnxruntime or
    OpenVINO. A YOLO-World or YOLOE export (its family in the manifest); a YOLOE -seg one holds its boxes only, so
    there are no detector masks here (`--masks detector|refine`: torch only)."""

    open_vocabulary = False  # the vocabulary is baked into the export

    def __init__(self, folder: Path, manifest: dict, imgsz: int | None = None, runtime: str = "onnxruntime",  # noqa: D107
                 bf16: bool = False, split: tuple[int, int] = (1, 1)):  # no super().__init__: no torch model
        from defect_vision.offline import go_offline

        go_offline()
        from ultralytics.data.augment import LetterBox
        from ultralytics.utils.checks import check_imgsz

        m = manifest["detector"]
        self.path = Path(folder) / m["file"]
        self.class_names = [str(n) for n in m["class_names"]]
        ids = m.get("category_ids")
        self.category_ids = [int(i) for i in ids] if isinstance(ids, list) and len(ids) == len(self.class_names) else None
        self.stride, self.end2end = int(m["stride"]), bool(m.get("end2end", False))
        size = check_imgsz(imgsz or m["imgsz"], stride=self.stride, min_dim=1, max_dim=1)
        self.imgsz = size[0] if isinstance(size, list) else size
        if self.imgsz != m["imgsz"] and not m.get("dynamic", False):
            raise ConfigError(f"{{imgsz}} {self.imgsz}: {self.path} was exported for {m['imgsz']} only", "imgsz")
        self.meta: dict = {}  # a torch checkpoint's defect_vision metadata: none here (the vocabulary is baked in)
        self.family = m.get("family", "yolo_world")  # exports written before YOLOE held YOLO-World only
        self.segment = self.keep_masks = False  # boxes only, whatever the checkpoint was
        self.model = OnnxModel(session(self.path, [m["input"]], runtime, bf16, split), m["input"])
        self.device, self.dtype = CPU, None
        self.letterbox = LetterBox(new_shape=(self.imgsz, self.imgsz), auto=False, stride=self.stride)
        self.calls = 0


def upsample_masks(low_res: torch.Tensor, input_size: tuple[int, int], original_size: tuple[int, int],
                   image_size: int) -> torch.Tensor:
    """Sam.postprocess_masks: low-res logits -> SAM's input frame -> crop the padding -> the original image size."""
    masks = F.interpolate(low_res, (image_size, image_size), mode="bilinear", align_corners=False)
    masks = masks[..., : input_size[0], : input_size[1]]
    return F.interpolate(masks, original_size, mode="bilinear", align_corners=False)


class OnnxSegmenter(BoxSegmenter):
    """The torch Segmenter's job with SAM's encoder and box decoder in onnxruntime or OpenVINO: the encoder once per
    image with boxes (never without), all boxes in one decoder call, full-size upsampling in chunks (MaskCrops)."""

    def __init__(self, folder: Path, manifest: dict, mask_threshold: float = 0.0, budget: int = MASK_BUDGET_BYTES,
                 runtime: str = "onnxruntime", bf16: bool = False, split: tuple[int, int] = (1, 1)):
        from defect_vision.models.sam import ResizeLongestSide

        m = manifest["sam"]
        self.encoder = session(Path(folder) / m["encoder"], INPUTS["encoder"], runtime, bf16, split)
        self.decoder = session(Path(folder) / m["decoder"], INPUTS["decoder"], runtime, False, split)  # fp32 boxes
        self.image_size = int(m["image_size"])
        self.transform = ResizeLongestSide(self.image_size)
        self.mean = np.asarray(m["pixel_mean"], np.float32).reshape(3, 1, 1)
        self.std = np.asarray(m["pixel_std"], np.float32).reshape(3, 1, 1)
        self.box_labels = np.asarray(m.get("box_labels", [2, 3]), np.float32)
        self.device, self.mask_threshold, self.budget = CPU, mask_threshold, budget
        self.encoder_calls = self.encoder_batches = self.decoder_calls = 0
        self.upsample_chunks = 0

    def preprocess(self, image: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
        """SamPredictor.set_image's input: resize the longest side to S, normalise, pad to S x S (1, 3, S, S)."""
        resized = self.transform.apply_image(image)
        x = (resized.transpose(2, 0, 1).astype(np.float32) - self.mean) / self.std
        h, w = resized.shape[:2]
        padded = np.zeros((1, 3, self.image_size, self.image_size), np.float32)
        padded[0, :, :h, :w] = x
        return padded, (h, w)

    @torch.inference_mode()
    def decode(self, image: np.ndarray, boxes: np.ndarray, timings: Timings) -> tuple[list, np.ndarray]:
        """(N MaskCrops, SAM's predicted IoU (N,)) for xyxy boxes of an RGB HxWx3 image (N >= 1)."""
        h, w = image.shape[:2]
        with timed(timings, "sam_encoder", CPU):
            x, input_size = self.preprocess(image)
            embeddings = self.encoder.run(None, {"image": x})[0]
        with COUNT:
            self.encoder_calls += 1
            self.encoder_batches += 1
        with timed(timings, "sam_decoder", CPU):
            boxes = torch.as_tensor(np.asarray(boxes, np.float32))
            corners = self.transform.apply_boxes_torch(boxes, (h, w)).reshape(-1, 2, 2).numpy()  # as the torch path
            labels = np.tile(self.box_labels, (len(corners), 1))
            low_res, iou = self.decoder.run(None, {"image_embeddings": embeddings, "point_coords": corners,
                                                   "point_labels": labels})
            crops, chunks = upsampled_crops(
                low_res, lambda c: upsample_masks(torch.from_numpy(c), input_size, (h, w), self.image_size), (h, w),
                self.mask_threshold, self.budget)
            with COUNT:
                self.upsample_chunks += chunks
        with COUNT:
            self.decoder_calls += 1
        return crops, iou[:, 0].astype(np.float32)

    def segment_batch(self, images, boxes, timings=None):
        """Per image (MaskCrops, predicted IoU) of its boxes: the encoder once per image with boxes, never without."""
        timings = timings if timings is not None else Timings()
        return [self.decode(image, b, timings) if len(b) else ([], np.zeros(0, np.float32))
                for image, b in zip(images, boxes)]


def check_export(folder: Path, manifest: dict, detector: Path | None, sam: Path | None,
                 thresholds: Path | None) -> None:
    """DatasetError when the export is not of these checkpoints (sha256) or its thresholds differ from `thresholds`:
    an ONNX folder of another run, or one written before a re-training or re-calibration."""
    where = Path(folder) / MANIFEST
    for path, key, what in ((detector, "detector", "detector"), (sam, "sam", "SAM checkpoint")):
        if path is None:
            continue
        if not Path(path).is_file():
            raise DatasetError(f"{path}: missing (the {what} to check the ONNX export {folder} against)")
        if sha256(Path(path)) != manifest[key].get("sha256"):
            raise DatasetError(f"{where}: exported from another {what} than {path}{_class_diff(path, manifest) if key == 'detector' else ''}"
                               f" (an ONNX folder of another run, or older than the checkpoint: re-run defect-vision export)")
    mine = manifest.get("thresholds")
    if thresholds is not None and mine:
        if read_json(Path(thresholds), "thresholds") != read_json(Path(folder) / mine, "thresholds"):
            raise DatasetError(f"{Path(folder) / mine}: thresholds differ from {thresholds} (an ONNX folder of another "
                               "run, or older than the calibration: re-run defect-vision export)")


def _class_diff(path: Path, manifest: dict) -> str:
    """' (classes a, b vs c, d)' when the checkpoint's class names differ from the export's, else ''."""
    from defect_vision.models.detector import load_detector_model

    try:
        names = load_detector_model(Path(path)).names
    except DatasetError:
        return ""
    names = [str(n) for n in (names if isinstance(names, list) else [names[k] for k in sorted(names)])]
    mine = manifest["detector"]["class_names"]
    return f" (classes {', '.join(mine)} vs {', '.join(names)})" if names != mine else " (same classes, other weights)"


def load_onnx_models(config, detector: Path | None, sam: Path | None, device: torch.device,
                     dtype: torch.dtype | None = None):
    """(OnnxDetector, OnnxSegmenter or None with box_only, the export's thresholds file or None) of the export folder
    `config.onnx` in the runtime `config.backend`, checked against the checkpoints and thresholds given (any may be
    None). `dtype` bf16: OpenVINO runs the detector and SAM's encoder in bf16 (onnxruntime: fp32 only)."""
    runtime = config.backend
    require(runtime, f"--backend {runtime}")
    if device.type != "cpu":
        raise ConfigError(f"{{device}} {config.device}: the {runtime} backend runs on the CPU; "
                          "use {device} cpu, or {backend} torch on a GPU", "device", "backend")
    if dtype is not None and runtime != "openvino":
        raise ConfigError(f"{{precision}} {config.precision}: the {runtime} backend runs the export in fp32 "
                          "(bf16 on the CPU: {backend} openvino or torch)", "precision", "backend")
    if config.onnx is None:
        raise ConfigError(f"{{onnx}}: required with {{backend}} {runtime} (a folder written by defect-vision export)",
                          "onnx", "backend")
    folder = Path(config.onnx)
    manifest = load_manifest(folder)
    if config.model_type and not config.box_only and config.model_type != manifest["sam"]["model_type"]:
        raise ConfigError(f"{{model_type}} {config.model_type}: the export {folder} holds a "
                          f"{manifest['sam']['model_type']} SAM", "model_type")
    new = [c for c in config.classes or [] if c not in manifest["detector"]["class_names"]]
    if new:
        raise ConfigError(f"{{classes}} {' '.join(new)}: not in the ONNX export's vocabulary, which is baked in "
                          f"({', '.join(manifest['detector']['class_names'])}); new names need {{backend}} torch",
                          "classes", "backend")
    check_export(folder, manifest, detector, None if config.box_only else sam, config.run_thresholds)
    thresholds = folder / manifest["thresholds"] if manifest.get("thresholds") else None
    bf16 = dtype == torch.bfloat16
    split = config.cpu_split(device)  # the sessions are called by that many model workers, each on its threads
    det = OnnxDetector(folder, manifest, config.imgsz, runtime, bf16, split)
    seg = None
    if not config.box_only:  # the SAM family the export holds (exports written before SAM 2 hold SAM)
        if manifest["sam"].get("family", "sam") == "sam2":
            from defect_vision.inference.onnx_sam2 import OnnxSam2Segmenter as segmenter
        else:
            segmenter = OnnxSegmenter
        seg = segmenter(folder, manifest, config.mask_threshold, runtime=runtime, bf16=bf16, split=split)
    return det, seg, thresholds
