"""Prompt embeddings for YOLO-World, computed by the project itself and cached on disk.

`clip`: open-clip ViT-B-32 with OpenAI's weights read from a local file (the text tower YOLO-World was
pre-trained with; ultralytics would download it at run time). `mobileclip`: YOLOE's text model, the TorchScript
MobileCLIP text encoder ultralytics ships (`mobileclip_blt.ts`, `mobileclip2_b.ts` for YOLOE-26) read from a
local file, tokenised with CLIP's tokenizer (open_clip's copy). `random`: deterministic unit vectors per
prompt, for tests and smoke runs only. Embeddings are L2-normalised like ultralytics' `CLIP.encode_text`.
The cache holds one file per (encoder, weights sha256) mapping prompt text -> 512-d float32 vector.
"""
from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from defect_vision.errors import DatasetError
from defect_vision.io import torch_save

if TYPE_CHECKING:
    import torch

LOG = logging.getLogger("defect_vision.text_embeddings")

ENCODERS = ("clip", "random", "mobileclip")
EMBED_DIM = 512
DEFAULT_CLIP = Path("weights/clip/ViT-B-32.pt")
DEFAULT_CACHE_DIR = Path("weights/clip/embeddings")
MOBILECLIP_FILES = {"mobileclip:blt": "mobileclip_blt.ts", "mobileclip2:b": "mobileclip2_b.ts"}  # YOLOE text_model
MOBILECLIP_URL = "https://github.com/ultralytics/assets/releases/download/v8.4.0/{name}"
CLIP_URL = "https://openaipublic.azureedge.net/clip/models/40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt"
RANDOM_WARNING = (
    "RANDOM TEXT EMBEDDINGS (--text-encoder random): class prompts are NOT encoded by CLIP; the model learns "
    "arbitrary class vectors. Use only for tests and smoke runs; the saved model's metadata says so."
)

_sha_memo: dict[tuple[str, int, int], str] = {}


class MissingWeightsError(DatasetError):
    """A weights file the command needs is not on disk (printed as one line, exit code 2)."""


def file_sha256(path: Path) -> str:
    """sha256 of a file, memoised per (path, size, mtime) within the process."""
    st = Path(path).stat()
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if key not in _sha_memo:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        _sha_memo[key] = h.hexdigest()
    return _sha_memo[key]


def load_clip(path: Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, Callable]:
    """(open-clip CLIP model, tokenizer) from an OpenAI-format ViT-B-32 file (TorchScript archive or state dict).

    `open_clip.load_openai_model` reads both forms (TorchScript via `torch.jit.load`, no pickle) and builds the
    model with QuickGELU, as OpenAI trained it; `create_model('ViT-B-32', pretrained=file)` would need
    `weights_only=False` and `force_quick_gelu=True` for the same file.
    """
    import open_clip

    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(
            f"{path}: CLIP text encoder not found; get OpenAI's ViT-B-32 weights with scripts/download_weights.sh "
            f"(or curl -L -o {path} {CLIP_URL}) or pass --clip PATH; "
            "--text-encoder random trains without it (tests/smoke runs only)"
        )
    try:
        model = open_clip.load_openai_model(str(path), precision="fp32", device=str(device))
    except Exception as exc:  # noqa: BLE001 - any load failure is a bad file
        raise DatasetError(f"{path}: not a readable OpenAI CLIP checkpoint ({exc.__class__.__name__}: {exc})") from None
    if model.text_projection.shape[-1] != EMBED_DIM:
        raise DatasetError(f"{path}: CLIP embedding size is {model.text_projection.shape[-1]}, YOLO-World needs {EMBED_DIM} (ViT-B-32)")
    return model.eval(), open_clip.get_tokenizer("ViT-B-32")


def default_mobileclip(text_model: str | None) -> Path:
    """weights/<file> of a YOLOE model's text model ("mobileclip:blt" -> weights/mobileclip_blt.ts)."""
    return Path("weights") / MOBILECLIP_FILES.get(str(text_model), "mobileclip_blt.ts")


