"""RAE codecs (dinov2, siglip): tiny seeded configs of the very classes the released codecs use.

Only the sizes shrink (encoder width 32, 2 layers; decoder width 48, 2 layers); the geometry is
the real one (448 -> 32x32 -> 512 px; 224 -> 16x16 -> 224 -> 256 px). Every formula is checked
against a computation written out here from the pid_reference backbones README (sections 6, 7).
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F

from pid_models.checkpoints import CheckpointError, read_state_dict
from pid_models.codecs import CODEC_FILES, RAE_ENCODERS, build_codec, load_codec
from pid_models.codecs.rae import (
    Dinov2RAECodec,
    RAEDecoder,
    SiglipScaleRAECodec,
    build_rae_codec,
    load_decoder,
    load_encoder,
    shipped_decoder_config,
    sincos_pos_embed,
)

WIDTH = 32  # tiny encoder width (the latent channels)
DECODER = {
    "decoder_hidden_size": 48,
    "decoder_num_hidden_layers": 2,
    "decoder_num_attention_heads": 2,
    "decoder_intermediate_size": 96,
    "layer_norm_eps": 1e-12,
    "hidden_act": "gelu",
    "qkv_bias": True,
}
DINO_DECODER = {**DECODER, "patch_size": 16}  # 32x32 grid -> 512 px
SIGLIP_DECODER = {**DECODER, "patch_size": 14, "layer_norm_eps": 1e-6}  # 16x16 grid -> 224 px
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
TOL = 2e-5


def _perturb(module: torch.nn.Module, seed: int, skip: tuple[str, ...] = ()) -> torch.nn.Module:
    """Seeded non-trivial values everywhere (LayerNorm affines and the CLS token included)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if not name.startswith(skip):
                param.add_(0.2 * torch.randn(param.shape, generator=gen))
    return module


def dinov2_encoder(seed: int = 0):
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    torch.manual_seed(seed)
    config = Dinov2WithRegistersConfig(
        hidden_size=WIDTH,
        num_hidden_layers=2,
        num_attention_heads=2,
        mlp_ratio=2,
        patch_size=14,
        num_register_tokens=4,
    )
    return _perturb(Dinov2WithRegistersModel(config).eval(), seed)


def siglip_encoder(seed: int = 0):
    from transformers import SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(seed)
    config = SiglipVisionConfig(
        hidden_size=WIDTH,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=224,
        patch_size=14,
    )
    return _perturb(SiglipVisionModel(config).eval(), seed)


def decoder_state(config: dict, grid: int, seed: int = 1) -> dict[str, torch.Tensor]:
    """A seeded decoder state dict in the upstream layout (fixed sin-cos table kept)."""
    torch.manual_seed(seed)
    decoder = _perturb(RAEDecoder(config, WIDTH, grid), seed, skip=("decoder_pos_embed",))
    return {k: v.clone() for k, v in decoder.state_dict().items()}


def dinov2_stats(seed: int = 2) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "mean": 0.3 * torch.randn(WIDTH, 32, 32, generator=gen),
        "var": 0.5 + torch.rand(WIDTH, 32, 32, generator=gen),
    }


@pytest.fixture(scope="module")
def dino_state():
    return decoder_state(DINO_DECODER, 32)


@pytest.fixture(scope="module")
def siglip_state():
    return decoder_state(SIGLIP_DECODER, 16)


@pytest.fixture(scope="module")
def dino(dino_state) -> Dinov2RAECodec:
    return build_rae_codec("dinov2", dino_state, dinov2_stats(), DINO_DECODER, dinov2_encoder())


@pytest.fixture(scope="module")
def siglip(siglip_state) -> SiglipScaleRAECodec:
    return build_rae_codec("siglip", siglip_state, None, SIGLIP_DECODER, siglip_encoder())


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(3)) * 2 - 1


def _diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().max().item()


