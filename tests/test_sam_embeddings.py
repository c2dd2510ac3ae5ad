"""The fp16 embedding cache: keys, counter, warm cache, and SamPredictor-exact preprocessing."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from segment_anything import SamPredictor

from defect_vision.models.sam import build_sam
from defect_vision.training.sam_embeddings import EmbeddingCache, image_hash


@pytest.fixture()
def images(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate([(120, 200), (256, 256), (90, 60)]):
        p = tmp_path / f"img{i}.png"
        cv2.imwrite(str(p), rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        paths.append(p)
    return paths


def test_cache_encodes_once_then_reads_fp16(tmp_path, images):
    torch.manual_seed(0)
    sam = build_sam("vit_tiny", None)
    cache = EmbeddingCache(tmp_path / "cache", sam, "vit_tiny")
    assert cache.ensure(images + images[:1], progress=False) == 3  # duplicates count once
    assert cache.encoder_calls == 3 and len(list(cache.dir.glob("*.npy"))) == 3
    assert cache.dir.name.startswith("vit_tiny-256-")
    stored = np.load(cache.path(cache.key_of(images[0])))
    assert stored.dtype == np.float16 and stored.shape == (1, 256, 32, 32)
    emb = cache.get(images[0])
    assert emb.dtype == torch.float32 and cache.encoder_calls == 3
    fresh = cache.encode(cv2.cvtColor(cv2.imread(str(images[0])), cv2.COLOR_BGR2RGB))
    assert torch.allclose(emb, fresh, atol=2e-3 * fresh.abs().max().item())
    assert cache.megabytes_per_image() == pytest.approx(256 * 32 * 32 * 2 / 2**20, rel=0.01)

    same = build_sam("vit_tiny", None)  # a fresh model with the same weights: same cache folder, nothing to encode
    same.load_state_dict(sam.state_dict())
    warm = EmbeddingCache(tmp_path / "cache", same, "vit_tiny")
    assert warm.dir == cache.dir
    assert warm.ensure(images, progress=False) == 0 and warm.encoder_calls == 0


def test_key_changes_with_encoder_weights_and_image_content(tmp_path, images):
    torch.manual_seed(0)
    a = EmbeddingCache(tmp_path, build_sam("vit_tiny", None), "vit_tiny")
    torch.manual_seed(1)
    b = EmbeddingCache(tmp_path, build_sam("vit_tiny", None), "vit_tiny")
    assert a.dir != b.dir
    rgb = cv2.cvtColor(cv2.imread(str(images[0])), cv2.COLOR_BGR2RGB)
    changed = rgb.copy()
    changed[0, 0, 0] ^= 1
    assert image_hash(rgb) == a.key_of(images[0]) and image_hash(changed) != image_hash(rgb)
    # the same pixels in another file share the key
    copy = tmp_path / "copy.png"
    cv2.imwrite(str(copy), cv2.imread(str(images[0])))
    assert a.key_of(copy) == a.key_of(images[0])


def test_preprocessing_matches_sam_predictor(tmp_path, images):
    torch.manual_seed(0)
    sam = build_sam("vit_tiny", None)
    cache = EmbeddingCache(tmp_path, sam, "vit_tiny")
    rgb = cv2.cvtColor(cv2.imread(str(images[0])), cv2.COLOR_BGR2RGB)
    predictor = SamPredictor(sam)
    predictor.set_image(rgb)
    assert torch.allclose(cache.encode(rgb), predictor.get_image_embedding(), atol=1e-5)
