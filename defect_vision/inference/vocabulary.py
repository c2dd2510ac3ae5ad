"""`--classes` on an open-vocabulary detector: names the checkpoint knows keep its (fine-tuned or tuned)
embeddings; a name it has never been trained on is embedded with the local text encoder (the checkpoint's own,
recorded in its metadata: CLIP ViT-B-32 from a local file, never downloaded) and the detector then detects
exactly the given vocabulary."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from defect_vision.errors import ConfigError, DatasetError


def vocabulary_prompts(names: Sequence[str], meta: dict, phrasings: dict[str, list[str]] | None = None) -> list[list[str]]:
    """Per name its phrasings (from `phrasings`, else the name with '_' -> ' '), through the checkpoint's template."""
    from defect_vision.models.prompts import templated

    table = phrasings or {}
    raw = [table.get(n) or [n.replace("_", " ")] for n in names]
    return templated(raw, str(meta.get("prompt_template") or "{name}"), str(meta.get("category") or ""))


def encoder_for(meta: dict, text_encoder: str | None, clip: Path, cache_dir: Path | None, device: str = "cpu",
                text_model: str | None = None):
    """The encoder new names go through: --text-encoder when given, else the one the checkpoint was trained with.
    A YOLOE checkpoint's "clip" is its MobileCLIP (`clip`: that file, else weights/<text_model>.ts)."""
    from defect_vision.models.prompts import make_encoder
    from defect_vision.models.text_embeddings import DEFAULT_CLIP, default_mobileclip

    recorded = meta.get("text_encoder")
    if recorded == "mobileclip" and text_encoder in (None, "clip", "mobileclip"):
        path = clip if clip is not None and Path(clip) != DEFAULT_CLIP else default_mobileclip(text_model)
        return make_encoder("mobileclip", path, cache_dir, device)[0]
    if text_encoder is None and recorded not in (None, "clip:ViT-B-32", "random"):
        raise ConfigError(f"{{classes}}: the detector was trained with the text encoder {recorded!r}; pass "
                           "{text_encoder} clip (with {clip} PATH) to embed new class names", "classes", "text_encoder", "clip")
    name = text_encoder or ("random" if recorded == "random" else "clip")  # YOLO-World v2: CLIP ViT-B/32
    return make_encoder(name, clip, cache_dir, device)[0]


def open_vocabulary(detector, classes: Sequence[str], meta: dict, encode: Callable | None = None, *,
                    text_encoder: str | None = None, clip: Path | None = None, cache_dir: Path | None = None,
                    phrasings: dict[str, list[str]] | None = None, category_ids: Sequence[int] | None = None) -> None:
    """Set `detector` (inference.detector.Detector) to detect exactly `classes`: known names keep their rows of the
    checkpoint's embeddings, new ones are embedded (`encode`, else encoder_for(...)); category ids: `category_ids`,
    else the known ones' own and new ones numbered after the largest."""
    import torch

    from defect_vision.models.detector import (
        bake_classes,
        class_feats,
        model_family,
        project_text,
    )
    from defect_vision.models.prompts import ensemble
    from defect_vision.models.text_embeddings import DEFAULT_CACHE_DIR, DEFAULT_CLIP

    classes = list(dict.fromkeys(classes))
    model = getattr(detector, "model", None)
    if model is None or model_family(model) is None:
        raise DatasetError("--classes with new names needs the torch backend (an ONNX export has a fixed vocabulary)")
    known = list(detector.class_names)
    feats = class_feats(model)
    new = [c for c in classes if c not in known]
    if new and encode is None:
        encode = encoder_for(meta, text_encoder, clip or DEFAULT_CLIP, cache_dir or DEFAULT_CACHE_DIR,
                             text_model=getattr(model, "text_model", None))
    raw = ensemble(encode, vocabulary_prompts(new, meta, phrasings)) if new else None
    fresh = dict(zip(new, project_text(model, raw))) if new else {}  # YOLOE: through its fine-tuned projection
    rows = torch.stack([feats[known.index(c)] if c in known else fresh[c] for c in classes])
    old_ids = detector.category_ids or list(range(1, len(known) + 1))
    if category_ids is None:
        nxt = max(old_ids, default=0)
        category_ids = []
        for c in classes:
            if c in known:
                category_ids.append(old_ids[known.index(c)])
            else:
                nxt += 1
                category_ids.append(nxt)
    if len(category_ids) != len(classes):
        raise ConfigError(f"{{classes}}: {len(category_ids)} category ids for {len(classes)} names", "classes")
    bake_classes(model, classes, rows)
    detector.class_names, detector.category_ids = classes, [int(i) for i in category_ids]