def _input_of(module: torch.nn.Module, run) -> torch.Tensor:
    """The tensor `module` receives while `run()` executes."""
    seen = []
    handle = module.register_forward_hook(lambda m, args, out: seen.append(args[0].detach()))
    try:
        with torch.no_grad():
            run()
    finally:
        handle.remove()
    return seen[-1]


def _unpatchify_by_hand(logits: torch.Tensor, grid: int, patch: int) -> torch.Tensor:
    """pixel (c, h*p + a, w*p + b) = logits[:, h*grid + w, (a*p + b)*3 + c]."""
    x = logits.reshape(logits.shape[0], grid, grid, patch, patch, 3)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(logits.shape[0], 3, grid * patch, grid * patch)


# --------------------------------------------------------------------------- key layout


def test_decoder_state_dict_uses_the_upstream_key_layout(dino_state):
    expected = {
        "decoder_embed.weight": (48, WIDTH),
        "decoder_embed.bias": (48,),
        "decoder_pos_embed": (1, 32 * 32 + 1, 48),
        "decoder_norm.weight": (48,),
        "decoder_norm.bias": (48,),
        "decoder_pred.weight": (16 * 16 * 3, 48),
        "decoder_pred.bias": (16 * 16 * 3,),
        "trainable_cls_token": (1, 1, 48),
    }
    per_layer = {
        "attention.attention.query.weight": (48, 48),
        "attention.attention.query.bias": (48,),
        "attention.attention.key.weight": (48, 48),
        "attention.attention.key.bias": (48,),
        "attention.attention.value.weight": (48, 48),
        "attention.attention.value.bias": (48,),
        "attention.output.dense.weight": (48, 48),
        "attention.output.dense.bias": (48,),
        "intermediate.dense.weight": (96, 48),
        "intermediate.dense.bias": (96,),
        "output.dense.weight": (48, 96),
        "output.dense.bias": (48,),
        "layernorm_before.weight": (48,),
        "layernorm_before.bias": (48,),
        "layernorm_after.weight": (48,),
        "layernorm_after.bias": (48,),
    }
    for i in range(2):
        expected.update({f"decoder_layers.{i}.{k}": v for k, v in per_layer.items()})
    assert {k: tuple(v.shape) for k, v in dino_state.items()} == expected
    assert len(dino_state) == 8 + 16 * 2


def test_full_size_dinov2_decoder_config_builds_on_meta():
    config = shipped_decoder_config("dinov2")
    with torch.device("meta"):
        decoder = RAEDecoder(config, 768, 32)
    state = decoder.state_dict()
    assert len(state) == 8 + 16 * 28
    assert sum(v.numel() for v in state.values()) == 416_237_440
    assert tuple(state["decoder_layers.27.attention.attention.query.weight"].shape) == (1152, 1152)
    assert tuple(state["decoder_layers.0.intermediate.dense.weight"].shape) == (4096, 1152)
    assert tuple(state["decoder_pos_embed"].shape) == (1, 1025, 1152)
    assert tuple(state["decoder_pred.weight"].shape) == (16 * 16 * 3, 1152)
    assert (decoder.image_size, decoder.decoder_norm.eps) == (512, 1e-12)
    assert decoder.decoder_layers[0].attention.num_attention_heads == 16


def test_state_dict_round_trips_through_a_torch_save_file(tmp_path, dino_state, dino):
    path = tmp_path / "model.pt"
    torch.save({k: v.to(torch.bfloat16) for k, v in dino_state.items()}, path)
    state = read_state_dict(path)  # weights_only=True
    codec = build_rae_codec("dinov2", state, dinov2_stats(), DINO_DECODER, dinov2_encoder())
    reloaded = codec.decoder.state_dict()
    assert set(reloaded) == set(dino_state)
    for key, value in reloaded.items():
        assert value.dtype == torch.float32
        assert torch.equal(value, dino_state[key].to(torch.bfloat16).float()), key
    # and a float32 file gives back exactly the module it was saved from
    torch.save(dino_state, path)
    again = load_decoder(read_state_dict(path), DINO_DECODER, WIDTH, 32, str(path))
    latent = torch.randn(1, WIDTH, 32, 32, generator=torch.Generator().manual_seed(4))
    tokens = latent.flatten(2).transpose(1, 2)
    with torch.no_grad():
        assert torch.equal(again(tokens), dino.decoder(tokens))


