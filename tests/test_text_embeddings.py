"""Prompt embeddings: OpenAI-format CLIP file loading, the on-disk cache, the random encoder."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from defect_vision.models import text_embeddings as te


def _openai_archive(state_dict: dict[str, torch.Tensor], extras: dict[str, int]) -> torch.jit.ScriptModule:
    """A TorchScript archive whose state_dict has exactly OpenAI's CLIP keys (as in their released ViT-B-32.pt)."""
    root = torch.nn.Module()
    for key, value in state_dict.items():
        *parents, leaf = key.split(".")
        mod = root
        for name in parents:
            if not hasattr(mod, name):
                mod.add_module(name, torch.nn.Module())
            mod = getattr(mod, name)
        mod.register_parameter(leaf, torch.nn.Parameter(value.clone(), requires_grad=False))
    for key, value in extras.items():
        root.register_buffer(key, torch.tensor(value))
    return torch.jit.script(root)


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    """weights/clip/ViT-B-32.pt: an open-clip ViT-B-32 with random weights saved in OpenAI's checkpoint format."""
    import open_clip

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32-quickgelu", pretrained=None).eval()  # OpenAI's B/32 uses QuickGELU
    sd = {k: (v.half() if v.is_floating_point() else v) for k, v in model.state_dict().items()}  # OpenAI ships fp16
    path = tmp_path_factory.mktemp("repo") / "weights" / "clip" / "ViT-B-32.pt"
    path.parent.mkdir(parents=True)
    torch.jit.save(_openai_archive(sd, {"input_resolution": 224, "context_length": 77, "vocab_size": 49408}), str(path))
    model.load_state_dict({k: v.float() for k, v in sd.items()})  # the reference sees the same fp16-rounded weights
    return path, model


def test_loader_reads_openai_format_and_matches_the_source_model(clip_file):
    path, reference = clip_file
    model, tokenizer = te.load_clip(path)
    prompts = ["hole", "faulty imprint", "scratch on wood"]
    got = te.clip_embed(model, tokenizer, prompts)
    with torch.no_grad():
        want = reference.encode_text(tokenizer(prompts)).float()
    want = want / want.norm(dim=-1, keepdim=True)
    assert got.shape == (3, 512)
    assert torch.allclose(got.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(got, want, atol=1e-4)
    assert (got[0] - got[1]).abs().max() > 1e-3  # different prompts, different vectors


def test_cache_hit_skips_encoder_and_changed_prompt_misses(clip_file, tmp_path, monkeypatch):
    path, reference = clip_file  # the loader itself is checked above; here count how often it is asked for
    built = []
    tokenizer = __import__("open_clip").get_tokenizer("ViT-B-32")
    monkeypatch.setattr(te, "load_clip", lambda p, device="cpu": built.append(p) or (reference, tokenizer))
    cache = tmp_path / "cache"

    first, info1 = te.encode_prompts(["hole", "stain"], "clip", path, cache)
    assert len(built) == 1 and info1["cache_hits"] == 0
    assert info1["weights_sha256"] == te.file_sha256(path)
    assert Path(info1["cache"]).is_file() and Path(info1["cache"]).parent == cache

    second, info2 = te.encode_prompts(["stain", "hole"], "clip", path, cache)
    assert len(built) == 1, "second run must be served from the cache without building the encoder"
    assert info2["cache_hits"] == 2
    assert torch.equal(second, first[[1, 0]])

    third, info3 = te.encode_prompts(["hole", "stain on wood"], "clip", path, cache)
    assert len(built) == 2 and info3["cache_hits"] == 1
    assert torch.equal(third[0], first[0]) and not torch.allclose(third[1], first[1])


def test_cache_is_keyed_by_weights_hash(tmp_path):
    cache = tmp_path / "cache"
    table = {"hole": torch.ones(512)}
    te._write_cache(te.cache_path(cache, "clip", "a" * 64), "clip", "a" * 64, table)
    assert torch.equal(te._read_cache(te.cache_path(cache, "clip", "a" * 64), "a" * 64)["hole"], torch.ones(512))
    assert te._read_cache(te.cache_path(cache, "clip", "b" * 64), "b" * 64) == {}  # other weights: other file
    # a file whose recorded hash differs (e.g. renamed by hand) is not trusted
    te.cache_path(cache, "clip", "a" * 64).rename(te.cache_path(cache, "clip", "c" * 64))
    assert te._read_cache(te.cache_path(cache, "clip", "c" * 64), "c" * 64) == {}


def test_missing_clip_file_says_how_to_get_it(tmp_path):
    missing = tmp_path / "weights" / "clip" / "ViT-B-32.pt"
    with pytest.raises(te.MissingWeightsError) as err:
        te.encode_prompts(["hole"], "clip", missing, tmp_path / "cache")
    msg = str(err.value)
    assert str(missing) in msg and "--text-encoder random" in msg and "openaipublic" in msg
    assert not (tmp_path / "cache").exists()


def test_random_encoder_is_loud_deterministic_and_unit_norm(caplog):
    with caplog.at_level("WARNING"):
        a, info = te.encode_prompts(["hole", "scratch", "hole"], "random", cache_dir=None)
    assert "RANDOM TEXT EMBEDDINGS" in caplog.text
    assert info["encoder"] == "random" and info["weights_sha256"] is None
    assert a.shape == (3, 512) and torch.allclose(a.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.equal(a[0], a[2]) and abs(float(a[0] @ a[1])) < 0.3
    assert torch.equal(te.random_embed(["scratch"])[0], a[1])
