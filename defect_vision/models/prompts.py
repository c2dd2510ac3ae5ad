"""Class embeddings from phrasings: each class is the normalised mean of its phrasings' text embeddings (prompt
ensembling, as CLIP's zero-shot classifiers build their class weights), with the phrasings encoded once through
the cached text encoder of text_embeddings.py. An `Encoder` is any `list[str] -> (N, 512)` function: the
commands build one from --text-encoder/--clip, tests pass stand-ins whose answer is known."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from defect_vision.errors import ConfigError, DatasetError
from defect_vision.models.text_embeddings import (
    DEFAULT_CACHE_DIR,
    DEFAULT_CLIP,
    ENCODERS,
    encode_prompts,
)

if TYPE_CHECKING:
    import torch

Encoder = Callable[[list[str]], "torch.Tensor"]  # prompts -> (N, 512) embeddings, one row per prompt


def make_encoder(name: str = "clip", clip: Path = DEFAULT_CLIP, cache_dir: Path | None = DEFAULT_CACHE_DIR,
                 device: str = "cpu") -> tuple[Encoder, dict]:
    """(encoder, description) for --text-encoder clip|random|mobileclip (`clip`: that model's file); the description is filled in by the first call
    (encoder, weights sha256, cache hits). A missing CLIP file fails here, before any work."""
    if name not in ENCODERS:
        raise ConfigError(f"{{text_encoder}} {name}: choose from {', '.join(ENCODERS)}", "text_encoder")
    if name != "random" and not Path(clip).is_file():
        encode_prompts(["x"], name, Path(clip), None)  # raises MissingWeightsError saying how to get the file
    info: dict = {"encoder": {"random": "random", "mobileclip": "mobileclip"}.get(name, "clip:ViT-B-32")}

    def encode(prompts: list[str]):
        emb, found = encode_prompts(list(prompts), name, Path(clip), cache_dir, device)
        info.update(found)
        return emb

    return encode, info


def templated(phrasings: Sequence[Sequence[str]], template: str = "{name}", category: str = "") -> list[list[str]]:
    """Each phrasing put through the prompt template ({name} = the phrasing, {category} = the category)."""
    try:
        return [[template.format(name=p, category=category.replace("_", " ")) for p in ps] for ps in phrasings]
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(f"{{prompt_template}} {template!r}: unknown placeholder {exc} "
                           "(use {name} and {category})", "prompt_template") from None


def ensemble(encode: Encoder, phrasings: Sequence[Sequence[str]]):
    """(K, 512) class embeddings: per class the L2-normalised mean of its phrasings' (unit) embeddings; every
    distinct phrasing is encoded once."""
    import torch

    if any(not ps for ps in phrasings):
        raise DatasetError("every class needs at least one phrasing")
    unique = list(dict.fromkeys(p for ps in phrasings for p in ps))
    if not unique:
        return torch.zeros(0, 512)
    table = dict(zip(unique, encode(unique).float()))
    rows = []
    for ps in phrasings:
        vecs = torch.stack([table[p] / table[p].norm().clamp_min(1e-12) for p in ps])
        mean = vecs.mean(0)
        rows.append(mean / mean.norm().clamp_min(1e-12))
    return torch.stack(rows)


def bake_vocabulary(model, names: Sequence[str], embeddings) -> None:
    """Make a YOLO-World or YOLOE model detect `names` from these (K, 512) text embeddings (ultralytics'
    set_classes, minus the text model; YOLOE's go through its head's projection)."""
    from defect_vision.models.detector import bake_text

    bake_text(model, names, embeddings)
