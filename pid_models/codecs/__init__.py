"""Latent codecs: each backbone's native encoder/decoder in PiD's latent convention.

Every codec offers `encode(image) -> PiD latent`, `decode(PiD latent) -> image` (the native
decoder; unclamped, except the RAE codecs, which clamp as upstream does) and `encode_raw(image)`
(the codec's raw posterior mean, or the RAE encoder's tokens, before PiD's normalisation). Images are [B, 3, H, W] in [-1, 1]. One file per codec states its formulas;
the released files each one reads are listed in `CODEC_FILES`; the RAE codecs (dinov2,
siglip) also read a transformers encoder from the HF cache (`RAE_ENCODERS`).
"""

from __future__ import annotations

from typing import Literal, Protocol

import torch

NoiseForm = Literal["flow", "vp"]


class LatentCodec(Protocol):
    identity: str
    latent_channels: int
    spatial_factor: int  # image pixels per PiD latent cell along each axis
    noise_form: NoiseForm

    def encode_raw(self, image: torch.Tensor) -> torch.Tensor: ...

    def encode(self, image: torch.Tensor) -> torch.Tensor: ...

    def decode(self, latent: torch.Tensor) -> torch.Tensor: ...


def add_noise(
    latent: torch.Tensor, sigma: float, form: NoiseForm, generator: torch.Generator
) -> torch.Tensor:
    """Flow matching: (1 - s) z + s eps; VP (SDXL): sqrt(1 - s^2) z + s eps, in float32 (upstream
    noises `clean_latent.float()`). s <= 0: unchanged (upstream's add_noise skips the draw)."""
    if sigma <= 0:
        return latent  # no draw, so the generator's state does not depend on clean cells
    latent = latent.float()
    eps = torch.randn(latent.shape, generator=generator, device=generator.device)
    eps = eps.to(latent.device)
    if form == "flow":
        return (1 - sigma) * latent + sigma * eps
    if form == "vp":
        return max(0.0, 1 - sigma**2) ** 0.5 * latent + sigma * eps
    raise ValueError(f"unknown noise form {form!r}")


#: The released files each codec reads, relative to the PiD download root (section 10 of the
#: pid_reference backbones README); the first is the decoder's weights.
CODEC_FILES: dict[str, tuple[str, ...]] = {
    "flux": ("checkpoints/ae.safetensors",),  # FLUX.1 VAE, BFL format (also Z-Image)
    "sd3": ("checkpoints/sd3_vae/vae/diffusion_pytorch_model.safetensors",),
    "sdxl": ("checkpoints/sdxl_vae.safetensors",),
    "flux2": ("checkpoints/flux2_ae.safetensors",),  # FLUX.2 VAE, BFL format (also klein)
    "qwenimage": ("checkpoints/QwenImage_VAE_2d.pth",),
    "dinov2": (  # RAE ViT-XL decoder weights, then the latent statistics
        "checkpoints/rae/decoders/dinov2/wReg_base/ViTXL_n08_i512/model.pt",
        "checkpoints/rae/stats/dinov2/wReg_base/imagenet1k_512/stat.pt",
    ),
    "siglip": (  # Scale-RAE ViT-XL decoder weights, then its ViT-MAE config
        "checkpoints/scale_rae/decoder/siglip2_sop14_i224_web73M_ganw3_decXL.pt",
        "checkpoints/scale_rae/decoder/XL_decoder_config.json",
    ),
}

#: The RAE codecs' encoders: HF repo ids, read from the HF cache (not from the PiD root).
RAE_ENCODERS: dict[str, str] = {
    "dinov2": "facebook/dinov2-with-registers-base",
    "siglip": "google/siglip2-so400m-patch14-224",
}


def build_codec(
    backbone: str,
    state: dict[str, torch.Tensor],
    config: dict | None = None,
    identity: str = "",
    *,
    encoder: torch.nn.Module | str | None = None,
    stats: dict[str, torch.Tensor] | None = None,
) -> LatentCodec:
    """The codec of a canonical backbone from a state dict in its released (or diffusers) format.

    `config` is a diffusers config (default: the full-size one shipped in pid_models/data/codecs).
    RAE backbones (dinov2, siglip): `state` is the decoder's, `config` its ViT-MAE config
    (siglip: required), `stats` dinov2's `stat.pt` dict, and `encoder` a transformers module,
    a local folder or an HF repo id in the cache (default: `RAE_ENCODERS[backbone]`).
    """
    if backbone in ("flux", "sd3", "sdxl"):
        from pid_models.codecs.kl import build_kl_codec

        return build_kl_codec(backbone, state, config, identity)
    if backbone == "flux2":
        from pid_models.codecs.flux2 import build_flux2_codec

        return build_flux2_codec(state, config, identity)
    if backbone == "qwenimage":
        from pid_models.codecs.qwenimage import build_qwenimage_codec

        return build_qwenimage_codec(state, config, identity)
    if backbone in RAE_ENCODERS:
        from pid_models.codecs.rae import build_rae_codec, load_encoder

        if not isinstance(encoder, torch.nn.Module):
            encoder = load_encoder(backbone, encoder)
        return build_rae_codec(backbone, state, stats, config, encoder, identity)
    raise ValueError(f"no native codec for backbone {backbone!r} (known: {sorted(CODEC_FILES)})")


def load_codec(
    backbone: str,
    root: str | None = None,
    device: str = "cpu",
    encoder: torch.nn.Module | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> LatentCodec:
    """The released codec of `backbone` (aliases allowed) from the PiD download root.

    The root may be DIR or DIR/checkpoints. RAE backbones also need their encoder (`encoder`:
    a module, a local folder or an HF repo id; default `RAE_ENCODERS[backbone]`), read from
    local files only. A missing file is a CheckpointError naming its expected path and the
    command that fetches it. `dtype` applies to the RAE codecs (the VAEs load in float32).
    """
    from pid_models.checkpoints import CheckpointError, checkpoints_root
    from pid_models.registry import canonical_backbone

    canonical = canonical_backbone(backbone)
    if canonical not in CODEC_FILES:
        raise ValueError(
            f"no native codec for backbone {backbone!r} (known: {sorted(CODEC_FILES)})"
        )
    base = checkpoints_root(root)
    paths = []
    for rel in CODEC_FILES[canonical]:
        path = base / rel
        if not path.is_file() and base.name == "checkpoints":
            path = base.parent / rel
        if not path.is_file():
            raise CheckpointError(
                f"native codec file for {backbone} not found: expected {base / rel} (the layout "
                f"of PiD's checkpoints folder; see the README's 'Backbone weights'). "
                f'Fetch it with: hf download nvidia/PiD --include "{rel}" --local-dir {base}'
            )
        paths.append(path)
    if canonical in RAE_ENCODERS:
        from pid_models.codecs.rae import load_rae_codec

        return load_rae_codec(canonical, paths, encoder, dtype).to(device)
    from pid_models.codecs.kl import read_weights

    path = paths[0]
    codec = build_codec(
        canonical, read_weights(path), identity=f"{canonical}:{path.name}:{path.stat().st_size}"
    )
    return codec.to(device)
