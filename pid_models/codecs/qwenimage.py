"""Qwen-Image VAE (`qwenimage`, `qwenimage-2512`): a Wan-2.1-style 3-D causal VAE run on one frame.

The model is diffusers' `AutoencoderKLQwenImage`, fed 5-D `(B, 3, 1, H, W)`; frame 0 is kept. With a
single frame every causal 3-D conv sees only its last temporal tap (two zero frames are padded in
front), so the model is numerically the upstream 2-D port (`WanVAE2d_`):

    mu       = first 16 channels of quant_conv(encoder(x))          (posterior mean, never sampled)
    z        = (mu - latents_mean_c) / latents_std_c                 (per channel c, PiD latent)
    decoded  = decoder(post_quant_conv(z * latents_std_c + latents_mean_c))   (NOT clamped)

Latents are `(B, 16, H/8, W/8)`; noise is flow matching, `(1 - s) z + s eps`. The mean/std vectors
are the `AutoencoderKLQwenImage` config defaults (shipped in `pid_models/data/codecs/qwenimage.json`).
diffusers' `_decode` clamps its output to [-1, 1]; upstream does not, so `decode` runs the same
post-quant conv and decoder calls as `_decode` and skips the clamp.

Released file `checkpoints/QwenImage_VAE_2d.pth` is the 2-D state dict in Wan-original naming.
`convert_2d_to_3d` expands it to the diffusers layout:

| diffusers 3-D key part | 2-D key part |
|---|---|
| `quant_conv`, `post_quant_conv` | `conv1`, `conv2` (top level) |
| `{encoder,decoder}.conv_in` | `{encoder,decoder}.conv1` |
| `{encoder,decoder}.norm_out`, `.conv_out` | `.head.0`, `.head.2` |
| `mid_block.resnets.j`, `mid_block.attentions.j` | `middle.{2j}`, `middle.{2j+1}` |
| `encoder.down_blocks.N` | `encoder.downsamples.N` |
| `decoder.up_blocks.i.resnets.j`, `.upsamplers.0` | `decoder.upsamples.<flat index>` |
| residual `norm1`, `conv1`, `norm2`, `conv2`, `conv_shortcut` | `residual.0`, `.2`, `.3`, `.6`, `shortcut` |

Tensors: a 2-D k x k kernel becomes the LAST temporal tap of the k x k x k causal kernel (earlier
taps zero); a 1 x 1 conv gains a singleton time axis; residual RMS gamma `(C,1,1)` -> `(C,1,1,1)`;
`time_conv` (unused for one frame) is zero. Attention and resample convs are 2-D in both layouts.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from pid_models.checkpoints import check_state_dict
from pid_models.codecs import NoiseForm
from pid_models.codecs.kl import shipped_config

RELEASED_FILE = "checkpoints/QwenImage_VAE_2d.pth"

_RESIDUAL_PARTS = {
    "norm1": "residual.0",
    "conv1": "residual.2",
    "norm2": "residual.3",
    "conv2": "residual.6",
    "conv_shortcut": "shortcut",
}


class QwenImageCodec:
    """A diffusers `AutoencoderKLQwenImage` on single frames, with per-channel normalisation."""

    def __init__(self, vae: torch.nn.Module, identity: str, noise_form: NoiseForm = "flow") -> None:
        self.vae = vae.eval().requires_grad_(False)
        self.identity = identity
        self.noise_form = noise_form
        config = vae.config
        self.latent_channels = int(config.z_dim)
        self.spatial_factor = 2 ** len(config.temperal_downsample)
        self.latents_mean = torch.tensor(config.latents_mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.latents_std = torch.tensor(config.latents_std, dtype=torch.float32).view(1, -1, 1, 1)
        if self.latents_mean.shape[1] != self.latent_channels:
            raise ValueError(
                f"{identity}: {self.latents_mean.shape[1]} latents_mean entries for "
                f"{self.latent_channels} latent channels"
            )
        if self.latents_std.shape[1] != self.latent_channels:
            raise ValueError(
                f"{identity}: {self.latents_std.shape[1]} latents_std entries for "
                f"{self.latent_channels} latent channels"
            )

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (
            self.latents_mean.to(device=like.device, dtype=like.dtype),
            self.latents_std.to(device=like.device, dtype=like.dtype),
        )

    @torch.no_grad()
    def encode_raw(self, image: torch.Tensor) -> torch.Tensor:
        """Posterior mean `(B, 16, H/8, W/8)` of the single-frame video `image[:, :, None]`."""
        if image.ndim != 4:
            raise ValueError(
                f"expected an image batch (B, 3, H, W), got shape {tuple(image.shape)}"
            )
        video = image.to(device=self.device, dtype=self.dtype).unsqueeze(2)
        return self.vae.encode(video).latent_dist.mean[:, :, 0]

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        raw = self.encode_raw(image)
        mean, std = self._stats(raw)
        return (raw - mean) / std

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """The decoder on `latent * std + mean`, frame 0, without diffusers' clamp to [-1, 1]."""
        if latent.ndim != 4:
            raise ValueError(
                f"expected a latent batch (B, C, h, w), got shape {tuple(latent.shape)}"
            )
        latent = latent.to(device=self.device, dtype=self.dtype)
        mean, std = self._stats(latent)
        raw = (latent * std + mean).unsqueeze(2)
        vae = self.vae
        # As AutoencoderKLQwenImage._decode does for its first frame, minus the final clamp.
        vae.clear_cache()
        try:
            hidden = vae.post_quant_conv(raw)
            vae._conv_idx = [0]
            out = vae.decoder(hidden, feat_cache=vae._feat_map, feat_idx=vae._conv_idx)
        finally:
            vae.clear_cache()
        return out[:, :, 0]

    def to(self, device: str | torch.device) -> QwenImageCodec:
        self.vae.to(device)
        return self


