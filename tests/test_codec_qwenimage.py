"""Qwen-Image codec against the upstream golden vectors (tiny config, fp32)."""

from __future__ import annotations

import json

import pytest
import torch

from pid_bench.parity import CODEC_STANDARD
from pid_models.codecs import add_noise, build_codec
from pid_models.codecs.kl import read_weights, shipped_config
from pid_models.codecs.qwenimage import (
    QwenImageCodec,
    build_qwenimage_codec,
    convert_2d_to_3d,
    is_2d_layout,
    key_3d_to_2d,
    up_block_layout,
)

WEIGHT_FILES = ["qwenimage_2d_weights.safetensors", "qwenimage_diffusers_weights.safetensors"]


@pytest.fixture(scope="module")
def golden(reference_dir):
    folder = reference_dir / "backbones" / "golden"
    meta = json.loads((folder / "qwenimage.json").read_text())
    return {
        "folder": folder,
        "meta": meta,
        "config": meta["diffusers_equivalent"]["config"],
        "io": read_weights(folder / "qwenimage_io.safetensors"),
    }


def weights(golden, name: str) -> dict[str, torch.Tensor]:
    return read_weights(golden["folder"] / name)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().max().item()


def meets(out: torch.Tensor, golden: torch.Tensor, what: str) -> None:
    """The codec standard `pid-bench parity` applies, one stage against its own golden tensor."""
    agreement = CODEC_STANDARD.check(out, golden)
    assert agreement, CODEC_STANDARD.explain(agreement, what)


