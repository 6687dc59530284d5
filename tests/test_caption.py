"""Caption conditioning: the chi prompt, tokenisation, BOS + last selection, offline loading, cache."""

from __future__ import annotations

import json

import pytest
import torch

from pid_models.caption import (
    CachedCaptionEncoder,
    CaptionCache,
    GemmaCaptionEncoder,
    chi_prompt,
    resolve_pretrained,
)
from pid_models.tiny import build_tiny_gemma


@pytest.fixture(scope="module")
def tiny_gemma():
    return build_tiny_gemma(seed=0)


@pytest.fixture
def encoder(tiny_gemma):
    model, tokenizer = tiny_gemma
    return GemmaCaptionEncoder(model, tokenizer, identity="tiny", max_length=16)


def test_chi_prompt_is_the_reference_prefix(reference_dir):
    reference = json.loads((reference_dir / "text/chi_prompt.json").read_text())
    assert chi_prompt() == reference["joined"] == "\n".join(reference["lines"])
    assert chi_prompt().endswith("User Prompt: ")


def test_tokens_are_prefix_plus_caption_right_padded_to_n_chi_plus_max_length_minus_2(encoder):
    tokens = encoder.tokenize(["a cat", "a busy city street at dusk"])
    n_chi = encoder.prefix_tokens
    assert n_chi == len(encoder.tokenizer(chi_prompt())["input_ids"])  # BOS included
    assert tokens["input_ids"].shape == (2, n_chi + 16 - 2)
    assert (tokens["input_ids"][:, 0] == encoder.tokenizer.bos_token_id).all()
    short = tokens["attention_mask"][0]
    assert short[: n_chi + 5].all() and not short[n_chi + 5 :].any()  # right padding
    assert (tokens["input_ids"][0, n_chi + 5 :] == encoder.tokenizer.pad_token_id).all()


def test_embedding_is_bos_plus_the_last_max_length_minus_1_positions(encoder):
    y = encoder.encode(["a cat", "a dog"])
    assert y.shape == (2, 16, 24) and y.dtype == torch.float32
    tokens = encoder.tokenize(["a cat", "a dog"])
    with torch.no_grad():
        hidden = encoder.decoder(**tokens).last_hidden_state
    assert torch.equal(y[:, 0], hidden[:, 0].float())
    assert torch.equal(y[:, 1:], hidden[:, -15:].float())
    assert (y[0] - y[1]).abs().max() > 1e-3


def test_overlong_captions_are_truncated_not_refused(encoder):
    assert encoder.encode(["word " * 500]).shape == (1, 16, 24)


@pytest.fixture
def saved_gemma(tiny_gemma, tmp_path):
    model, tokenizer = tiny_gemma
    folder = tmp_path / "gemma-tiny"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_loads_from_a_local_folder_offline(saved_gemma, encoder):
    loaded = GemmaCaptionEncoder.from_pretrained(saved_gemma, dtype=torch.float32, max_length=16)
    assert torch.allclose(loaded.encode(["a cat"]), encoder.encode(["a cat"]), atol=1e-5)


def test_loads_a_repo_id_from_the_hf_cache_offline(saved_gemma, tmp_path, monkeypatch):
    hub = tmp_path / "hub"
    repo = hub / "models--Efficient-Large-Model--gemma-2-2b-it"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots").mkdir()
    saved_gemma.rename(repo / "snapshots" / commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(hub))
    assert resolve_pretrained("Efficient-Large-Model/gemma-2-2b-it") == repo / "snapshots" / commit
    loaded = GemmaCaptionEncoder.from_pretrained(dtype=torch.float32, max_length=16)
    assert loaded.encode(["a cat"]).shape == (1, 16, 24)


def test_absent_encoder_names_the_fetch_command(tmp_path, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="hf download nobody/no-such-model"):
        resolve_pretrained("nobody/no-such-model")


def test_each_caption_is_encoded_once_per_machine(encoder, tmp_path):
    cache = CaptionCache(tmp_path)
    first = CachedCaptionEncoder(encoder, cache)
    y1 = first.encode(["a cat", "a dog", "a cat"])
    assert first.encoded == 2
    assert torch.equal(y1[0], y1[2])
    first.encode(["a dog"])
    assert first.encoded == 2
    second = CachedCaptionEncoder(encoder, CaptionCache(tmp_path))  # a new process, same disk
    assert torch.equal(second.encode(["a cat", "a dog"]), y1[:2])
    assert second.encoded == 0


def test_cache_is_keyed_by_encoder_identity(tiny_gemma, tmp_path):
    model, tokenizer = tiny_gemma
    cache = CaptionCache(tmp_path)
    a = GemmaCaptionEncoder(model, tokenizer, identity="weights-a", max_length=16)
    b = GemmaCaptionEncoder(model, tokenizer, identity="weights-b", max_length=16)
    short = GemmaCaptionEncoder(model, tokenizer, identity="weights-a", max_length=8)
    assert len({cache.path(e.identity, "a cat") for e in (a, b, short)}) == 3


def test_a_corrupt_cache_entry_is_recomputed(encoder, tmp_path):
    cache = CaptionCache(tmp_path)
    CachedCaptionEncoder(encoder, cache).encode(["a cat"])
    cache.path(encoder.identity, "a cat").write_bytes(b"garbage")
    again = CachedCaptionEncoder(encoder, cache)
    assert again.encode(["a cat"]).shape == (1, 16, 24)
    assert again.encoded == 1