def is_2d_layout(state: Mapping[str, torch.Tensor]) -> bool:
    """Upstream 2-D Wan naming (`encoder.conv1`, `encoder.downsamples.N...`), else diffusers 3-D.

    Raises ValueError when the keys look like neither layout.
    """
    keys = list(state)
    two_d = any(k.startswith(("encoder.downsamples.", "encoder.conv1.")) for k in keys)
    three_d = any(k.startswith(("encoder.down_blocks.", "encoder.conv_in.")) for k in keys)
    if two_d and not three_d:
        return True
    if three_d and not two_d:
        return False
    what = "both" if two_d else "neither"
    raise ValueError(
        f"Qwen-Image VAE weights match {what} of the 2-D (encoder.downsamples.*) and diffusers "
        f"(encoder.down_blocks.*) layouts; first keys: {sorted(keys)[:6]}"
    )


def up_block_layout(model: torch.nn.Module) -> list[tuple[int, int]]:
    """(flat `decoder.upsamples` index of the first resnet, resnet count) of each diffusers up block."""
    layout, index = [], 0
    for block in model.decoder.up_blocks:
        layout.append((index, len(block.resnets)))
        index += len(block.resnets) + (0 if block.upsamplers is None else len(block.upsamplers))
    return layout


def _residual(rest: str) -> str:
    part, _, leaf = rest.partition(".")
    return f"{_RESIDUAL_PARTS.get(part, part)}.{leaf}"


def key_3d_to_2d(key: str, up_layout: list[tuple[int, int]]) -> str | None:
    """The 2-D key holding the weights of diffusers key `key`; None for `time_conv` (no 2-D source)."""
    if ".time_conv." in key:
        return None
    if key.startswith("quant_conv."):
        return "conv1." + key.removeprefix("quant_conv.")
    if key.startswith("post_quant_conv."):
        return "conv2." + key.removeprefix("post_quant_conv.")
    side, _, rest = key.partition(".")
    if side not in ("encoder", "decoder"):
        return key
    for old, new in (("conv_in.", "conv1."), ("norm_out.", "head.0."), ("conv_out.", "head.2.")):
        if rest.startswith(old):
            return f"{side}.{new}{rest.removeprefix(old)}"
    if m := re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", rest):
        kind, j, leaf = m.group(1), int(m.group(2)), m.group(3)
        if kind == "resnets":
            return f"{side}.middle.{2 * j}.{_residual(leaf)}"
        return f"{side}.middle.{2 * j + 1}.{leaf}"
    if m := re.match(r"down_blocks\.(\d+)\.(.+)", rest):
        index, leaf = m.group(1), m.group(2)
        if not leaf.startswith(("resample.", "norm.", "to_qkv.", "proj.")):
            leaf = _residual(leaf)  # a residual block (attention and resample keep their names)
        return f"{side}.downsamples.{index}.{leaf}"
    if m := re.match(r"up_blocks\.(\d+)\.(resnets|upsamplers)\.(\d+)\.(.+)", rest):
        i, kind, j, leaf = int(m.group(1)), m.group(2), int(m.group(3)), m.group(4)
        first, resnets = up_layout[i]
        if kind == "resnets":
            return f"{side}.upsamples.{first + j}.{_residual(leaf)}"
        return f"{side}.upsamples.{first + resnets + j}.{leaf}"  # after the block's resnets
    return key


