"""SAM image embeddings computed once per image by the frozen encoder and cached on disk in fp16.

Key: (image content hash, model type, image-encoder weights hash, input size). Files live in
`<cache_dir>/<model_type>-<input size>-<weights hash[:16]>/<image hash>.npy` (SAM 2: `.npz` with its three maps, the
hash over the encoder, the decoder's two high-resolution projections and no_mem_embed). `encoder_calls`
counts how often the image encoder really ran (once per distinct image on a cold cache, 0 when warm).
"""
from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from segment_anything.modeling import Sam
from tqdm import tqdm

from defect_vision.data.images import read_image
from defect_vision.devices import HALF
from defect_vision.io import atomic_path
from defect_vision.models.sam import ResizeLongestSide
from defect_vision.models.sam_family import ops_for


def image_hash(rgb: np.ndarray) -> str:
    """sha256 of the decoded RGB pixels (and shape): equal pixels share embeddings whatever the file format."""
    h = hashlib.sha256(str(rgb.shape).encode())
    h.update(np.ascontiguousarray(rgb).tobytes())
    return h.hexdigest()


def weights_hash(module: torch.nn.Module) -> str:
    """sha256 over a module's state_dict (names, shapes, values): the embeddings depend on exactly this."""
    return state_hash(module.state_dict())


def state_hash(state: dict) -> str:
    """sha256 over a state_dict's names, shapes and values."""
    h = hashlib.sha256()
    for name, t in state.items():
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())  # 0-dim too (BatchNorm)
    return h.hexdigest()


def preprocess(sam: Sam, rgb: np.ndarray, device: torch.device | str = "cpu") -> tuple[torch.Tensor, tuple[int, int]]:
    """(1x3xSxS normalised padded input, resized (h, w)) exactly as SamPredictor.set_image prepares it."""
    transform = ResizeLongestSide(sam.image_encoder.img_size)
    resized = transform.apply_image(rgb)
    x = torch.as_tensor(resized, device=device).permute(2, 0, 1).contiguous()[None]
    return sam.preprocess(x), tuple(resized.shape[:2])


Embedding = torch.Tensor | tuple[torch.Tensor, ...]  # SAM: the embedding; SAM 2: (embedding, high_res_0, high_res_1)


def nbytes(emb: Embedding) -> int:
    return sum(t.nbytes for t in emb) if isinstance(emb, tuple) else emb.nbytes


class EmbeddingCache:
    """fp16 disk cache of one image encoder's features: SAM's embedding (<key>.npy), or SAM 2's three maps
    (<key>.npz: the embedding and the two high-resolution maps its decoder reads)."""

    def __init__(self, cache_dir: Path, sam: Sam, model_type: str, encoder_hash: str | None = None):
        self.sam = sam
        self.ops = ops_for(sam)
        self.model_type = model_type
        self.input_size = self.ops.img_size
        self.encoder_hash = encoder_hash or (weights_hash(sam.image_encoder) if self.ops.family == "sam"
                                             else state_hash(self.ops.encoder_state()))
        self.dir = Path(cache_dir) / f"{model_type}-{self.input_size}-{self.encoder_hash[:16]}"
        self.encoder_calls = 0
        self._hash_of: dict[Path, str] = {}

    @property
    def maps(self) -> int:
        return len(self.ops.names)

    def path(self, key: str) -> Path:
        return self.dir / f"{key}.{'npy' if self.maps == 1 else 'npz'}"

    def key_of(self, image_path: Path) -> str:
        """The content hash of an image file (memoised per path for this run)."""
        image_path = Path(image_path)
        if image_path not in self._hash_of:
            self._hash_of[image_path] = image_hash(read_image(image_path))
        return self._hash_of[image_path]

    @torch.no_grad()
    def encode(self, rgb: np.ndarray, device: torch.device | str = "cpu") -> Embedding:
        """Run the image encoder (counted): 1x256xgxg float32 on `device` (SAM 2: its three maps)."""
        self.encoder_calls += 1
        x = self.ops.prepare(rgb, device)
        with torch.autocast("cuda", dtype=HALF, enabled=torch.device(device).type == "cuda"):
            maps = tuple(m.float() for m in self.ops.encode(x)[0])
        return maps[0] if self.maps == 1 else maps

    def save(self, key: str, emb: Embedding) -> None:
        """Atomic write of one image's fp16 features (temporary file + rename)."""
        def half(t: torch.Tensor) -> np.ndarray:
            return t.detach().to("cpu", torch.float16).numpy()

        with atomic_path(self.path(key)) as tmp, open(tmp, "wb") as f:
            if self.maps == 1:
                np.save(f, half(emb))
            else:
                np.savez(f, **{name: half(t) for name, t in zip(self.ops.names, emb)})

    def load(self, key: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Embedding | None:
        """The cached features as `dtype` on `device` (copied as stored, fp16, then converted there), or None when
        absent or unreadable."""
        try:
            if self.maps == 1:
                return torch.from_numpy(np.load(self.path(key))).to(device).to(dtype)
            with np.load(self.path(key)) as z:
                return tuple(torch.from_numpy(z[name]).to(device).to(dtype) for name in self.ops.names)
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile):
            return None

    def get(self, image_path: Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Embedding of an image: from the cache, or computed once and cached."""
        key = self.key_of(image_path)
        emb = self.load(key, device, dtype)
        if emb is None:
            emb = self.encode(read_image(Path(image_path)), device)
            self.save(key, emb)
            emb = tuple(t.to(dtype) for t in emb) if isinstance(emb, tuple) else emb.to(dtype)
        return emb

    def ensure(self, image_paths: Iterable[Path], device: torch.device | str = "cpu", progress: bool = True) -> int:
        """Compute the missing embeddings of these images; returns how many were computed."""
        before = self.encoder_calls
        paths = list(dict.fromkeys(Path(p) for p in image_paths))
        for p in tqdm(paths, desc=f"embeddings {self.model_type}", unit="img", disable=not progress):
            key = self.key_of(p)
            if not self.path(key).is_file():
                self.save(key, self.encode(read_image(p), device))
        return self.encoder_calls - before

    def megabytes_per_image(self) -> float:
        files = list(self.dir.glob(f"*{self.path('x').suffix}"))
        return sum(f.stat().st_size for f in files) / max(len(files), 1) / 2**20


class ResidentEmbeddings:
    """The cache's embeddings kept in memory on the training device after their first read, so a step costs a
    lookup instead of a disk read, an fp16 -> fp32 conversion and a host-to-device copy. Held in the dtype the
    steps consume (fp16 on CUDA, where autocast runs the decoder in fp16; fp32 on CPU): the values are the cached
    fp16 ones either way. Up to `budget_bytes`; embeddings beyond it are read from the cache each time."""

    def __init__(self, cache: EmbeddingCache, device: torch.device, dtype: torch.dtype, budget_bytes: int):
        self.cache, self.device, self.dtype, self.budget = cache, device, dtype, budget_bytes
        self.held: dict[Path, torch.Tensor] = {}
        self.bytes = 0
        self.disk_reads = 0  # reads from the cache files (first reads, and every read beyond the budget)

    def __call__(self, image_path: Path) -> Embedding:
        emb = self.held.get(image_path)
        if emb is None:
            emb = self.cache.get(image_path, self.device, self.dtype)
            self.disk_reads += 1
            if self.bytes + nbytes(emb) <= self.budget:
                self.held[image_path] = emb
                self.bytes += nbytes(emb)
        return emb
