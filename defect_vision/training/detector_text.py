"""The class prompts of a detector fine-tune (COCO export, prompts.yaml, template) and their text embeddings."""
from __future__ import annotations

import json
import logging
from pathlib import Path

from defect_vision.errors import ConfigError, DatasetError
from defect_vision.training.detector_config import DetectorTrainConfig

LOG = logging.getLogger("defect_vision.yolo_world")


def text_encoder_device(device: str) -> str:
    """ultralytics' device string ("cpu", "0", "1,2", "mps") -> the torch device the CLIP text tower runs on."""
    if device in ("cpu", "mps"):
        return "cpu"
    return f"cuda:{device.split(',')[0]}"


def class_prompts(names: list[str], coco_dir: Path, template: str, category: str) -> tuple[list[str], list[int]]:
    """(prompts, COCO category ids) per YOLO class; prompts from the COCO export's categories[].prompt."""
    base = {n: n.replace("_", " ") for n in names}
    ids = list(range(1, len(names) + 1))
    coco = next((coco_dir / f"instances_{s}.json" for s in ("train", "val", "test") if (coco_dir / f"instances_{s}.json").is_file()), None)
    if coco is None:
        LOG.warning("%s: no COCO export; prompts are the class names with '_' -> ' '", coco_dir)
    else:
        try:
            cats = sorted(json.loads(coco.read_text())["categories"], key=lambda c: c["id"])
        except (ValueError, KeyError, TypeError) as exc:
            raise DatasetError(f"{coco}: not a COCO instances file ({exc.__class__.__name__})") from None
        if [c["name"] for c in cats] != names:
            raise DatasetError(f"{coco}: categories {[c['name'] for c in cats]} do not match data.yaml names {names}")
        base = {c["name"]: c.get("prompt") or c["name"].replace("_", " ") for c in cats}
        ids = [int(c["id"]) for c in cats]
    try:
        prompts = [template.format(name=base[n], category=category.replace("_", " ")) for n in names]
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(f"{{prompt_template}} {template!r}: unknown placeholder {exc} (use {{name}} and {{category}})", "prompt_template") from None
    return prompts, ids


def prompts_file(config: DetectorTrainConfig) -> Path | None:
    """--prompts, else <coco>/prompts.yaml when the converters wrote one, else None."""
    if config.prompts is not None:
        return config.prompts
    default = config.coco / "prompts.yaml"
    return default if default.is_file() else None


def check_prompt_classes(table: dict, names: list[str], path: Path | None) -> None:
    """DatasetError naming `path` when its prompts name a class the data does not have (a typo would otherwise
    silently keep the class's default prompt)."""
    unknown = sorted(set(table) - set(names))
    if unknown:
        raise DatasetError(f"{path}: classes {', '.join(unknown)} are not in the training data "
                           f"(its classes: {', '.join(names)})")


def class_phrasings(names: list[str], coco_dir: Path, template: str, category: str,
                    prompts_path: Path | None = None) -> tuple[list[list[str]], list[int]]:
    """(phrasings, COCO category ids) per YOLO class: prompts.yaml's phrasings when given (classes it does not list
    keep their COCO prompt), each through the template; the first phrasing is the class's prompt."""
    from defect_vision.data.source import load_phrasings
    from defect_vision.models.prompts import templated

    prompts, ids = class_prompts(names, coco_dir, "{name}", category)
    table = load_phrasings(prompts_path, "prompts") if prompts_path is not None else {}
    check_prompt_classes(table, names, prompts_path)
    return templated([table.get(n) or [p] for n, p in zip(names, prompts)], template, category), ids


def family_encoder(config: DetectorTrainConfig, family: str, text_model: str | None = None) -> tuple[str, Path]:
    """(text encoder, its weights file) for the start model's family: YOLOE's text model is MobileCLIP, so
    --text-encoder clip means MobileCLIP there (its file: --clip when given, else weights/<YOLOE's text model>.ts);
    MobileCLIP vectors are of no use to YOLO-World."""
    from defect_vision.models.detector import YOLOE
    from defect_vision.models.text_embeddings import DEFAULT_CLIP, default_mobileclip

    if family == YOLOE and config.text_encoder in ("clip", "mobileclip"):
        return "mobileclip", config.clip if config.clip != DEFAULT_CLIP else default_mobileclip(text_model)
    if family != YOLOE and config.text_encoder == "mobileclip":
        raise ConfigError(f"{{text_encoder}} mobileclip: {config.model_cfg if config.from_scratch else config.model} "
                           "is a YOLO-World model, whose text model is CLIP ViT-B-32 ({text_encoder} clip)", "text_encoder")
    return config.text_encoder, config.clip


def class_embeddings(config: DetectorTrainConfig, phrasings: list[list[str]], device: str, family: str = "yolo_world",
                     text_model: str | None = None):
    """((K, 512) class embeddings = normalised mean of each class's phrasings, encoder description)."""
    from defect_vision.models.prompts import ensemble, make_encoder

    if config.encoder is not None:
        info = {"encoder": "custom", "weights_sha256": None}
        return ensemble(config.encoder, phrasings), info
    name, weights = family_encoder(config, family, text_model)
    encode, info = make_encoder(name, weights, config.embedding_cache, text_encoder_device(device))
    emb = ensemble(encode, phrasings)
    info.setdefault("weights_sha256", None)
    return emb, info
