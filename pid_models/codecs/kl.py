"""KL autoencoders with an affine latent normalisation: FLUX.1 (also Z-Image), SD3, SDXL, tiny.

PiD latent z = scaling_factor * (mean - shift_factor), with the encoder's posterior mean (PiD
never samples) and, where the VAE has them, the quant convs applied by diffusers:

| backbone | channels | scaling_factor | shift_factor | quant convs | noise form |
|---|---|---|---|---|---|
| flux (zimage, zimage-turbo) | 16 | 0.3611 | 0.1159 | no | flow |
| sd3 | 16 | 1.5305 | 0.0609 | no | flow |
| sdxl | 4 | 0.13025 | 0 | yes | VP: sqrt(1 - s^2) z + s eps |

Released files: FLUX.1 `ae.safetensors` is in BFL/LDM key format and is converted with diffusers'
`convert_ldm_vae_checkpoint`; the SD3 and SDXL files are diffusers format (LDM keys also accepted).
The full-size diffusers configs ship in `pid_models/data/codecs/`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from importlib import resources
from typing import Any

import torch

from pid_models.checkpoints import check_state_dict
from pid_models.codecs import NoiseForm

NOISE_FORMS: Mapping[str, NoiseForm] = {"flux": "flow", "sd3": "flow", "sdxl": "vp"}


def shipped_config(name: str) -> dict[str, Any]:
    """A full-size diffusers config shipped with the package (`pid_models/data/codecs/NAME.json`)."""
    text = resources.files("pid_models.data").joinpath(f"codecs/{name}.json").read_text()
    return json.loads(text)


class ScaledVAECodec:
    """A diffusers `AutoencoderKL` with PiD's affine latent normalisation."""

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
    def encode_raw(self, image: torch.Tensor) -> torch.Tensor:
        """Posterior mean (after quant_conv where the VAE has one)."""
        return self.vae.encode(image.to(self.device)).latent_dist.mean

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        return self.scaling_factor * (self.encode_raw(image) - self.shift_factor)

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        raw = latent.to(self.device) / self.scaling_factor + self.shift_factor
        return self.vae.decode(raw).sample

    def to(self, device: str | torch.device) -> ScaledVAECodec:
        self.vae.to(device)
        return self


def is_ldm_format(state: Mapping[str, torch.Tensor]) -> bool:
    """BFL/LDM keys (`encoder.down.0.block.0...`) rather than diffusers' (`encoder.down_blocks...`)."""
    return any(k.startswith("encoder.down.") for k in state) and not any(
        k.startswith("encoder.down_blocks.") for k in state
    )


def to_diffusers_keys(state: Mapping[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """Convert an LDM/BFL-format KL VAE state dict to diffusers keys (identity if already diffusers)."""
    if not is_ldm_format(state):
        return dict(state)
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    return convert_ldm_vae_checkpoint(dict(state), config)


def build_kl_codec(
    backbone: str,
    state: Mapping[str, torch.Tensor],
    config: dict | None = None,
    identity: str = "",
    dtype: torch.dtype = torch.float32,
) -> ScaledVAECodec:
    """An `AutoencoderKL` of `config` (default: the shipped full-size one), loaded key-exact."""
    from diffusers import AutoencoderKL

    config = dict(config or shipped_config(backbone))
    init_kwargs = {k: v for k, v in config.items() if not k.startswith("_")}
    with torch.device("meta"):
        vae = AutoencoderKL(**init_kwargs)
    weights = {k: v.to(dtype) for k, v in to_diffusers_keys(state, config).items()}
    check_state_dict(vae, weights, identity or backbone)
    vae.load_state_dict(weights, strict=True, assign=True)
    return ScaledVAECodec(vae, identity or f"{backbone}-vae", NOISE_FORMS[backbone])


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A `.safetensors` file, or a `.pth` tensor dict read with `weights_only=True`."""
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(str(path))
    from pid_models.checkpoints import read_state_dict

    return read_state_dict(path)
