"""pid_models.ldm: the from_ldm path on two real diffusers pipelines with tiny random components.

Every model and tokenizer is built here, seeded; nothing is downloaded (HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from pid_models import ldm
from pid_models.codecs.flux2 import patchify

H, W = 64, 96  # non-square: a transposed unpack would not fit
PROMPT = "a red cat on a blue chair"

# --------------------------------------------------------------------------- tiny components


def _clip_tokenizer(folder: Path):
    """A byte-level CLIP BPE tokenizer from a vocab.json / merges.txt written into `folder`."""
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    merges = ["#version: 0.2", "r e</w>", "c a", "ca t</w>"]
    vocab.update({"re</w>": len(vocab), "ca": len(vocab) + 1, "cat</w>": len(vocab) + 2})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("\n".join(merges) + "\n")
    return CLIPTokenizer.from_pretrained(str(folder), model_max_length=77)


def _t5_tokenizer():
    """A Unigram T5 tokenizer built with the `tokenizers` library."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(c, -3.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    pieces += [("\u2581a", -1.0), ("\u2581cat", -1.0), ("\u2581red", -1.0)]
    tok = Tokenizer(models.Unigram(pieces, unk_id=2))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    return T5TokenizerFast(
        tokenizer_object=tok, eos_token="</s>", unk_token="<unk>", pad_token="<pad>", extra_ids=0
    )


def _clip_config(vocab_size: int, projection: int = 32):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=37, num_hidden_layers=1,
        num_attention_heads=4, max_position_embeddings=77, projection_dim=projection,
        bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )  # fmt: skip


def _vae(latent_channels: int, **extra):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=latent_channels,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(4, 4, 4, 4), layers_per_block=1, norm_num_groups=2, **extra,
    )  # fmt: skip


def _finish(pipe):
    """Eval mode (as `from_pretrained` leaves it: no dropout), fp32, CPU, quiet."""
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe.to("cpu", torch.float32)


def build_sdxl(folder: Path):
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 1), projection_class_embeddings_input_dim=6 * 8 + 32,
        cross_attention_dim=64, norm_num_groups=4,
    )  # fmt: skip
    tokenizer = _clip_tokenizer(folder / "clip")
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        timestep_spacing="leading", steps_offset=1,
    )  # fmt: skip
    pipe = StableDiffusionXLPipeline(
        vae=_vae(4, scaling_factor=0.13025),
        text_encoder=CLIPTextModel(_clip_config(len(tokenizer))),
        text_encoder_2=CLIPTextModelWithProjection(_clip_config(len(tokenizer))),
        tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet, scheduler=scheduler,
    )  # fmt: skip
    return _finish(pipe)


