"""Latent codecs: a backbone's native encoder/decoder in PiD's latent convention.

`encode(image) -> PiD latent`, `decode(PiD latent) -> image` (the native decoder), and
`noise(latent, sigma, generator)` in the backbone's noise form. Images are [B, 3, H, W] in
[-1, 1]; decodes are not clamped (callers clamp where a metric needs it).
"""

from __future__ import annotations

from typing import Literal, Protocol

import torch

NoiseForm = Literal["flow", "vp"]


class LatentCodec(Protocol):
    identity: str
    latent_channels: int
    spatial_factor: int  # image pixels per latent cell along each axis
    noise_form: NoiseForm

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


class ScaledVAECodec:
    """A diffusers `AutoencoderKL` with PiD's affine latent normalisation.

    PiD latent z = scaling_factor * (mean - shift_factor), e.g. FLUX.1: 0.3611 * (z_raw - 0.1159).
    The encoder's posterior mean is used (PiD never samples).
    """

    noise_form: NoiseForm = "flow"

    def __init__(self, vae: torch.nn.Module, identity: str, noise_form: NoiseForm = "flow") -> None:
        self.vae = vae.eval().requires_grad_(False)
        self.identity = identity
        self.noise_form = noise_form
        config = vae.config
        self.scaling_factor = float(config.scaling_factor)
        self.shift_factor = float(config.shift_factor or 0.0)
        self.latent_channels = int(config.latent_channels)
        self.spatial_factor = 2 ** (len(config.block_out_channels) - 1)

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    @torch.no_grad()
    def encode(self, image: torch.Tensor) -> torch.Tensor:
        mean = self.vae.encode(image.to(self.device)).latent_dist.mean
        return self.scaling_factor * (mean - self.shift_factor)

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        raw = latent.to(self.device) / self.scaling_factor + self.shift_factor
        return self.vae.decode(raw).sample

    def to(self, device: str | torch.device) -> ScaledVAECodec:
        self.vae.to(device)
        return self
