"""SAM image embeddings computed once per image by the frozen encoder and cached on disk in fp16.

Key: (image content hash, model type, image-encoder weights hash, input size). Files live in
`<cache_dir>/<model_type>-<input size>-<weights hash[:16]>/<image hash>.npy`. `encoder_calls`
counts how often the image encoder really ran (once per distinct image on a cold cache, 0 when warm).
"""
from __future__ import annotations

import hashlib
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


def image_hash(rgb: np.ndarray) -> str:
    """sha256 of the decoded RGB pixels (and shape): equal pixels share embeddings whatever the file format."""
    h = hashlib.sha256(str(rgb.shape).encode())
    h.update(np.ascontiguousarray(rgb).tobytes())
    return h.hexdigest()


def weights_hash(module: torch.nn.Module) -> str:
    """sha256 over a module's state_dict (names, shapes, values): the embeddings depend on exactly this."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def preprocess(sam: Sam, rgb: np.ndarray, device: torch.device | str = "cpu") -> tuple[torch.Tensor, tuple[int, int]]:
    """(1x3xSxS normalised padded input, resized (h, w)) exactly as SamPredictor.set_image prepares it."""
    transform = ResizeLongestSide(sam.image_encoder.img_size)
    resized = transform.apply_image(rgb)
    x = torch.as_tensor(resized, device=device).permute(2, 0, 1).contiguous()[None]
    return sam.preprocess(x), tuple(resized.shape[:2])


class EmbeddingCache:
    """fp16 disk cache of one image encoder's embeddings."""

    def __init__(self, cache_dir: Path, sam: Sam, model_type: str, encoder_hash: str | None = None):
        self.sam = sam
        self.model_type = model_type
        self.input_size = int(sam.image_encoder.img_size)
        self.encoder_hash = encoder_hash or weights_hash(sam.image_encoder)
        self.dir = Path(cache_dir) / f"{model_type}-{self.input_size}-{self.encoder_hash[:16]}"
        self.encoder_calls = 0
        self._hash_of: dict[Path, str] = {}

    def path(self, key: str) -> Path:
        return self.dir / f"{key}.npy"

    def key_of(self, image_path: Path) -> str:
        """The content hash of an image file (memoised per path for this run)."""
        image_path = Path(image_path)
        if image_path not in self._hash_of:
            self._hash_of[image_path] = image_hash(read_image(image_path))
        return self._hash_of[image_path]

    @torch.no_grad()
    def encode(self, rgb: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
        """Run the image encoder (counted): 1x256xgxg float32 on `device`."""
        self.encoder_calls += 1
        x, _ = preprocess(self.sam, rgb, device)
        with torch.autocast("cuda", dtype=HALF, enabled=torch.device(device).type == "cuda"):
            return self.sam.image_encoder(x).float()

    def save(self, key: str, emb: torch.Tensor) -> None:
        """Atomic write of one fp16 embedding (temporary file + rename)."""
        with atomic_path(self.path(key)) as tmp, open(tmp, "wb") as f:
            np.save(f, emb.detach().to("cpu", torch.float16).numpy())

    def load(self, key: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor | None:
        """The cached embedding as `dtype` on `device` (copied as stored, fp16, then converted there), or None when
        absent or unreadable."""
        try:
            arr = np.load(self.path(key))
        except (OSError, ValueError, EOFError):
            return None
        return torch.from_numpy(arr).to(device).to(dtype)

    def get(self, image_path: Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Embedding of an image: from the cache, or computed once and cached."""
        key = self.key_of(image_path)
        emb = self.load(key, device, dtype)
        if emb is None:
            emb = self.encode(read_image(Path(image_path)), device)
            self.save(key, emb)
            emb = emb.to(dtype)
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
        files = list(self.dir.glob("*.npy"))
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

    def __call__(self, image_path: Path) -> torch.Tensor:
        emb = self.held.get(image_path)
        if emb is None:
            emb = self.cache.get(image_path, self.device, self.dtype)
            self.disk_reads += 1
            if self.bytes + emb.nbytes <= self.budget:
                self.held[image_path] = emb
                self.bytes += emb.nbytes
        return emb
