"""Pre-annotations for labelling tools: predictions written in the formats Label Studio, CVAT and FiftyOne import,
so a person corrects them instead of drawing from scratch. One module per tool (formats/labelstudio_tasks.py,
cvat_zip.py, fiftyone_coco.py), all from the one record; this registry imports none of them until it writes."""
from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from defect_vision.errors import ConfigError, OutputError

TOOLS = ("labelstudio", "cvat", "fiftyone")
MODULES = {"labelstudio": "labelstudio_tasks", "cvat": "cvat_zip", "fiftyone": "fiftyone_coco"}
FILES = {"labelstudio": ("labelstudio_tasks.json", "labelstudio_config.xml"), "cvat": ("cvat_annotations.zip",),
         "fiftyone": ("fiftyone_results.json",)}  # what each tool's pre-annotations are, in the output folder
NEEDS = {"labelstudio": "label_studio_converter"}  # tool -> the module its writer needs (brush RLE encoder)


def check_tools(tools: Iterable[str]) -> tuple[str, ...]:
    """The tools, each once, in the order given; ConfigError for an unknown one or one whose library is missing
    (checked before any prediction is made)."""
    tools = tuple(dict.fromkeys([tools] if isinstance(tools, str) else tools))
    for tool in tools:
        if tool not in TOOLS:
            raise ConfigError(f"{{annotations}} {tool!r}: unknown labelling tool (one of {', '.join(TOOLS)})",
                              "annotations")
        need = NEEDS.get(tool)
        if need and importlib.util.find_spec(need) is None:
            raise ConfigError(f"{{annotations}} {tool}: needs {need.replace('_', '-')} "
                              "(pip install 'defect-vision[labelling]')", "annotations")
    return tools


def annotation_files(tools: Iterable[str]) -> list[str]:
    """The file names the tools' pre-annotations take in the output folder."""
    return [name for tool in dict.fromkeys(tools) for name in FILES[tool]]


def model_version_of(model: Path | None, default: str = "defect-vision") -> str:
    """`<run>/<file>:<sha256[:12]>` of a model file (runs/wood/yolo_world/best.pt -> "wood/best.pt:3f2a..."), which
    model made the pre-annotations; `default` when there is no such file."""
    if model is None or not Path(model).is_file():
        return default
    import hashlib

    digest = hashlib.sha256()
    with open(model, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    path = Path(model).resolve()
    return f"{path.parent.parent.name}/{path.name}:{digest.hexdigest()[:12]}"


def _check_targets(targets: list[Path], detections: Sequence) -> None:
    """OutputError for a target that is a folder or one of the images (an output never replaces an input)."""
    images = {os.path.realpath(d.image.path) for d in detections if d.image is not None and d.image.path is not None}
    for target in targets:
        if target.is_dir():
            raise OutputError(f"{target}: is a folder, not a file; choose another output folder")
        if os.path.realpath(target) in images:
            raise OutputError(f"{target}: is one of the input images; choose another output folder")


def write_annotations(detections: Sequence, out_dir: Path, tools: Iterable[str], model_version: str,
                      image_root: str | Path | None = None) -> list[Path]:
    """Write each tool's pre-annotations of `detections` (one Detections per image, images without detections
    too) into `out_dir`, each file atomically; returns the files written. `model_version` names the model in
    Label Studio's predictions; `image_root` is the folder or URL prefix before each image's file name in Label
    Studio's `data.image` (e.g. "/data/local-files/?d="; default: the file name as is). CVAT and FiftyOne match
    images by the file name itself (CVAT: the task's image names; FiftyOne: relative to its `data_path`)."""
    from defect_vision.formats.coco_predictions import class_table

    tools = check_tools(tools)
    out_dir = Path(out_dir)
    written: list[Path] = []
    _check_targets([out_dir / name for name in annotation_files(tools)], detections)
    for tool in tools:
        module = importlib.import_module(f"defect_vision.formats.{MODULES[tool]}")
        path = out_dir / FILES[tool][0]
        written.append(module.save(detections, path, model_version=model_version, image_root=image_root))
        if tool == "labelstudio":  # and the labelling config the tasks fit
            written.append(module.save_config(class_table(detections)[0], out_dir / FILES[tool][1]))
    return written
