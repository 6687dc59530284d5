"""Latent codecs: each backbone's native encoder/decoder in PiD's latent convention.

Every codec offers `encode(image) -> PiD latent`, `decode(PiD latent) -> image` (the native
decoder, unclamped) and `encode_raw(image)` (the codec's raw posterior mean, before PiD's
normalisation). Images are [B, 3, H, W] in [-1, 1]. One file per codec states its formulas;
the released weight files each one reads are listed in `CODEC_FILES`.
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
    """Flow matching: (1 - s) z + s eps; VP (SDXL): sqrt(1 - s^2) z + s eps. s = 0: unchanged."""
    if sigma == 0:
        return latent  # no draw, so the generator's state does not depend on clean cells
    eps = torch.randn(
        latent.shape, generator=generator, device=latent.device, dtype=torch.float32
    ).to(latent.dtype)
    if form == "flow":
        return (1 - sigma) * latent + sigma * eps
    if form == "vp":
        return max(0.0, 1 - sigma**2) ** 0.5 * latent + sigma * eps
    raise ValueError(f"unknown noise form {form!r}")


#: The released weight file each codec reads, relative to the PiD download root.
CODEC_FILES: dict[str, str] = {
    "flux": "checkpoints/ae.safetensors",  # FLUX.1 VAE, BFL format (also Z-Image)
    "sd3": "checkpoints/sd3_vae/vae/diffusion_pytorch_model.safetensors",
    "sdxl": "checkpoints/sdxl_vae.safetensors",
    "flux2": "checkpoints/flux2_ae.safetensors",  # FLUX.2 VAE, BFL format (also klein)
    "qwenimage": "checkpoints/QwenImage_VAE_2d.pth",
}


def build_codec(
    backbone: str,
    state: dict[str, torch.Tensor],
    config: dict | None = None,
    identity: str = "",
) -> LatentCodec:
    """The codec of a canonical backbone from a state dict in its released (or diffusers) format.

    `config` is a diffusers config (default: the full-size one shipped in pid_models/data/codecs).
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
    raise NotImplementedError(
        f"no native codec for {backbone!r} yet (the RAE decoders of dinov2/siglip are not written)"
    )


def load_codec(backbone: str, root: str | None = None, device: str = "cpu") -> LatentCodec:
    """The released codec of `backbone` (aliases allowed) from the PiD download root."""
    from pathlib import Path

    from pid_models.checkpoints import CheckpointError, checkpoints_root
    from pid_models.codecs.kl import read_weights
    from pid_models.registry import canonical_backbone

    canonical = canonical_backbone(backbone)
    if canonical not in CODEC_FILES:
        return build_codec(canonical, {})  # raises the not-implemented error
    base = checkpoints_root(root)
    path = base / CODEC_FILES[canonical]
    if not path.is_file() and base.name == "checkpoints":
        path = base.parent / CODEC_FILES[canonical]
    if not path.is_file():
        raise CheckpointError(
            f"native codec weights for {backbone} not found: expected {Path(base) / CODEC_FILES[canonical]} "
            f"(the layout of PiD's checkpoints folder; see the README's 'Backbone weights')"
        )
    codec = build_codec(
        canonical, read_weights(path), identity=f"{canonical}:{path.name}:{path.stat().st_size}"
    )
    return codec.to(device)