def _expand(source: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor | None:
    """A 2-D tensor in the 3-D parameter's shape, or None when the shapes are not related."""
    if tuple(source.shape) == shape:
        return source
    if len(shape) == 5 and source.ndim == 4 and shape[:2] + shape[3:] == tuple(source.shape):
        out = source.new_zeros(shape)
        out[:, :, -1] = source  # causal conv: only the last tap sees a single frame
        return out
    if len(shape) == 4 and source.ndim == 3 and shape == (*source.shape, 1):
        return source.reshape(shape)  # RMS gamma (C,1,1) -> (C,1,1,1)
    return None


def convert_2d_to_3d(
    state_2d: Mapping[str, torch.Tensor], model: torch.nn.Module, source: str = "2-D state dict"
) -> dict[str, torch.Tensor]:
    """Expand an upstream 2-D (`WanVAE2d_`) state dict to `model`'s diffusers 3-D layout, key-exact.

    `model` is an `AutoencoderKLQwenImage` (meta tensors are fine: only names and shapes are read).
    Raises ValueError naming the keys and `source` if a 2-D key is left over, a 3-D key has no 2-D
    source, or a shape does not fit.
    """
    layout = up_block_layout(model)
    like = _first_float(state_2d)  # dtype and device of the zero-filled time_conv weights
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    missing: list[str] = []
    bad_shapes: list[str] = []
    for key, param in model.state_dict().items():
        shape = tuple(param.shape)
        key_2d = key_3d_to_2d(key, layout)
        if key_2d is None:  # time_conv: unused for a single frame
            out[key] = like.new_zeros(shape)
            continue
        if key_2d not in state_2d:
            missing.append(f"{key_2d} (for {key})")
            continue
        used.add(key_2d)
        tensor = _expand(state_2d[key_2d], shape)
        if tensor is None:
            bad_shapes.append(f"{key_2d} {tuple(state_2d[key_2d].shape)} -> {key} {shape}")
            continue
        out[key] = tensor
    unmapped = sorted(set(state_2d) - used)
    if missing or unmapped or bad_shapes:
        raise ValueError(
            f"{source}: Qwen-Image 2-D VAE weights do not match the config: "
            f"missing {sorted(missing)[:8]}{_more(missing, 8)}, "
            f"unmapped {unmapped[:8]}{_more(unmapped, 8)}, "
            f"shape mismatches {bad_shapes[:8]}{_more(bad_shapes, 8)}"
        )
    return out


def _first_float(state: Mapping[str, torch.Tensor]) -> torch.Tensor:
    for tensor in state.values():
        if tensor.is_floating_point():
            return tensor
    return torch.zeros(())


def _more(items: list, shown: int) -> str:
    return f" (+{len(items) - shown} more)" if len(items) > shown else ""


def build_qwenimage_codec(
    state: Mapping[str, torch.Tensor],
    config: dict[str, Any] | None = None,
    identity: str = "",
    dtype: torch.dtype = torch.float32,
) -> QwenImageCodec:
    """An `AutoencoderKLQwenImage` of `config` (default: the shipped full-size one), loaded key-exact.

    `state` is either the released 2-D layout (converted with `convert_2d_to_3d`) or the diffusers
    3-D layout. The model is built on the meta device and the weights are assigned, not copied.
    """
    from diffusers import AutoencoderKLQwenImage

    config = dict(config or shipped_config("qwenimage"))
    init_kwargs = {k: v for k, v in config.items() if not k.startswith("_")}
    source = identity or "qwenimage VAE"
    with torch.device("meta"):
        vae = AutoencoderKLQwenImage(**init_kwargs)
    if is_2d_layout(state):
        state = convert_2d_to_3d(state, vae, source)
    weights = {k: v.to(dtype) for k, v in state.items()}
    check_state_dict(vae, weights, source)
    vae.load_state_dict(weights, strict=True, assign=True)
    return QwenImageCodec(vae, identity or "qwenimage-vae", "flow")
