"""Export a run's models to ONNX for CPU deployment: the YOLO-World or YOLOE detector (ultralytics' exporter, class
names and text embeddings baked in, no NMS; a YOLOE -seg detector as its boxes only), SAM's image encoder, and
SAM's prompt encoder + mask decoder on box prompts (segment_anything's SamOnnxModel; for SAM 2 / 2.1 the encoder's
three maps and its box decoder), plus `manifest.json` (files, input sizes, class names, thresholds, SAM's family).

Only the networks are exported: the letterbox, NMS, SAM's resize/normalise/pad and the full-size mask upsampling
stay the torch path's own code (defect_vision.inference.onnx_backend reuses it), so both backends agree.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import shutil
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from segment_anything.utils.onnx import SamOnnxModel

from defect_vision.devices import intra_op_threads
from defect_vision.errors import ConfigError, DatasetError, OutputError
from defect_vision.io import atomic_dir
from defect_vision.models.detector import load_detector_model
from defect_vision.models.sam import load_sam, model_type_for
from defect_vision.models.sam2 import is_sam2
from defect_vision.models.sam_family import Sam2Ops
from defect_vision.offline import go_offline, strip_network_callbacks
from defect_vision.thresholds import ThresholdsFile

KIND = "export"  # the output folder's marker kind
FORMAT, VERSION = "defect-vision-onnx", 1
MANIFEST = "manifest.json"
THRESHOLDS = "thresholds.json"
FILES = {"detector": "detector.onnx", "encoder": "sam_image_encoder.onnx", "decoder": "sam_decoder.onnx"}
OPSET = 17  # SAM's own ONNX example uses 17; onnxruntime >= 1.14 runs it
OPSETS = range(11, 21)  # what torch's TorchScript-based exporter writes and ultralytics accepts
INSTALL_HINT = "pip install 'defect-vision[export]'"


@dataclass
class ExportConfig:
    """What `export_onnx` reads and where it writes."""

    detector: Path  # YOLO-World or YOLOE best.pt
    sam: Path  # SAM best.pth
    out: Path  # the export folder (replaced as a whole)
    model_type: str | None = None  # SAM model type (default: best.json beside the checkpoint, else vit_b)
    thresholds: Path | None = None  # calibrated per-class thresholds, copied into the folder
    imgsz: int | None = None  # detector input size (default: the checkpoint's)
    opset: int = OPSET
    force: bool = False

    @classmethod
    def for_run(cls, run: str | Path, out: str | Path | None = None, **kw) -> ExportConfig:
        """The models of a pipeline run folder (<run>/yolo_world/best.pt, <run>/sam/best.pth, <run>/thresholds.json
        when present) into `out` (default <run>/onnx)."""
        from defect_vision.run_folder import run_models

        models = run_models(run)
        return cls(models.detector, models.sam, Path(out or models.onnx),
                   thresholds=kw.pop("thresholds", models.thresholds), **kw)


def require(module: str, what: str) -> None:
    """DatasetError when an optional package (of the `[export]` extra, or openvino's own) is missing."""
    if importlib.util.find_spec(module) is None:
        hint = "pip install 'defect-vision[openvino]'" if module == "openvino" else INSTALL_HINT
        raise DatasetError(f"{what} needs the {module} package, which is not installed ({hint})")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextmanager
def quiet_export():
    """Nothing from the exporters: ultralytics' log (which would call a YOLO-World v2 model 'not supported', and
    print its own coloured line before a failure that we report in one line) and torch's warnings about its legacy
    TorchScript-based exporter and Python ints in traced code are muted."""
    from ultralytics.utils import LOGGER

    level = LOGGER.level
    LOGGER.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        LOGGER.setLevel(level)


def boxes_only(model):
    """A YOLOE -seg model as the detection model it contains (a copy: same weights, the mask head dropped): the
    exported backends take its boxes to SAM, so the prototypes and mask coefficients stay out of detector.onnx."""
    import copy

    from ultralytics.nn.modules.head import YOLOEDetect
    from ultralytics.nn.tasks import YOLOEModel

    det = copy.deepcopy(model)
    det.__class__, det.task = YOLOEModel, "detect"
    head = det.model[-1]
    head.__class__ = YOLOEDetect
    for name in ("proto", "cv5", "one2one_cv5", "nm", "npr"):
        if hasattr(head, name):
            delattr(head, name)
    return det


def export_detector(model, meta: dict, path: Path, folder: Path, imgsz: int | None, opset: int) -> dict:
    """detector.onnx of the detection model `model` (loaded from `path`) through ultralytics' exporter: input
    `images` (B, 3, S, S) in [0, 1], output `output0` (B, 4 + classes, anchors) before NMS, dynamic batch and
    size; nothing is pip-installed (no onnxslim). A YOLOE detector's classes are fused into its head (its `pe`);
    a -seg one is exported as its boxes (`--masks detector|refine` stay torch-only, as the manifest says)."""
    go_offline()
    from ultralytics.engine.exporter import Exporter
    from ultralytics.utils.checks import check_imgsz

    from defect_vision.models.detector import (
        FAMILY_NAMES,
        is_segmentation,
        model_family,
    )

    family, segment = model_family(model), is_segmentation(model)
    if segment:
        model = boxes_only(model)
    names = model.names
    names = [str(n) for n in (names if isinstance(names, list) else [names[k] for k in sorted(names)])]
    stride = int(max(model.stride)) if hasattr(model, "stride") else 32
    size = check_imgsz(imgsz or model.args.get("imgsz", 640), stride=stride, min_dim=1, max_dim=1)
    size = size[0] if isinstance(size, list) else size
    model.pt_path = str(folder / Path(FILES["detector"]).with_suffix(".pt"))  # the exporter writes <pt stem>.onnx
    exporter = Exporter(overrides={"format": "onnx", "imgsz": size, "dynamic": True, "simplify": False, "nms": None,
                                   "opset": opset, "batch": 1, "device": "cpu", "quantize": None, "data": None,
                                   "verbose": False})
    strip_network_callbacks(exporter)
    try:  # ultralytics' select_device('cpu') sets torch's threads to cpu_count - 1: kept as they were
        with intra_op_threads(torch.get_num_threads()), quiet_export():
            written = Path(exporter(model=model))
    except OSError:  # writing the file (a full disk): the output's problem, not the checkpoint's (export_onnx)
        raise
    except Exception as exc:  # noqa: BLE001 - ultralytics raises AssertionError/ValueError/RuntimeError
        raise DatasetError(f"{path}: ONNX export of the detector failed ({str(exc).splitlines()[0][:200]})") from None
    if written != folder / FILES["detector"]:
        written.replace(folder / FILES["detector"])
    ids = meta.get("category_ids")
    return {"file": FILES["detector"], "source": str(path), "sha256": sha256(path), "input": "images",
            "output": "output0", "imgsz": size, "stride": stride, "dynamic": True,
            "end2end": bool(getattr(model, "end2end", False)), "class_names": names,
            "category_ids": [int(i) for i in ids] if isinstance(ids, list) and len(ids) == len(names) else None,
            "family": family, "family_name": FAMILY_NAMES.get(family, family), "segment": segment,
            "mask_sources": ["sam"], "torch_only": ["--masks detector", "--masks refine"] if segment else []}


class SamImageEncoder(torch.nn.Module):
    """SAM's image encoder on a resized, normalised and padded image (1, 3, S, S) -> embeddings (1, C, g, g)."""

    def __init__(self, sam):
        super().__init__()
        self.image_encoder = sam.image_encoder

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.image_encoder(image)


class SamBoxDecoder(SamOnnxModel):
    """segment_anything's SamOnnxModel, as SamPredictor.predict_torch(boxes, multimask_output=False) decodes:
    a box is two corner points labelled 2 and 3 (model input coordinates), no mask prompt, and the first mask
    token's output (SamOnnxModel's select_masks would pick the best of the 3 multimask outputs for 2 points).
    Outputs the low-resolution logits: the caller upsamples them in chunks."""

    def __init__(self, sam):
        super().__init__(sam, return_single_mask=True)

    @torch.no_grad()
    def forward(self, image_embeddings: torch.Tensor, point_coords: torch.Tensor, point_labels: torch.Tensor):
        prompt = self.model.prompt_encoder
        sparse = self._embed_points(point_coords, point_labels)
        dense = prompt.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(1, -1, *prompt.image_embedding_size)
        masks, iou = self.mask_decoder.predict_masks(image_embeddings=image_embeddings, image_pe=prompt.get_dense_pe(),
                                                     sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense)
        return masks[:, 0:1], iou[:, 0:1]


def _to_onnx(module: torch.nn.Module, args: tuple, file: Path, opset: int, inputs: list[str], outputs: list[str],
             dynamic: dict | None = None) -> None:
    with quiet_export():  # SAM's sizes are fixed here, so the tracer's Python-int warnings do not matter
        torch.onnx.export(module.eval(), args, str(file), dynamo=False, opset_version=opset, input_names=inputs,
                          output_names=outputs, dynamic_axes=dynamic)


def export_sam(sam, path: Path, model_type: str, folder: Path, opset: int) -> dict:
    """sam_image_encoder.onnx (`image` -> `image_embeddings`) and sam_decoder.onnx (`image_embeddings`,
    `point_coords` (N, 2, 2), `point_labels` (N, 2) -> `low_res_masks` (N, 1, 4g, 4g), `iou_predictions` (N, 1))
    of the SAM model `sam` loaded from `path`."""
    size = int(sam.image_encoder.img_size)
    grid = list(sam.prompt_encoder.image_embedding_size)
    channels = int(sam.prompt_encoder.embed_dim)
    try:
        _to_onnx(SamImageEncoder(sam), (torch.zeros(1, 3, size, size),), folder / FILES["encoder"], opset,
                 ["image"], ["image_embeddings"])
        boxes = {name: {0: "boxes"} for name in ("point_coords", "point_labels", "low_res_masks", "iou_predictions")}
        _to_onnx(SamBoxDecoder(sam), (torch.zeros(1, channels, *grid), torch.tensor([[[0.0, 0.0], [size / 2, size / 2]]] * 2),
                                      torch.tensor([[2.0, 3.0]] * 2)),
                 folder / FILES["decoder"], opset, ["image_embeddings", "point_coords", "point_labels"],
                 ["low_res_masks", "iou_predictions"], boxes)
    except OSError:  # writing the file (a full disk): the output's problem, not the checkpoint's (export_onnx)
        raise
    except Exception as exc:  # noqa: BLE001 - torch.onnx raises many kinds
        raise DatasetError(f"{path}: ONNX export of SAM failed ({str(exc).splitlines()[0][:200]})") from None
    return {"family": "sam", "encoder": FILES["encoder"], "decoder": FILES["decoder"], "source": str(path),
            "sha256": sha256(path), "model_type": model_type, "image_size": size, "embedding_shape": [channels, *grid],
            "low_res_size": [4 * g for g in grid], "pixel_mean": sam.pixel_mean.flatten().tolist(),
            "pixel_std": sam.pixel_std.flatten().tolist(), "box_labels": [2, 3]}


class Sam2ImageEncoder(torch.nn.Module):
    """SAM 2's image encoder on a square-resized, normalised image (1, 3, S, S) -> the embedding (1, 256, g, g) with
    no_mem_embed added and the two high-resolution maps after the decoder's conv_s0 / conv_s1 (1, 32, 4g, 4g) and
    (1, 64, 2g, 2g): Sam2Ops.encode, as the torch Sam2Segmenter and SAM2ImagePredictor.set_image compute them."""

    def __init__(self, sam2):
        super().__init__()
        self.model = sam2
        self.ops = Sam2Ops(sam2)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.ops.encode(image)[0]


class Sam2BoxDecoder(torch.nn.Module):
    """SAM 2's prompt encoder + mask decoder on box prompts, as Sam2Segmenter decodes them (Sam2Ops.prompts/decode):
    a box is two corner points (model input coordinates) labelled 2 and 3, plus the padding point SAM 2's prompt
    encoder appends without a box; no mask prompt; single-mask output (with the decoder's dynamic fallback to the
    most stable multimask output). The point embedding is written with label masks instead of boolean indexing
    (the same values), so the box count stays dynamic in the graph."""

    def __init__(self, sam2):
        super().__init__()
        self.model = sam2
        self.ops = Sam2Ops(sam2)

    def embed_points(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """PromptEncoder._embed_points(coords, labels, pad=True)."""
        prompt = self.model.sam_prompt_encoder
        coords = torch.cat([coords + 0.5, torch.zeros_like(coords[:, :1])], 1)
        labels = torch.cat([labels, -torch.ones_like(labels[:, :1])], 1)[..., None]
        emb = prompt.pe_layer.forward_with_coords(coords, prompt.input_image_size)
        emb = emb * (labels != -1).to(emb.dtype) + prompt.not_a_point_embed.weight * (labels == -1).to(emb.dtype)
        for k, point in enumerate(prompt.point_embeddings):
            emb = emb + point.weight * (labels == k).to(emb.dtype)
        return emb

    @torch.no_grad()
    def forward(self, image_embeddings: torch.Tensor, high_res_feats_0: torch.Tensor, high_res_feats_1: torch.Tensor,
                point_coords: torch.Tensor, point_labels: torch.Tensor):
        prompt = self.model.sam_prompt_encoder
        sparse = self.embed_points(point_coords, point_labels)
        dense = prompt.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(1, -1, *prompt.image_embedding_size)
        return self.ops.decode((image_embeddings, high_res_feats_0, high_res_feats_1), sparse, dense,
                               prompt.get_dense_pe(), multimask=False)


@contextmanager
def traceable_sam2(sam2):
    """Two spots of ultralytics' SAM 2 that the TorchScript-based exporter cannot make constant, given as the
    constants they are while exporting (the same ops on the same values): LayerNorm2d's `x.shape[1:2]` once the box
    count is dynamic, and Hiera's position embedding (interpolated and tiled from the input's shape: an If/Tile
    subgraph onnxruntime warns about), computed in torch on the first forward for the fixed input size (run one
    before tracing, as export_sam2 does)."""
    from ultralytics.nn.modules.transformer import LayerNorm2d

    def layer_norm_2d(norm, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.permute(0, 2, 3, 1), (len(norm.weight),), norm.weight, norm.bias, norm.eps).permute(0, 3, 1, 2)

    trunk, pos_embeds = sam2.image_encoder.trunk, {}

    def pos_embed(hw) -> torch.Tensor:
        key = tuple(int(v) for v in hw)
        if key not in pos_embeds:
            with torch.no_grad():
                pos_embeds[key] = type(trunk)._get_pos_embed(trunk, key).detach()
        return pos_embeds[key]

    norms = [m for m in sam2.sam_mask_decoder.modules() if isinstance(m, LayerNorm2d)]
    for norm in norms:
        norm.forward = partial(layer_norm_2d, norm)
    trunk._get_pos_embed = pos_embed
    try:
        yield
    finally:
        for module, name in [(norm, "forward") for norm in norms] + [(trunk, "_get_pos_embed")]:
            delattr(module, name)


def export_sam2(sam2, path: Path, model_type: str, folder: Path, opset: int) -> dict:
    """sam_image_encoder.onnx (`image` -> `image_embeddings`, `high_res_feats_0`, `high_res_feats_1`) and
    sam_decoder.onnx (those three, `point_coords` (N, 2, 2), `point_labels` (N, 2) -> `low_res_masks`
    (N, 1, 4g, 4g), `iou_predictions` (N, 1)) of the SAM 2 model `sam2` loaded from `path`; the manifest entry
    names the family and its input transform (Sam2Ops.prepare: a square resize, not SAM's longest side + pad)."""
    size = int(sam2.image_size)
    grid = list(sam2.sam_prompt_encoder.image_embedding_size)
    channels = int(sam2.sam_prompt_encoder.embed_dim)
    outputs = ["image_embeddings", "high_res_feats_0", "high_res_feats_1"]
    boxes = {name: {0: "boxes"} for name in ("point_coords", "point_labels", "low_res_masks", "iou_predictions")}
    corners = torch.tensor([[[0.0, 0.0], [size / 2, size / 2]], [[size / 4, size / 8], [size - 1, size / 2]]])
    try:
        with traceable_sam2(sam2):
            encoder = Sam2ImageEncoder(sam2).eval()
            with torch.no_grad():  # the decoder's example maps; the position embedding computed outside the trace
                feats = encoder(torch.zeros(1, 3, size, size))
            _to_onnx(encoder, (torch.zeros(1, 3, size, size),), folder / FILES["encoder"], opset, ["image"], outputs)
            _to_onnx(Sam2BoxDecoder(sam2), (*feats, corners, torch.tensor([[2.0, 3.0]] * 2)), folder / FILES["decoder"],
                     opset, [*outputs, "point_coords", "point_labels"], ["low_res_masks", "iou_predictions"], boxes)
    except OSError:  # writing the file (a full disk): the output's problem, not the checkpoint's (export_onnx)
        raise
    except Exception as exc:  # noqa: BLE001 - torch.onnx raises many kinds
        raise DatasetError(f"{path}: ONNX export of SAM 2 failed ({str(exc).splitlines()[0][:200]})") from None
    return {"family": "sam2", "encoder": FILES["encoder"], "decoder": FILES["decoder"], "source": str(path),
            "sha256": sha256(path), "model_type": model_type, "image_size": size,
            "input_transform": "square resize of [0, 1] pixels (bilinear, antialiased), ImageNet mean/std",
            "embedding_shape": [channels, *grid], "high_res_shapes": [list(f.shape[1:]) for f in feats[1:]],
            "low_res_size": [4 * g for g in grid], "pixel_mean": list(Sam2Ops.MEAN), "pixel_std": list(Sam2Ops.STD),
            "box_labels": [2, 3]}


def export_onnx(config: ExportConfig) -> dict:
    """Write the export folder (detector.onnx, sam_image_encoder.onnx, sam_decoder.onnx, manifest.json and, with
    thresholds, thresholds.json) all at once: bad input fails before anything is written, and a write that fails
    (a full disk) is an OutputError naming the output folder, with nothing kept. Returns the manifest."""
    require("onnx", "ONNX export")
    if config.opset not in OPSETS:
        raise ConfigError(f"{{opset}} {config.opset}: must be within {OPSETS.start}..{OPSETS.stop - 1}", "opset")
    for path, what in ((config.detector, "detector checkpoint (a YOLO-World or YOLOE best.pt)"),
                       (config.sam, "SAM checkpoint (a SAM best.pth state_dict)")):
        if not Path(path).is_file():
            raise DatasetError(f"{path}: missing (no such {what})")
    thresholds = ThresholdsFile.load(config.thresholds) if config.thresholds is not None else None
    model_type = model_type_for(Path(config.sam), config.model_type)
    # wrong checkpoints or model type fail here, before any export (one-line errors naming the file)
    detector_model, meta = load_detector_model(Path(config.detector), with_meta=True)
    sam_model = load_sam(Path(config.sam), model_type)
    inputs = [p for p in (config.detector, config.sam, config.thresholds) if p is not None]
    try:
        with atomic_dir(Path(config.out), KIND, inputs, config.force) as tmp:
            detector = export_detector(detector_model, meta, Path(config.detector), tmp, config.imgsz, config.opset)
            sam = (export_sam2 if is_sam2(sam_model) else export_sam)(sam_model, Path(config.sam), model_type, tmp,
                                                                      config.opset)
            if thresholds is not None:
                shutil.copyfile(config.thresholds, tmp / THRESHOLDS)
            manifest = {"format": FORMAT, "version": VERSION, "opset": config.opset, "detector": detector, "sam": sam,
                        "thresholds": THRESHOLDS if thresholds is not None else None,
                        "thresholds_source": str(config.thresholds) if thresholds is not None else None,
                        "exported_with": _versions(),
                        "files_sha256": {f.name: sha256(f) for f in sorted(tmp.glob("*.onnx"))}}
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    except OSError as exc:  # every input was read above: a failed write is the output's (full disk, read-only, ...)
        code = f" [errno {exc.errno}]" if exc.errno else ""
        raise OutputError(f"{config.out}: cannot write the ONNX export ({exc.strerror or exc}{code}); "
                          "nothing was written") from None
    return manifest


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("defect-vision", "torch", "ultralytics", "segment-anything", "onnx"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found
