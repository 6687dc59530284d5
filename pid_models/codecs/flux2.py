"""FLUX.2 VAE (`flux2`, `flux2-klein-4b`, `flux2-klein-9b`): 2x2 patchify + BatchNorm statistics.

The VAE is diffusers' `AutoencoderKLFlux2` (an LDM KL autoencoder with 32 latent channels, a 1x1
`quant_conv` 64->64 after the encoder and a 1x1 `post_quant_conv` 32->32 before the decoder). PiD
never samples; its latent is built from the posterior mean:

    m = mean of quant_conv(encoder(x)) = its first 32 channels          (B, 32, H/8, W/8)
    P[:, 4c + 2a + b, i, j] = m[:, c, 2i + a, 2j + b]                     (B, 128, H/16, W/16)
    z = (P - running_mean) / sqrt(running_var + 1e-4)                     PiD latent

`a` is the row and `b` the column offset inside a 2x2 patch (einops
`c (i a) (j b) -> (c a b) i j`, diffusers `Flux2Pipeline._patchify_latents`). `running_mean` and
`running_var` are the VAE's `bn` buffers (128 channels), used as constants: BN never runs as a
module here, so its statistics cannot be updated. Decode is the exact inverse,

    P = z * sqrt(running_var + 1e-4) + running_mean,  m = unpatchify(P),  x = decoder(post_quant_conv(m))

with the decoder output unclamped. Noise form: flow matching, on the 128-channel latent.

Released file: `checkpoints/flux2_ae.safetensors` (BFL FLUX.2 format: FLUX.1's LDM keys plus
`encoder.quant_conv.*`, `decoder.post_quant_conv.*`, `bn.running_{mean,var}`, no
`bn.num_batches_tracked`). It is converted with diffusers' `convert_ldm_vae_checkpoint` and the
remap `encoder.quant_conv -> quant_conv`, `decoder.post_quant_conv -> post_quant_conv`, `bn.* ->
bn.*`; diffusers-format state dicts are used as they are. The full-size config ships as
`pid_models/data/codecs/flux2.json`.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from typing import Any

import torch

from pid_models.checkpoints import check_state_dict
from pid_models.codecs import NoiseForm
from pid_models.codecs.kl import is_ldm_format, shipped_config

BN_EPS = 1e-4

# BFL FLUX.2 keys that `convert_ldm_vae_checkpoint` does not know -> diffusers keys.
BFL_EXTRA_KEYS: Mapping[str, str] = {
    "encoder.quant_conv.weight": "quant_conv.weight",
    "encoder.quant_conv.bias": "quant_conv.bias",
    "decoder.post_quant_conv.weight": "post_quant_conv.weight",
    "decoder.post_quant_conv.bias": "post_quant_conv.bias",
    "bn.running_mean": "bn.running_mean",
    "bn.running_var": "bn.running_var",
    "bn.num_batches_tracked": "bn.num_batches_tracked",
}


def patchify(raw: torch.Tensor, patch: tuple[int, int] = (2, 2)) -> torch.Tensor:
    """(B, C, H, W) -> (B, C*ph*pw, H/ph, W/pw); channel c*ph*pw + a*pw + b holds (c, ph*i+a, pw*j+b)."""
    ph, pw = patch
    b, c, h, w = raw.shape
    if h % ph or w % pw:
        raise ValueError(f"patchify: spatial size {(h, w)} is not a multiple of the patch {patch}")
    x = raw.reshape(b, c, h // ph, ph, w // pw, pw).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(b, c * ph * pw, h // ph, w // pw)


def unpatchify(z: torch.Tensor, patch: tuple[int, int] = (2, 2)) -> torch.Tensor:
    """Exact inverse of `patchify`: (B, C*ph*pw, h, w) -> (B, C, h*ph, w*pw)."""
    ph, pw = patch
    b, cp, h, w = z.shape
    if cp % (ph * pw):
        raise ValueError(f"unpatchify: {cp} channels is not a multiple of {ph * pw}")
    x = z.reshape(b, cp // (ph * pw), ph, pw, h, w).permute(0, 1, 4, 2, 5, 3)
    return x.reshape(b, cp // (ph * pw), h * ph, w * pw)


class Flux2Codec:
    """A diffusers `AutoencoderKLFlux2` with PiD's patchify + BN-statistics normalisation."""

    noise_form: NoiseForm = "flow"

    def __init__(self, vae: torch.nn.Module, identity: str = "flux2-vae") -> None:
        self.vae = vae.eval().requires_grad_(False)
        self.identity = identity
        config = vae.config
        self.patch = tuple(int(p) for p in config.patch_size)
        if len(self.patch) != 2 or self.patch[0] != self.patch[1]:
            raise ValueError(f"{identity}: only square patches are supported, got {self.patch}")
        self.raw_channels = int(config.latent_channels)
        self.latent_channels = self.raw_channels * math.prod(self.patch)
        self.spatial_factor = 2 ** (len(config.block_out_channels) - 1) * self.patch[0]
        self.eps = float(config.batch_norm_eps)

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    def _stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) of the BN running statistics, float32, shaped (1, C, 1, 1)."""
        bn = self.vae.bn
        mean = bn.running_mean.detach().float().view(1, -1, 1, 1)
        std = (bn.running_var.detach().float() + self.eps).sqrt().view(1, -1, 1, 1)
        return mean, std

    @torch.no_grad()
    def encode_raw(self, image: torch.Tensor) -> torch.Tensor:
        """Posterior mean after quant_conv: (B, 32, H/8, W/8)."""
        return self.vae.encode(image.to(self.device, self.dtype)).latent_dist.mean

    @torch.no_grad()
    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """Patchified, BN-normalised mean: (B, 128, H/16, W/16)."""
        raw = self.encode_raw(image)
        mean, std = self._stats()
        return ((patchify(raw.float(), self.patch) - mean) / std).to(raw.dtype)

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Denormalise, unpatchify, decode (post_quant_conv first); unclamped."""
        mean, std = self._stats()
        latent = latent.to(self.device).float()
        raw = unpatchify(latent * std + mean, self.patch)
        return self.vae.decode(raw.to(self.dtype)).sample

    def to(self, device: str | torch.device) -> Flux2Codec:
        self.vae.to(device)
        return self