def to_2d(state_3d: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """README section 5's 3-D -> 2-D rule (the inverse of the codec's conversion)."""
    layout = up_block_layout(model)
    out = {}
    for key, value in state_3d.items():
        key_2d = key_3d_to_2d(key, layout)
        if key_2d is None:
            continue
        if value.ndim == 5:
            value = value[:, :, -1]
        elif value.ndim == 4 and key.endswith(".gamma") and value.shape[1:] == (1, 1, 1):
            value = value.reshape(value.shape[:3])
        out[key_2d] = value
    return out


def tiny_model(config):
    from diffusers import AutoencoderKLQwenImage

    with torch.device("meta"):
        return AutoencoderKLQwenImage(**{k: v for k, v in config.items() if not k.startswith("_")})


@pytest.mark.parametrize("name", WEIGHT_FILES)
def test_golden_parity(golden, name):
    io = golden["io"]
    codec = build_qwenimage_codec(weights(golden, name), config=golden["config"])
    assert isinstance(codec, QwenImageCodec)
    assert (codec.latent_channels, codec.spatial_factor, codec.noise_form) == (16, 8, "flow")
    raw = codec.encode_raw(io["image"])
    latent = codec.encode(io["image"])
    decoded = codec.decode(io["latent"])
    assert raw.shape == (1, 16, 8, 12) and decoded.shape == (1, 3, 64, 96)
    meets(raw, io["raw_mean"], "encode mean")
    meets(latent, io["latent"], "latent")
    meets(decoded, io["decoded"], "decode")  # decode(encode(x)) is these stages in turn


def test_normalisation_is_per_channel(golden):
    codec = build_qwenimage_codec(weights(golden, WEIGHT_FILES[1]), config=golden["config"])
    norm = golden["meta"]["normalisation"]
    mean = torch.tensor(norm["latents_mean"]).view(1, -1, 1, 1)
    std = torch.tensor(norm["latents_std"]).view(1, -1, 1, 1)
    io = golden["io"]
    meets((io["raw_mean"] - mean) / std, io["latent"], "(raw - mean_c) / std_c")
    assert max_diff(codec.encode(io["image"]), (codec.encode_raw(io["image"]) - mean) / std) == 0


def test_flow_noise(golden):
    io = golden["io"]
    noised = add_noise(io["latent"], 0.4, "flow", torch.Generator().manual_seed(5))
    meets(noised, io["latent_noised"], "noised latent")
    meets(0.6 * io["latent"] + 0.4 * io["noise_eps"], io["latent_noised"], "flow noise formula")


@pytest.mark.parametrize("name", WEIGHT_FILES)
def test_decode_is_not_clamped(golden, name):
    io = golden["io"]
    reference = io["decoded"]
    codec = build_qwenimage_codec(weights(golden, name), config=golden["config"])
    decoded = codec.decode(io["latent"])
    if reference.abs().max() > 1:
        assert decoded.abs().max() > 1
    meets(decoded, reference, "decode")
    # The golden decode stays inside [-1, 1]: scale the last conv so the output leaves it.
    state = weights(golden, name)
    head = "decoder.head.2." if is_2d_layout(state) else "decoder.conv_out."
    for leaf in ("weight", "bias"):
        state[head + leaf] = state[head + leaf].float() * 5
    loud = build_qwenimage_codec(state, config=golden["config"]).decode(io["latent"])
    assert loud.abs().max() > 2
    meets(loud / 5, reference, "decode with the last conv scaled by 5, divided by 5")


def test_conversion_matches_golden_2d_file(golden):
    """The diffusers golden weights, reduced by the README's 3-D -> 2-D rule, are the 2-D file."""
    model = tiny_model(golden["config"])
    state_3d = weights(golden, WEIGHT_FILES[1])
    state_2d = weights(golden, WEIGHT_FILES[0])
    reduced = to_2d(state_3d, model)
    assert set(reduced) == set(state_2d)
    for key, value in state_2d.items():
        assert torch.equal(reduced[key], value), key
    expanded = convert_2d_to_3d(state_2d, model)
    assert set(expanded) == set(model.state_dict())
    for key, value in expanded.items():
        assert value.shape == model.state_dict()[key].shape, key
        if ".time_conv." in key:
            assert not value.any(), key
        elif value.ndim == 5 and value.shape[2] > 1:
            assert not value[:, :, :-1].any(), key  # earlier temporal taps are zero
            assert torch.equal(value[:, :, -1], state_3d[key][:, :, -1]), key
    # The rename table of the golden JSON, spot-checked.
    layout = up_block_layout(model)
    assert key_3d_to_2d("decoder.up_blocks.1.upsamplers.0.resample.1.weight", layout) == (
        "decoder.upsamples.5.resample.1.weight"
    )
    assert key_3d_to_2d("decoder.up_blocks.2.resnets.0.conv_shortcut.weight", layout) == (
        "decoder.upsamples.6.shortcut.weight"
    )
    assert key_3d_to_2d("encoder.mid_block.attentions.0.to_qkv.weight", layout) == (
        "encoder.middle.1.to_qkv.weight"
    )
    assert key_3d_to_2d("encoder.down_blocks.3.time_conv.weight", layout) is None


def test_missing_2d_key_is_named(golden):
    state = weights(golden, WEIGHT_FILES[0])
    del state["decoder.upsamples.9.residual.2.weight"]
    with pytest.raises(ValueError, match=r"decoder\.upsamples\.9\.residual\.2\.weight") as err:
        build_qwenimage_codec(state, config=golden["config"], identity="golden-2d")
    assert "golden-2d" in str(err.value) and "missing" in str(err.value)


def test_unmapped_2d_key_is_named(golden):
    state = weights(golden, WEIGHT_FILES[0])
    state["encoder.downsamples.0.residual.9.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"unmapped \['encoder\.downsamples\.0\.residual\.9"):
        build_qwenimage_codec(state, config=golden["config"])


def test_missing_3d_key_is_named(golden):
    state = weights(golden, WEIGHT_FILES[1])
    del state["decoder.up_blocks.2.resnets.0.conv_shortcut.bias"]
    with pytest.raises(ValueError, match=r"decoder\.up_blocks\.2\.resnets\.0\.conv_shortcut\.bias"):
        build_qwenimage_codec(state, config=golden["config"], identity="golden-3d")


def test_unknown_layout_is_rejected():
    with pytest.raises(ValueError, match="neither"):
        build_qwenimage_codec({"foo.weight": torch.zeros(1)})


def test_bfloat16_build_runs(golden):
    io = golden["io"]
    codec = build_qwenimage_codec(
        weights(golden, WEIGHT_FILES[0]), config=golden["config"], dtype=torch.bfloat16
    )
    latent = codec.encode(io["image"])  # fp32 image into a bf16 model
    assert latent.dtype == torch.bfloat16
    assert max_diff(latent, io["latent"]) < 0.5
    assert max_diff(codec.decode(io["latent"]), io["decoded"]) < 0.5


def test_build_codec_dispatch(golden):
    state = weights(golden, WEIGHT_FILES[0])
    codec = build_codec("qwenimage", state, golden["config"], "qwenimage:golden")
    assert codec.identity == "qwenimage:golden"
    meets(codec.encode(golden["io"]["image"]), golden["io"]["latent"], "latent")


def test_shipped_config_builds_full_size_on_meta():
    config = shipped_config("qwenimage")
    assert config["_class_name"] == "AutoencoderKLQwenImage"
    assert (config["base_dim"], config["z_dim"], config["num_res_blocks"]) == (96, 16, 2)
    assert config["dim_mult"] == [1, 2, 4, 4] and config["attn_scales"] == []
    assert config["temperal_downsample"] == [False, True, True]
    assert len(config["latents_mean"]) == len(config["latents_std"]) == 16
    model = tiny_model(config)  # full size, on meta
    state_3d = model.state_dict()
    for state in (state_3d, to_2d(state_3d, model)):
        codec = build_qwenimage_codec(state)  # default config: the shipped one
        assert (codec.latent_channels, codec.spatial_factor) == (16, 8)
        assert all(p.is_meta for p in codec.vae.parameters())
        assert codec.identity == "qwenimage-vae"
        params = sum(p.numel() for p in codec.vae.parameters())
        assert params > 100_000_000