def test_a_missing_pos_embed_is_the_fixed_sincos_table(dino_state):
    state = {k: v for k, v in dino_state.items() if k != "decoder_pos_embed"}
    decoder = load_decoder(state, DINO_DECODER, WIDTH, 32, "file.pt")
    assert torch.equal(decoder.decoder_pos_embed, dino_state["decoder_pos_embed"])


def test_missing_unexpected_and_misshaped_keys_are_errors_naming_key_and_file(dino_state):
    state = dict(dino_state)
    del state["decoder_layers.1.attention.attention.key.bias"]
    with pytest.raises(
        CheckpointError,
        match=r"model\.pt.*missing keys: decoder_layers\.1\.attention\.attention\.key\.bias",
    ):
        load_decoder(state, DINO_DECODER, WIDTH, 32, "/x/model.pt")
    state = dict(dino_state)
    del state["trainable_cls_token"]  # learned: never filled in
    with pytest.raises(CheckpointError, match="trainable_cls_token"):
        load_decoder(state, DINO_DECODER, WIDTH, 32, "/x/model.pt")
    state = {**dino_state, "decoder_layers.2.output.dense.bias": torch.zeros(48)}
    with pytest.raises(
        CheckpointError, match=r"unexpected keys: decoder_layers\.2\.output\.dense\.bias"
    ):
        load_decoder(state, DINO_DECODER, WIDTH, 32, "/x/model.pt")
    state = {**dino_state, "decoder_pred.weight": torch.zeros(14 * 14 * 3, 48)}
    with pytest.raises(
        CheckpointError,
        match=r"shape mismatches: decoder_pred\.weight \(file \(588, 48\), model \(768, 48\)\)",
    ):
        load_decoder(state, DINO_DECODER, WIDTH, 32, "/x/model.pt")
    # a whole-model (prefixed) state dict is not a released decoder file
    prefixed = {f"decoder.{k}": v for k, v in dino_state.items()}
    with pytest.raises(CheckpointError, match=r"missing keys: .*unexpected keys: decoder\.decoder"):
        load_decoder(prefixed, DINO_DECODER, WIDTH, 32, "/x/model.pt")


def test_sincos_table_layout():
    table = sincos_pos_embed(8, 3)  # dim 8: two frequencies per axis
    assert table.shape == (10, 8) and torch.equal(table[0], torch.zeros(8))
    i, j = 2, 1  # row 2, column 1 -> token 1 + 2*3 + 1
    omega = torch.tensor([1.0, 1.0 / 100])  # 10000 ** (-k / 2)
    expected = torch.cat(
        [(j * omega).sin(), (j * omega).cos(), (i * omega).sin(), (i * omega).cos()]
    )
    assert torch.allclose(table[1 + i * 3 + j], expected, atol=1e-7)


def test_unpatchify_order_on_a_constructed_tensor():
    decoder = RAEDecoder({**DECODER, "patch_size": 2}, WIDTH, 3)
    g, p = 3, 2
    logits = torch.zeros(2, g * g, p * p * 3)
    for n in range(2):
        for h in range(g):
            for w in range(g):
                for a in range(p):
                    for b in range(p):
                        for c in range(3):
                            code = n * 10000 + c * 1000 + (h * p + a) * 10 + (w * p + b)
                            logits[n, h * g + w, (a * p + b) * 3 + c] = code
    image = decoder.unpatchify(logits)
    assert image.shape == (2, 3, 6, 6)
    rows = torch.arange(6).view(1, 1, 6, 1)
    cols = torch.arange(6).view(1, 1, 1, 6)
    chans = torch.arange(3).view(1, 3, 1, 1)
    batch = torch.arange(2).view(2, 1, 1, 1)
    assert torch.equal(image, (batch * 10000 + chans * 1000 + rows * 10 + cols).float())
    assert torch.equal(_unpatchify_by_hand(logits, g, p), image)