def load_mobileclip(path: Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, Callable]:
    """(TorchScript MobileCLIP text encoder, CLIP tokenizer) from a local file, never downloaded."""
    import open_clip
    import torch

    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(
            f"{path}: MobileCLIP text encoder (YOLOE's text model) not found; get it with "
            f"scripts/download_weights.sh (or curl -L -o {path} {MOBILECLIP_URL.format(name=path.name)}) or pass "
            "--clip PATH; --text-encoder random trains without it (tests/smoke runs only)")
    try:
        model = torch.jit.load(str(path), map_location=str(device))
    except Exception as exc:  # noqa: BLE001 - any load failure is a bad file
        raise DatasetError(f"{path}: not a readable MobileCLIP TorchScript file ({exc.__class__.__name__})") from None
    return model.eval(), open_clip.tokenize


def clip_embed(model: torch.nn.Module, tokenizer: Callable, prompts: list[str]) -> torch.Tensor:
    """(N, 512) unit-norm text embeddings."""
    import torch

    device = next(model.parameters()).device
    with torch.no_grad():
        tokens = tokenizer(prompts).to(device)
        feats = (model.encode_text(tokens) if hasattr(model, "encode_text") else model(tokens)).float()
    return (feats / feats.norm(p=2, dim=-1, keepdim=True)).cpu()


def random_embed(prompts: list[str]) -> torch.Tensor:
    """(N, 512) unit-norm vectors, each a fixed function of its prompt text."""
    import torch

    rows = []
    for p in prompts:
        g = torch.Generator().manual_seed(int(hashlib.sha256(p.encode()).hexdigest()[:15], 16))
        v = torch.randn(EMBED_DIM, generator=g)
        rows.append(v / v.norm())
    return torch.stack(rows) if rows else torch.zeros(0, EMBED_DIM)


def cache_path(cache_dir: Path, encoder: str, weights_sha: str) -> Path:
    return Path(cache_dir) / f"{encoder}-{weights_sha[:16]}.pt"


def _read_cache(path: Path, weights_sha: str) -> dict[str, torch.Tensor]:
    import torch

    if not path.is_file():
        return {}
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - a broken cache is rebuilt, never trusted
        LOG.warning("ignoring unreadable text-embedding cache %s", path)
        return {}
    return data.get("embeddings", {}) if data.get("weights_sha256") == weights_sha else {}


def _write_cache(path: Path, encoder: str, weights_sha: str, table: dict[str, torch.Tensor]) -> None:
    torch_save({"encoder": encoder, "weights_sha256": weights_sha, "embeddings": table}, path)


def encode_prompts(prompts: list[str], encoder: str = "clip", clip_path: Path = DEFAULT_CLIP,
                   cache_dir: Path | None = DEFAULT_CACHE_DIR, device: str | torch.device = "cpu") -> tuple[torch.Tensor, dict]:
    """(N, 512) embeddings of `prompts` and a description {encoder, weights, weights_sha256, cache, cache_hits}.

    The CLIP model is built only when some prompt is missing from the cache.
    """
    import torch

    if encoder not in ENCODERS:
        raise ValueError(f"unknown text encoder {encoder!r} (choose from {', '.join(ENCODERS)})")
    if encoder == "random":
        LOG.warning(RANDOM_WARNING)
        return random_embed(prompts), {"encoder": "random", "weights": None, "weights_sha256": None,
                                       "cache": None, "cache_hits": 0}
    load = load_mobileclip if encoder == "mobileclip" else load_clip
    clip_path = Path(clip_path)
    if not clip_path.is_file():
        load(clip_path)  # raises the error that says how to get the file
    sha = file_sha256(clip_path)
    table: dict[str, torch.Tensor] = {}
    cpath = cache_path(cache_dir, encoder, sha) if cache_dir else None
    if cpath:
        table = _read_cache(cpath, sha)
    missing = sorted({p for p in prompts if p not in table})
    if missing:
        LOG.info("encoding %d prompt(s) with %s from %s", len(missing), encoder, clip_path)
        model, tokenizer = load(clip_path, device)
        table.update(zip(missing, clip_embed(model, tokenizer, missing)))
        del model
        if cpath:
            _write_cache(cpath, encoder, sha, table)
    emb = torch.stack([table[p].float() for p in prompts]) if prompts else torch.zeros(0, EMBED_DIM)
    info = {"encoder": "mobileclip" if encoder == "mobileclip" else "clip:ViT-B-32", "weights": str(clip_path), "weights_sha256": sha,
            "cache": str(cpath) if cpath else None, "cache_hits": len(set(prompts)) - len(missing)}
    return emb, info
