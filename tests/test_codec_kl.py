"""KL-VAE codecs (FLUX.1, SD3, SDXL) against the oracle's codec vectors; loading and errors."""

from __future__ import annotations

import json

import pytest
import torch

from pid_bench.parity import run_codec
from pid_models.checkpoints import CheckpointError
from pid_models.codecs import CODEC_FILES, add_noise, build_codec, load_codec
from pid_models.codecs.kl import (
    build_kl_codec,
    is_ldm_format,
    read_weights,
    shipped_config,
    to_diffusers_keys,
)


@pytest.fixture
def golden(reference_dir):
    return reference_dir / "backbones" / "golden"


def _sidecar(golden, name):
    return json.loads((golden / f"{name}.json").read_text())


@pytest.mark.parametrize("name", ["flux", "sd3", "sdxl"])
def test_codec_matches_golden_encode_latent_decode_and_noise(golden, name):
    result = run_codec(golden, _sidecar(golden, name))
    assert result.passed, result.line()  # CODEC_STANDARD on every stage, as `parity` runs it


def test_flux_bfl_and_diffusers_key_formats_load_the_same_weights(golden):
    config = _sidecar(golden, "flux")["diffusers_equivalent"]["config"]
    bfl = read_weights(golden / "flux_weights.safetensors")
    assert is_ldm_format(bfl)
    converted = to_diffusers_keys(bfl, config)
    assert not is_ldm_format(converted)
    image = torch.rand(1, 3, 32, 32) * 2 - 1
    a = build_kl_codec("flux", bfl, config).encode(image)
    b = build_kl_codec("flux", converted, config).encode(image)
    assert torch.equal(a, b)


def test_a_missing_vae_key_is_named(golden):
    config = _sidecar(golden, "sdxl")["diffusers_equivalent"]["config"]
    weights = read_weights(golden / "sdxl_weights.safetensors")
    del weights["post_quant_conv.weight"]
    with pytest.raises(ValueError, match="post_quant_conv.weight"):
        build_kl_codec("sdxl", weights, config)


def test_sdxl_noise_is_variance_preserving_and_sigma_zero_draws_nothing():
    latent = torch.ones(1, 4, 2, 2)
    gen = torch.Generator().manual_seed(0)
    assert add_noise(latent, 0.0, "vp", gen) is latent
    eps = torch.randn(latent.shape, generator=torch.Generator().manual_seed(0))
    out = add_noise(latent, 0.6, "vp", torch.Generator().manual_seed(0))
    assert torch.allclose(out, 0.8 * latent + 0.6 * eps)


@pytest.mark.parametrize(
    "name, params",
    [("flux", 83_819_683), ("sd3", 83_819_683), ("sdxl", 83_653_863)],
)
def test_shipped_full_size_configs_build_on_meta(name, params):
    from diffusers import AutoencoderKL

    config = {k: v for k, v in shipped_config(name).items() if not k.startswith("_")}
    with torch.device("meta"):
        vae = AutoencoderKL(**config)
    assert sum(p.numel() for p in vae.parameters()) == params


def test_missing_codec_file_names_the_expected_path(tmp_path):
    with pytest.raises(CheckpointError) as info:
        load_codec("zimage-turbo", tmp_path)
    (rel,) = CODEC_FILES["flux"]
    assert str(tmp_path / rel) in str(info.value)
    assert f'hf download nvidia/PiD --include "{rel}" --local-dir {tmp_path}' in str(info.value)


def test_a_backbone_without_a_codec_is_refused():
    with pytest.raises(ValueError, match="no native codec for backbone 'tiny'"):
        build_codec("tiny", {})


@pytest.mark.parametrize("form", ["flow", "vp"])
def test_a_sigma_at_or_below_zero_adds_no_noise_and_draws_nothing(form):
    """Upstream's add_noise skips sigma <= 0, not only sigma == 0."""
    latent = torch.ones(1, 4, 2, 2)
    gen = torch.Generator().manual_seed(0)
    assert add_noise(latent, -0.1, form, gen) is latent
    assert torch.equal(
        torch.randn(3, generator=gen), torch.randn(3, generator=torch.Generator().manual_seed(0))
    )


@pytest.mark.parametrize("form", ["flow", "vp"])
def test_a_bf16_latent_is_noised_in_float32_as_upstream(form):
    """Upstream noises `clean_latent.float()` and rounds afterwards; noising in bf16 would round
    the latent and the noise first."""
    latent = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    rounded = latent.to(torch.bfloat16)
    got = add_noise(rounded, 0.3, form, torch.Generator().manual_seed(2))
    want = add_noise(rounded.float(), 0.3, form, torch.Generator().manual_seed(2))
    assert got.dtype == torch.float32 and torch.equal(got, want)