# --------------------------------------------------------------------------- dinov2


def test_dinov2_properties_and_shapes(dino, image):
    assert (dino.identity, dino.latent_channels, dino.spatial_factor) == ("dinov2-rae", WIDTH, 16)
    assert (dino.noise_form, dino.grid, dino.native_size, dino.special_tokens) == (
        "flow",
        32,
        512,
        5,
    )
    assert dino.device == torch.device("cpu") and dino.dtype == torch.float32
    assert not dino.encoder.layernorm.elementwise_affine and dino.encoder.layernorm.weight is None
    latent = dino.encode(image)
    assert latent.shape == (1, WIDTH, 32, 32) and latent.dtype == torch.float32
    decoded = dino.decode(latent)
    assert decoded.shape == (1, 3, 512, 512)
    assert decoded.min() >= -1 and decoded.max() <= 1


def test_dinov2_encode_is_the_section_6_recipe(dino, image):
    original = dinov2_encoder()  # same seed, affine final layernorm still in place
    assert original.layernorm.weight.abs().sum() > 0
    stats = dinov2_stats()
    for x, resized in ((image, True), (torch.rand(1, 3, 448, 448) * 2 - 1, False)):
        x01 = (x + 1) / 2
        if resized:
            x01 = F.interpolate(x01, size=(448, 448), mode="bicubic", align_corners=False)
        pixels = (x01 - IMAGENET_MEAN) / IMAGENET_STD
        pre_norm = _input_of(original.layernorm, lambda p=pixels: original(pixel_values=p))
        tokens = F.layer_norm(pre_norm, (WIDTH,), eps=original.config.layer_norm_eps)[:, 5:]
        raw = tokens.transpose(1, 2).reshape(1, WIDTH, 32, 32)
        assert _diff(dino.encode_raw(x), raw) <= TOL
        latent = (raw - stats["mean"]) / torch.sqrt(stats["var"] + 1e-5)
        assert _diff(dino.encode(x), latent) <= 1e-4
        assert _diff(dino.normalise(raw), latent) <= 1e-5


def test_dinov2_decode_is_the_section_6_recipe(dino):
    stats = dinov2_stats()
    latent = torch.randn(2, WIDTH, 32, 32, generator=torch.Generator().manual_seed(5))
    raw = latent * torch.sqrt(stats["var"] + 1e-5) + stats["mean"]
    with torch.no_grad():
        logits = dino.decoder(raw.flatten(2).transpose(1, 2))
    pixels = _unpatchify_by_hand(logits, 32, 16) * IMAGENET_STD + IMAGENET_MEAN
    expected = pixels.clamp(0, 1) * 2 - 1
    decoded = dino.decode(latent)
    assert _diff(decoded, expected) <= TOL
    assert 0 < (decoded.abs() == 1).float().mean() < 1  # the clamp is active on random weights


def test_dinov2_other_token_counts_are_resized_to_the_grid_after_embedding(dino):
    tokens = torch.randn(1, 16 * 16, WIDTH, generator=torch.Generator().manual_seed(6))
    grid = tokens.transpose(1, 2).reshape(1, WIDTH, 16, 16)
    up = F.interpolate(grid, size=(32, 32), mode="bilinear", align_corners=False)
    with torch.no_grad():
        direct = dino.decoder(tokens)
        reference = dino.decoder(up.flatten(2).transpose(1, 2))  # resize commutes with the Linear
    assert direct.shape == (1, 32 * 32, 16 * 16 * 3)
    assert _diff(direct, reference) <= 1e-4