def to_diffusers_keys(state: Mapping[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """Convert a BFL FLUX.2 state dict to diffusers keys (identity if already diffusers).

    LDM keys that the conversion does not consume are kept under their own names, so that the
    key-exact load reports them as unexpected instead of dropping them silently.
    """
    if not is_ldm_format(state):
        return dict(state)
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    extras = {new: state[old] for old, new in BFL_EXTRA_KEYS.items() if old in state}
    rest = {k: v for k, v in state.items() if k not in BFL_EXTRA_KEYS}
    converted = convert_ldm_vae_checkpoint(dict(rest), config)
    # The conversion renames or views (attention 1x1 convs) the tensors without copying them.
    used = {v.data_ptr() for v in converted.values() if v.numel()}
    dropped = {k: v for k, v in rest.items() if v.numel() and v.data_ptr() not in used}
    return {**converted, **extras, **dropped}


def _init_kwargs(config: Mapping[str, Any]) -> dict[str, Any]:
    from diffusers import AutoencoderKLFlux2

    known = set(inspect.signature(AutoencoderKLFlux2.__init__).parameters) - {"self"}
    kwargs = {k: v for k, v in config.items() if not k.startswith("_")}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise ValueError(f"AutoencoderKLFlux2 config has unknown fields {unknown}")
    for key in ("down_block_types", "up_block_types", "block_out_channels", "patch_size"):
        if isinstance(kwargs.get(key), list):
            kwargs[key] = tuple(kwargs[key])
    return kwargs


def build_flux2_codec(
    state: Mapping[str, torch.Tensor],
    config: dict | None = None,
    identity: str = "",
    dtype: torch.dtype = torch.float32,
) -> Flux2Codec:
    """An `AutoencoderKLFlux2` of `config` (default: the shipped full-size one), loaded key-exact.

    Built on the meta device and loaded with `assign=True`, so nothing is allocated twice. A
    missing `bn.num_batches_tracked` is filled in with 0, as torch's BatchNorm does on load.
    """
    from diffusers import AutoencoderKLFlux2

    config = dict(config or shipped_config("flux2"))
    with torch.device("meta"):
        vae = AutoencoderKLFlux2(**_init_kwargs(config))
    weights = {
        k: v.to(dtype) if v.is_floating_point() else v
        for k, v in to_diffusers_keys(state, config).items()
    }
    weights.setdefault("bn.num_batches_tracked", torch.tensor(0, dtype=torch.long))
    check_state_dict(vae, weights, identity or "flux2")
    vae.load_state_dict(weights, strict=True, assign=True)
    return Flux2Codec(vae, identity or "flux2-vae")