def build_flux(folder: Path, vae=None):
    """A tiny FluxPipeline; `vae` replaces its 16-channel AutoencoderKL (e.g. the tiny codec's)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel, T5Config, T5EncoderModel

    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
        axes_dims_rope=[4, 4, 8],
    )  # fmt: skip
    tokenizer = _clip_tokenizer(folder / "clip")
    t5_tokenizer = _t5_tokenizer()
    t5 = T5EncoderModel(
        T5Config(
            vocab_size=len(t5_tokenizer), d_model=32, d_kv=8, d_ff=37, num_layers=1,
            num_heads=4, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
        )
    )  # fmt: skip
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096,
    )  # fmt: skip
    pipe = FluxPipeline(
        scheduler=scheduler, vae=vae or _vae(16, scaling_factor=0.3611, shift_factor=0.1159,
        use_quant_conv=False, use_post_quant_conv=False),
        text_encoder=CLIPTextModel(_clip_config(len(tokenizer))), tokenizer=tokenizer,
        text_encoder_2=t5, tokenizer_2=t5_tokenizer, transformer=transformer,
    )  # fmt: skip
    return _finish(pipe)


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    return build_sdxl(tmp_path_factory.mktemp("sdxl"))


@pytest.fixture(scope="module")
def flux(tmp_path_factory):
    return build_flux(tmp_path_factory.mktemp("flux"))


FLUX_KW = {"max_sequence_length": 16}


@pytest.fixture(scope="module")
def sdxl_capture(sdxl):
    # 30 steps as the registry: the σ table of pid_reference README section 8 applies.
    return ldm.capture(sdxl, "sdxl", PROMPT, H, W, steps=30, save_xt_steps=[28, 24, 26], seed=3)


@pytest.fixture(scope="module")
def flux_capture(flux):
    return ldm.capture(flux, "flux", PROMPT, H, W, steps=6, save_xt_steps=[2, 4, 5], **FLUX_KW)


# --------------------------------------------------------------------------- registry


def test_registry_covers_every_diffusers_backbone():
    import diffusers

    from pid_models.registry import backbones

    assert set(ldm.PIPELINES) == set(backbones()) - set(ldm.UNAVAILABLE)
    for tag, spec in ldm.PIPELINES.items():
        assert hasattr(diffusers, spec.pipeline_class), tag
        assert all(1 <= k <= spec.steps for k in spec.save_xt_steps), tag
        assert spec.recommended_xt is None or spec.recommended_xt in spec.save_xt_steps
    assert ldm.PIPELINES["flux2-klein-9b"].pipeline_class == "Flux2KleinPipeline"
    assert ldm.PIPELINES["sdxl"].call_kwargs() == {"guidance_scale": 7.5}
    assert ldm.PIPELINES["qwenimage"].call_kwargs()["true_cfg_scale"] == 4.0
    assert ldm.PIPELINES["zimage-turbo"].steps == 9


@pytest.mark.parametrize("backbone", ["dinov2", "siglip"])
def test_rae_backbones_are_unavailable(backbone, sdxl):
    for call in (
        lambda: ldm.pipeline_spec(backbone),
        lambda: ldm.load_pipeline(backbone),
        lambda: ldm.capture(sdxl, backbone, PROMPT, H, W),
    ):
        with pytest.raises(ldm.LdmUnavailable, match="capture its latents yourself"):
            call()
    with pytest.raises(ValueError, match="unknown LDM backbone"):
        ldm.pipeline_spec("sd15")


def test_load_pipeline_offline_hint(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(FileNotFoundError, match="hf download black-forest-labs/FLUX.1-dev"):
        ldm.load_pipeline("flux", device="cpu")
    with pytest.raises(FileNotFoundError, match="hf download someone/absent-repo"):
        ldm.load_pipeline("sdxl", "someone/absent-repo", device="cpu")
    with pytest.raises(FileNotFoundError, match=r"no folder .*nowhere.*hf download stabilityai"):
        ldm.load_pipeline("sdxl", tmp_path / "nowhere", device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        ldm.load_pipeline("sdxl", tmp_path / "empty", device="cpu")


def test_load_pipeline_from_local_folder(sdxl, tmp_path):
    sdxl.save_pretrained(tmp_path / "pipe")
    pipe = ldm.load_pipeline("sdxl", tmp_path / "pipe", device="cpu", dtype=torch.float32)
    assert type(pipe).__name__ == "StableDiffusionXLPipeline"
    assert pipe.dtype == torch.float32
    assert ldm.pipeline_identity(pipe).startswith(f"StableDiffusionXLPipeline:{tmp_path}")


# --------------------------------------------------------------------------- layouts


def test_unpack_matches_diffusers():
    from diffusers import Flux2Pipeline, FluxPipeline, QwenImagePipeline

    packed = torch.randn(2, (H // 16) * (W // 16), 64)
    ours = ldm.unpack_2x2(packed, H, W)
    assert torch.equal(ours, FluxPipeline._unpack_latents(packed, H, W, 8))
    assert torch.equal(ours, QwenImagePipeline._unpack_latents(packed, H, W, 8).squeeze(2))
    tokens = torch.randn(2, (H // 16) * (W // 16), 128)
    ids = Flux2Pipeline._prepare_latent_ids(torch.zeros(2, 1, H // 16, W // 16))
    reference = Flux2Pipeline._unpack_latents_with_ids(tokens, ids)
    assert torch.equal(ldm.unpack_tokens(tokens, H, W), reference)
    with pytest.raises(ValueError, match="does not fit"):
        ldm.unpack_2x2(packed, H, 2 * W)


def test_flux2_klein_raw_output_is_patchified_and_normalised():
    from types import SimpleNamespace

    bn = torch.nn.BatchNorm2d(128, affine=False)
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.25, 2.0)
    config = SimpleNamespace(patch_size=(2, 2), batch_norm_eps=1e-4, latent_channels=32)
    pipe = SimpleNamespace(vae=SimpleNamespace(bn=bn, config=config), vae_scale_factor=8)
    raw = torch.randn(1, 32, H // 8, W // 8)
    out = ldm.to_pid_layout(pipe, "flux2-klein-4b", raw, H, W)
    expected = (patchify(raw) - bn.running_mean.view(1, -1, 1, 1)) / (
        bn.running_var.view(1, -1, 1, 1) + 1e-4
    ).sqrt()
    assert out.shape == (1, 128, H // 16, W // 16)
    torch.testing.assert_close(out, expected)
    # An already-normalised 128-channel latent (Flux2Pipeline) passes through.
    assert torch.equal(ldm.to_pid_layout(pipe, "flux2", out, H, W), out)


def test_ve_to_vp():
    x = torch.randn(1, 4, 2, 2)
    x_vp, s_vp = ldm.ve_to_vp(x, 2.5)
    torch.testing.assert_close(x_vp, x / math.sqrt(7.25))
    assert s_vp == pytest.approx(2.5 / math.sqrt(7.25))
    assert ldm.ve_to_vp(x, 0.0)[1] == 0.0


def test_check_steps():
    assert ldm.check_steps([3, 1, 3], 4) == (1, 3)
    for bad in ([0], [5]):
        with pytest.raises(ValueError, match="outside"):
            ldm.check_steps(bad, 4)


# --------------------------------------------------------------------------- capture


def _check_timings(cap: ldm.Capture) -> None:
    times = [cap.ldm_ms_to_step[k] for k in cap.xt_steps]
    assert all(t > 0 for t in times)
    assert times == sorted(times) and len(set(times)) == len(times)
    assert cap.ldm_total_ms >= times[-1]
    assert cap.ldm_ms_to_step[None] == cap.ldm_total_ms


def test_sdxl_capture(sdxl, sdxl_capture):
    cap = sdxl_capture
    assert cap.xt_steps == [24, 26, 28]
    assert set(cap.latents) == set(cap.sigmas) == {24, 26, 28, None}
    assert (cap.backbone, cap.prompt, cap.seed, cap.steps) == ("sdxl", PROMPT, 3, 30)
    for latent in cap.latents.values():
        assert latent.shape == (1, 4, H // 8, W // 8) and latent.dtype == torch.float32
    sigmas = sdxl.scheduler.sigmas
    for k in (24, 26, 28):
        sigma_eu = float(sigmas[k])
        assert cap.sigmas[k] == pytest.approx(sigma_eu / math.sqrt(sigma_eu**2 + 1), rel=1e-6)
    # pid_reference backbones README section 8, σ_vp table (SDXL, 30 steps).
    assert cap.sigmas[24] == pytest.approx(0.44176, abs=1e-5)
    assert cap.sigmas[26] == pytest.approx(0.32523, abs=1e-5)
    assert cap.sigmas[28] == pytest.approx(0.17922, abs=1e-5)
    assert cap.sigmas[None] == 0.0
    _check_timings(cap)


def test_sdxl_ve_to_vp_applied_to_latent(sdxl):
    raw = {}

    def spy(pipe, i, t, tensors):
        raw[i + 1] = tensors["latents"].clone()
        return {}

    # Same call, run through a spy: the captured latent is the VE latent over sqrt(σ²+1).
    cap = ldm.capture(sdxl, "sdxl", PROMPT, H, W, steps=4, save_xt_steps=[2], seed=1)
    final = sdxl(
        prompt=PROMPT, height=H, width=W, num_inference_steps=4, guidance_scale=7.5,
        generator=torch.Generator().manual_seed(1), output_type="latent",
        callback_on_step_end=spy, callback_on_step_end_tensor_inputs=["latents"],
    ).images  # fmt: skip
    sigma_eu = float(sdxl.scheduler.sigmas[2])
    torch.testing.assert_close(cap.latents[2], raw[2] / math.sqrt(sigma_eu**2 + 1))
    torch.testing.assert_close(cap.latents[None], final)


def test_flux_capture(flux, flux_capture):
    cap = flux_capture
    assert cap.xt_steps == [2, 4, 5]
    assert set(cap.latents) == set(cap.sigmas) == set(cap.ldm_ms_to_step) == {2, 4, 5, None}
    for latent in cap.latents.values():
        assert latent.shape == (1, 16, H // 8, W // 8)
    sigmas = flux.scheduler.sigmas
    assert len(sigmas) == 7
    for k in (2, 4, 5):
        assert cap.sigmas[k] == float(sigmas[k])  # flow matching: unchanged
    assert cap.sigmas[None] == float(sigmas[-1]) == 0.0
    assert cap.sigmas[2] > cap.sigmas[4] > cap.sigmas[5] > 0
    _check_timings(cap)


def test_flux_x0_is_the_unpacked_latent_output(flux, flux_capture):
    out = flux(
        prompt=PROMPT, height=H, width=W, num_inference_steps=6, guidance_scale=3.5,
        generator=torch.Generator().manual_seed(0), output_type="latent", **FLUX_KW,
    ).images  # fmt: skip
    assert out.ndim == 3  # packed
    expected = flux._unpack_latents(out, H, W, flux.vae_scale_factor)
    assert torch.equal(flux_capture.latents[None], expected)
    assert not torch.equal(flux_capture.latents[5], expected)


def test_flux_step_k_sigma_rule(flux):
    """x_t at K is the latent the scheduler stepped to sigmas[K]: with K = steps it is x0."""
    cap = ldm.capture(flux, "flux", PROMPT, H, W, steps=2, save_xt_steps=[1, 2], **FLUX_KW)
    assert cap.sigmas[2] == 0.0
    assert torch.equal(cap.latents[2], cap.latents[None])
    assert cap.sigmas[1] == float(flux.scheduler.sigmas[1])


def test_flux_registry_defaults_match_reference_sigmas(flux):
    """Registry steps (28) and save steps (22, 24, 26) at LDM 512²: README section 8's σ table."""
    cap = ldm.capture(flux, "flux", PROMPT, 512, 512, **FLUX_KW)
    assert (cap.steps, cap.xt_steps) == (28, [22, 24, 26])
    assert cap.latents[24].shape == (1, 16, 64, 64)
    expected = {22: 0.33866, 24: 0.23835, 26: 0.12620, None: 0.0}
    assert cap.sigmas == pytest.approx(expected, abs=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_flux_capture_on_cuda(tmp_path):
    pipe = build_flux(tmp_path).to("cuda")
    cap = ldm.capture(pipe, "flux", PROMPT, H, W, steps=4, save_xt_steps=[1, 3], **FLUX_KW)
    assert all(t.device.type == "cpu" for t in cap.latents.values())
    assert cap.latents[None].shape == (1, 16, H // 8, W // 8)
    _check_timings(cap)


def test_capture_rejects_bad_steps(flux):
    with pytest.raises(ValueError, match="outside"):
        ldm.capture(flux, "flux", PROMPT, H, W, steps=3, save_xt_steps=[4], **FLUX_KW)


# --------------------------------------------------------------------------- cache


def _key(**changes) -> str:
    args = {
        "backbone": "flux", "pipeline_identity": "FluxPipeline:x:torch.float32:cpu",
        "prompt": PROMPT, "height": H, "width": W, "steps": 6, "seed": 0,
        "save_xt_steps": [2, 4, 5],
    }  # fmt: skip
    args.update(changes)
    return ldm.capture_key(**args)


def test_capture_key_depends_on_every_input():
    base = _key()
    assert len(base) == 64 and base == _key(save_xt_steps=[5, 4, 2, 2])
    changes = [
        {"backbone": "zimage"}, {"pipeline_identity": "FluxPipeline:y:torch.bfloat16:cuda"},
        {"prompt": PROMPT + "."}, {"height": H + 16}, {"width": W + 16}, {"steps": 7},
        {"seed": 1}, {"save_xt_steps": [2, 4]}, {"extra": {"guidance_scale": 2.0}},
    ]  # fmt: skip
    keys = {_key(**change) for change in changes}
    assert len(keys) == len(changes) and base not in keys


def _assert_same(a: ldm.Capture, b: ldm.Capture) -> None:
    assert list(a.latents) == list(b.latents)
    for k in a.latents:
        assert torch.equal(a.latents[k], b.latents[k])
    assert a.sigmas == b.sigmas and a.ldm_ms_to_step == b.ldm_ms_to_step
    fields = ("ldm_total_ms", "prompt", "seed", "steps", "backbone", "height", "width")
    assert all(getattr(a, f) == getattr(b, f) for f in fields)


def test_cache_round_trip(tmp_path, flux_capture):
    cache = ldm.LatentCache(tmp_path)
    key = _key()
    assert cache.get(key) is None
    cache.put(key, flux_capture)
    _assert_same(cache.get(key), flux_capture)
    assert cache.get(_key(seed=1)) is None
    tensors, meta = cache.paths(key)
    assert json.loads(meta.read_text())["sigmas"]["x0"] == 0.0
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]


@pytest.mark.parametrize("damage", ["tensors", "truncated", "json", "missing_tensors"])
def test_corrupt_cache_entry_is_recomputed(tmp_path, flux_capture, damage):
    cache = ldm.LatentCache(tmp_path)
    key = _key()
    cache.put(key, flux_capture)
    tensors, meta = cache.paths(key)
    if damage == "tensors":
        blob = bytearray(tensors.read_bytes())
        blob[-1] ^= 0xFF
        tensors.write_bytes(bytes(blob))
    elif damage == "truncated":
        tensors.write_bytes(tensors.read_bytes()[:50])
    elif damage == "json":
        meta.write_text("{not json")
    else:
        tensors.unlink()
    assert cache.get(key) is None
    calls = []

    def compute() -> ldm.Capture:
        calls.append(1)
        return flux_capture

    _assert_same(cache.get_or_compute(key, compute), flux_capture)
    _assert_same(cache.get_or_compute(key, compute), flux_capture)
    assert calls == [1]
    _assert_same(cache.get(key), flux_capture)


def test_cache_rejects_unsafe_keys(tmp_path):
    with pytest.raises(ValueError, match="bad cache key"):
        ldm.LatentCache(tmp_path).get("../escape")