@pytest.mark.parametrize("shape", ["C", "C11", "1C11", "CHW", "1CHW"])
def test_dinov2_statistics_shapes_broadcast_alike(dino_state, shape, image):
    gen = torch.Generator().manual_seed(7)
    mean, var = 0.3 * torch.randn(WIDTH, generator=gen), 0.5 + torch.rand(WIDTH, generator=gen)
    forms = {
        "C": lambda t: t,
        "C11": lambda t: t.view(WIDTH, 1, 1),
        "1C11": lambda t: t.view(1, WIDTH, 1, 1),
        "CHW": lambda t: t.view(WIDTH, 1, 1).expand(WIDTH, 32, 32).clone(),
        "1CHW": lambda t: t.view(1, WIDTH, 1, 1).expand(1, WIDTH, 32, 32).clone(),
    }
    stats = {"mean": forms[shape](mean), "var": forms[shape](var)}
    codec = build_rae_codec("dinov2", dino_state, stats, DINO_DECODER, dinov2_encoder())
    raw = codec.encode_raw(image)
    expected = (raw - mean.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + 1e-5)
    assert _diff(codec.encode(image), expected) <= 1e-5
    if shape in ("C", "C11"):  # per-channel statistics also decode other grids
        assert codec.decode(torch.zeros(1, WIDTH, 16, 16)).shape == (1, 3, 512, 512)
    if shape == "CHW":
        with pytest.raises(
            ValueError, match=r"statistics are \(32, 32\), the latent grid is \(16, 16\)"
        ):
            codec.decode(torch.zeros(1, WIDTH, 16, 16))


def test_dinov2_statistics_errors(dino_state):
    def build(stats):
        return build_rae_codec("dinov2", dino_state, stats, DINO_DECODER, dinov2_encoder())

    good = dinov2_stats()
    with pytest.raises(CheckpointError, match=r"'mean' has shape \(32, 5, 5\)"):
        build({**good, "mean": torch.zeros(WIDTH, 5, 5)})
    with pytest.raises(CheckpointError, match=r"missing \['var'\]"):
        build({"mean": good["mean"]})
    with pytest.raises(CheckpointError, match=r"unexpected \['std'\]"):
        build({**good, "std": good["var"]})
    with pytest.raises(ValueError, match="stat.pt"):
        build(None)


# --------------------------------------------------------------------------- siglip


def test_siglip_properties_and_shapes(siglip):
    assert (siglip.identity, siglip.latent_channels, siglip.spatial_factor) == (
        "siglip-scale-rae",
        WIDTH,
        16,
    )
    assert (siglip.noise_form, siglip.grid, siglip.native_size) == ("flow", 16, 256)
    assert isinstance(siglip.encoder.post_layernorm, torch.nn.Identity)
    image = torch.rand(2, 3, 300, 200) * 2 - 1
    latent = siglip.encode(image)
    assert latent.shape == (2, WIDTH, 16, 16) and latent.dtype == torch.float32
    decoded = siglip.decode(latent)
    assert decoded.shape == (2, 3, 256, 256)
    assert decoded.min() >= -1 and decoded.max() <= 1


def test_siglip_encode_is_the_section_7_recipe(siglip, image):
    original = siglip_encoder()  # same seed, post_layernorm still in place
    x01 = F.interpolate(
        (image + 1) / 2, size=(224, 224), mode="bicubic", align_corners=False, antialias=True
    )
    pixels = (x01 - 0.5) / 0.5
    tokens = _input_of(original.post_layernorm, lambda: original(pixel_values=pixels))
    raw = tokens.transpose(1, 2).reshape(1, WIDTH, 16, 16)
    assert _diff(siglip.encode_raw(image), raw) <= TOL
    mean = raw.mean(dim=1, keepdim=True)
    var = ((raw - mean) ** 2).mean(dim=1, keepdim=True)
    latent = (raw - mean) / torch.sqrt(var + 1e-6)
    assert _diff(siglip.encode(image), latent) <= 1e-4
    assert _diff(siglip.normalise(raw), latent) <= 1e-5


def test_siglip_decode_is_the_section_7_recipe(siglip):
    latent = torch.randn(1, WIDTH, 16, 16, generator=torch.Generator().manual_seed(8))
    tokens = latent.flatten(2).transpose(1, 2)
    anything = torch.randn(1, 1, WIDTH)  # the placeholder is embedded, then dropped
    with torch.no_grad():
        logits = siglip.decoder(torch.cat([anything, tokens], 1), cls_placeholder=True)
        assert torch.equal(logits, siglip.decoder(tokens))
    pixels = (_unpatchify_by_hand(logits, 16, 14) * 0.5 + 0.5).clamp(0, 1)
    assert pixels.shape == (1, 3, 224, 224)
    pixels = F.interpolate(pixels, size=(256, 256), mode="bicubic", align_corners=False).clamp(0, 1)
    assert _diff(siglip.decode(latent), pixels * 2 - 1) <= TOL


def test_siglip_needs_its_config_and_no_statistics(siglip_state):
    with pytest.raises(ValueError, match="XL_decoder_config.json"):
        build_rae_codec("siglip", siglip_state, None, None, siglip_encoder())
    with pytest.raises(ValueError, match="no latent statistics"):
        build_rae_codec("siglip", siglip_state, dinov2_stats(), SIGLIP_DECODER, siglip_encoder())


def test_bf16_codec_keeps_float32_latents_and_images(siglip_state, siglip, image):
    codec = build_rae_codec(
        "siglip", siglip_state, None, SIGLIP_DECODER, siglip_encoder(), dtype=torch.bfloat16
    )
    assert codec.dtype == torch.bfloat16
    latent = codec.encode(image)
    assert latent.dtype == torch.float32 and latent.shape == (1, WIDTH, 16, 16)
    assert _diff(latent, siglip.encode(image)) < 0.5
    assert codec.decode(latent).dtype == torch.float32


def test_build_codec_dispatches_rae_backbones(dino_state, siglip_state):
    stats = dinov2_stats()
    codec = build_codec(
        "dinov2", dino_state, DINO_DECODER, "d", encoder=dinov2_encoder(), stats=stats
    )
    assert isinstance(codec, Dinov2RAECodec) and codec.identity == "d"
    codec = build_codec("siglip", siglip_state, SIGLIP_DECODER, encoder=siglip_encoder())
    assert isinstance(codec, SiglipScaleRAECodec)


# --------------------------------------------------------------------------- loading


def test_codec_files_are_the_released_layout():
    assert CODEC_FILES["dinov2"] == (
        "checkpoints/rae/decoders/dinov2/wReg_base/ViTXL_n08_i512/model.pt",
        "checkpoints/rae/stats/dinov2/wReg_base/imagenet1k_512/stat.pt",
    )
    assert CODEC_FILES["siglip"] == (
        "checkpoints/scale_rae/decoder/siglip2_sop14_i224_web73M_ganw3_decXL.pt",
        "checkpoints/scale_rae/decoder/XL_decoder_config.json",
    )
    assert RAE_ENCODERS == {
        "dinov2": "facebook/dinov2-with-registers-base",
        "siglip": "google/siglip2-so400m-patch14-224",
    }


@pytest.mark.parametrize("backbone", ["dinov2", "siglip"])
def test_load_codec_names_each_missing_file_and_its_fetch_command(tmp_path, backbone):
    first, second = CODEC_FILES[backbone]
    with pytest.raises(CheckpointError) as info:
        load_codec(backbone, tmp_path)
    assert f"expected {tmp_path / first} " in str(info.value)
    assert f'hf download nvidia/PiD --include "{first}" --local-dir {tmp_path}' in str(info.value)
    (tmp_path / first).parent.mkdir(parents=True)
    (tmp_path / first).write_bytes(b"")
    with pytest.raises(CheckpointError, match=f"expected {tmp_path / second} "):
        load_codec(backbone, tmp_path)
    (tmp_path / second).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / second).write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=str(tmp_path / first)):  # found, then read
        load_codec(backbone, tmp_path / "checkpoints", encoder=torch.nn.Linear(1, 1))


def _write_files(root, backbone, state, second) -> None:
    first, rel = CODEC_FILES[backbone]
    for path in (root / first, root / rel):
        path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, root / first)
    if isinstance(second, dict) and backbone == "dinov2":
        torch.save(second, root / rel)
    else:
        (root / rel).write_text(json.dumps(second))


def test_load_codec_names_the_encoder_fetch_command(tmp_path, monkeypatch, dino_state):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    _write_files(tmp_path, "dinov2", dino_state, dinov2_stats())
    with pytest.raises(CheckpointError, match="hf download facebook/dinov2-with-registers-base"):
        load_codec("dinov2", tmp_path)


def test_load_codec_dinov2_reads_the_shipped_full_size_config(tmp_path, dino_state):
    _write_files(tmp_path, "dinov2", dino_state, dinov2_stats())
    weights = tmp_path / CODEC_FILES["dinov2"][0]
    message = rf"{weights} does not match the network: missing keys: .*; shape mismatches: decoder_embed\.bias \(file \(48,\), model \(1152,\)\)"
    with pytest.raises(CheckpointError, match=message):
        load_codec("dinov2", tmp_path, encoder=dinov2_encoder())


def test_load_codec_siglip_end_to_end_from_local_folders(tmp_path, siglip_state, siglip, image):
    from transformers import SiglipConfig, SiglipModel

    _write_files(tmp_path, "siglip", siglip_state, {"_name_or_path": "x", **SIGLIP_DECODER})
    vision = siglip_encoder()  # the same seeded tower, saved inside a full two-tower SigLIP
    full = SiglipModel(
        SiglipConfig(
            vision_config=vision.config.to_dict(),
            text_config={
                "hidden_size": 16,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "intermediate_size": 32,
                "vocab_size": 64,
                "bos_token_id": 1,
                "eos_token_id": 2,
                "pad_token_id": 0,
            },
        )
    )
    full.vision_model.load_state_dict(vision.state_dict())
    full.save_pretrained(tmp_path / "siglip2-fixres")
    assert (
        json.loads((tmp_path / "siglip2-fixres" / "config.json").read_text())["model_type"]
        == "siglip"
    )
    codec = load_codec("siglip", tmp_path, encoder=str(tmp_path / "siglip2-fixres"))
    assert isinstance(codec, SiglipScaleRAECodec)
    assert codec.identity.startswith("siglip-rae:siglip2_sop14_i224_web73M_ganw3_decXL.pt:")
    assert _diff(codec.encode(image), siglip.encode(image)) <= TOL
    latent = siglip.encode(image)
    assert _diff(codec.decode(latent), siglip.decode(latent)) <= TOL


def test_load_encoder_checks_the_model_type(tmp_path):
    dinov2_encoder().save_pretrained(tmp_path / "dino")
    encoder = load_encoder("dinov2", tmp_path / "dino")
    assert torch.equal(encoder.layernorm.weight, dinov2_encoder().layernorm.weight)
    (tmp_path / "naflex").mkdir()
    (tmp_path / "naflex" / "config.json").write_text(json.dumps({"model_type": "siglip2"}))
    with pytest.raises(CheckpointError, match="model_type 'siglip2' is not the siglip encoder"):
        load_encoder("siglip", tmp_path / "naflex")
    with pytest.raises(
        CheckpointError, match="model_type 'dinov2_with_registers' is not the siglip"
    ):
        load_encoder("siglip", tmp_path / "dino")


def test_prepare_is_idempotent_and_copies_are_independent(dino_state):
    encoder = dinov2_encoder()
    kept = copy.deepcopy(encoder)
    build_rae_codec("dinov2", dino_state, dinov2_stats(), DINO_DECODER, encoder)
    build_rae_codec("dinov2", dino_state, dinov2_stats(), DINO_DECODER, encoder)  # again
    assert kept.layernorm.elementwise_affine and not encoder.layernorm.elementwise_affine
