"""RAE latent codecs: DINOv2-RAE (`dinov2`) and SigLIP-2 / Scale-RAE (`siglip`).

Both pair a frozen vision encoder (a transformers model, read from a local folder or the HF
cache, never downloaded) with a ViT-MAE-style pixel decoder written here (`RAEDecoder`) that
loads the released decoder files key for key. Images are [B, 3, H, W] in [-1, 1]. Both work at
a fixed resolution whatever the input size (the input aspect ratio and size are discarded):

dinov2 (pid_reference backbones README section 6), PiD latent (B, 768, 32, 32):

    x = bicubic((image + 1) / 2, 448x448, align_corners=False, no antialias)  (skipped at 448)
    x = (x - ImageNet mean) / ImageNet std           mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225)
    t = Dinov2WithRegistersModel(x).last_hidden_state[:, 5:]   final layernorm affine-free;
                                                     the first 1 + num_register_tokens = 5 dropped
    raw = t.transpose(1, 2).view(B, 768, 32, 32)     tokens row-major        -> `encode_raw`
    z = (raw - mean) / sqrt(var + 1e-5)              RAE `stat.pt`, float32  -> `encode`
    decode: raw = z * sqrt(var + 1e-5) + mean -> RAEDecoder (32x32 grid, patch 16) -> 512x512,
            * ImageNet std + mean, clamp [0, 1], map to [-1, 1]

siglip (section 7), PiD latent (B, 1152, 16, 16):

    x = bicubic((image + 1) / 2, 224x224, align_corners=False, antialias=True)  (skipped at 224)
    x = (x - 0.5) / 0.5
    t = SiglipVisionModel(x).last_hidden_state       post_layernorm replaced by Identity
    raw = t.transpose(1, 2).view(B, 1152, 16, 16)                            -> `encode_raw`
    z = layer_norm(raw over the 1152 channels, no weight/bias, eps 1e-6)     -> `encode`
    decode: tokens with a zero CLS placeholder prepended -> RAEDecoder (the placeholder is
            embedded, then dropped for `trainable_cls_token`) -> 224x224 (16x16 grid, patch 14),
            * 0.5 + 0.5, clamp [0, 1], bicubic (no antialias) 224 -> 256, clamp, map to [-1, 1]

Both latents are noised with flow matching; `spatial_factor` is the "virtual" 16 of upstream
(dinov2: 32 cells -> 512 px; siglip: 16 cells -> 256 px). Unlike the VAE codecs, `decode`
returns a clamped image. Upstream runs encoder and decoder in bf16; here they run in the
codec's `dtype` (float32 by default); the normalisations and resizes are float32 either way.

**`siglip` encoder class.** `google/siglip2-so400m-patch14-224` is a SigLIP-2 *FixRes*
checkpoint: its config has `model_type: "siglip"` (architecture `SiglipModel`, Conv2d patch
embedding, fixed 16x16 position table), not `siglip2` (the NaFlex variant, `Siglip2Model`,
Linear patch embedding, different weights). Upstream takes `AutoModel(...).vision_model`,
which for this config is a `SiglipVisionModel`; we load `SiglipVisionModel` directly from the
same folder (the `vision_model.*` weights; the text tower is not built). A `siglip2` config
is refused.

**`dinov2` latent statistics.** `stat.pt` is `{"mean": T, "var": T}` (RAE's
`calculate_stat.py` writes per-(C, H, W) running statistics; upstream PiD applies them with
`unsqueeze(0)`, RAE by plain broadcasting). The shape of the released file was not verified
here, so every shape that broadcasts the same way is accepted: (C, H, W) with (H, W) the
latent grid, (C, 1, 1), (C,), and the same with a leading 1. Any other shape, a missing
`mean`/`var` or an extra entry is an error.

Decoder weights: upstream key layout
------------------------------------
The decoder is RAE's `GeneralDecoder` (github.com/bytetriper/RAE,
`src/stage1/decoders/decoder.py`; Scale-RAE's copy in github.com/ZitengWangNYU/Scale-RAE,
`scale_rae/model/multimodal_decoder/decoder.py`, is the same module). The released files are
its `state_dict()` (RAE `src/extract_decoder.py` saves `rae.decoder.state_dict()`), read by
upstream with `load_state_dict(strict=False)` into the bare decoder, so the keys carry no
prefix. With L decoder layers there are 8 + 16 L keys (L = 28: 456):

    decoder_embed.{weight,bias}                          Linear encoder_dim -> D
    decoder_pos_embed                                    (1, grid**2 + 1, D): an nn.Parameter
                                                         (requires_grad=False), so it IS stored;
                                                         fixed 2-D sin-cos, CLS row zero
    decoder_layers.{i}.attention.attention.{query,key,value}.{weight,bias}
    decoder_layers.{i}.attention.output.dense.{weight,bias}
    decoder_layers.{i}.intermediate.dense.{weight,bias}  D -> MLP
    decoder_layers.{i}.output.dense.{weight,bias}        MLP -> D
    decoder_layers.{i}.layernorm_{before,after}.{weight,bias}
    decoder_norm.{weight,bias}
    decoder_pred.{weight,bias}                           Linear D -> patch**2 * 3
    trainable_cls_token                                  (1, 1, D)

The layer keys are transformers 4.x `ViTMAELayer`'s. transformers 5 renamed that module's
parameters (`attention.q_proj/k_proj/v_proj/o_proj`, `mlp.fc1/fc2`; its own
`conversion_mapping.py` lists exactly these renames for old ViT-MAE checkpoints). `RAEDecoder`
uses transformers' current `ViTMAELayer` for the computation and translates the names at the
state-dict boundary (hooks on each layer), so its `state_dict()` and `load_state_dict()` speak
the upstream layout above and `check_state_dict` reports missing, unexpected and mis-shaped
keys by their upstream names.

Key policy (upstream loads `strict=False` and only logs): the file must be exactly that key
set with those shapes. The one tolerated difference is a missing `decoder_pos_embed`, which is
filled with the fixed sin-cos table: that is what upstream's non-strict load leaves in the
module. No prefix (an encoder, a loss or discriminator module, `module.`) is stripped or
dropped: a file holding them is not a released decoder file and upstream would not load it
either.

Geometry notes: a token count other than the decoder's grid is resized to the grid bilinearly
(align_corners=False) after `decoder_embed`, as upstream does (the two commute, bilinear
weights summing to one); unlike upstream, which assumes a square grid, the latent's own
(h, w) is used. The sin-cos table puts the column index in the first half of the channels and
the row index in the second (upstream's meshgrid order).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pid_models.checkpoints import CheckpointError, check_state_dict
from pid_models.codecs import RAE_ENCODERS, NoiseForm

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)
STATS_EPS = 1e-5  # dinov2: (z - mean) / sqrt(var + 1e-5)
SIGLIP_LN_EPS = 1e-6  # siglip: affine-free layer norm over channels
DINOV2_INPUT = 448  # 32 x 14
SIGLIP_INPUT = 224  # 16 x 14
VIRTUAL_FACTOR = 16  # image pixels per latent cell at the codec's output size

#: (upstream = transformers 4.x ViTMAELayer, transformers 5 ViTMAELayer) parameter prefixes.
LAYER_KEY_RENAMES: tuple[tuple[str, str], ...] = (
    ("attention.attention.query.", "attention.q_proj."),
    ("attention.attention.key.", "attention.k_proj."),
    ("attention.attention.value.", "attention.v_proj."),
    ("attention.output.dense.", "attention.o_proj."),
    ("intermediate.dense.", "mlp.fc1."),
    ("output.dense.", "mlp.fc2."),
)
_TO_UPSTREAM = tuple((new, old) for old, new in LAYER_KEY_RENAMES)


def _rename_in_place(state: dict, prefix: str, renames: tuple[tuple[str, str], ...]) -> None:
    """Rename `prefix + old...` keys to `prefix + new...`, keeping the dict's order."""
    items = list(state.items())
    state.clear()
    for key, value in items:
        if key.startswith(prefix):
            rest = key[len(prefix) :]
            for old, new in renames:
                if rest.startswith(old):
                    key = prefix + new + rest[len(old) :]
                    break
        state[key] = value


def _state_dict_to_upstream(module, state, prefix, local_metadata) -> None:
    _rename_in_place(state, prefix, _TO_UPSTREAM)


def _load_from_upstream(module, state, prefix, *args) -> None:
    _rename_in_place(state, prefix, LAYER_KEY_RENAMES)


def sincos_pos_embed(dim: int, grid: int) -> torch.Tensor:
    """(grid**2 + 1, dim) fixed 2-D sin-cos table, row 0 (CLS) zero, tokens row-major.

    Token 1 + i*grid + j (row i, column j) holds [sin(j w), cos(j w), sin(i w), cos(i w)] with
    w_k = 10000 ** (-k / (dim / 4)), k < dim / 4. Computed in float64, returned float32.
    """
    if dim % 4:
        raise ValueError(f"sin-cos position table needs a dimension divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
    rows, cols = torch.meshgrid(
        torch.arange(grid, dtype=torch.float64),
        torch.arange(grid, dtype=torch.float64),
        indexing="ij",
    )

    def axis(pos: torch.Tensor) -> torch.Tensor:
        angles = pos.reshape(-1, 1) * omega
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    table = torch.cat([axis(cols), axis(rows)], dim=1)
    return torch.cat([torch.zeros(1, dim, dtype=torch.float64), table]).float()


def shipped_decoder_config(backbone: str = "dinov2") -> dict[str, Any]:
    """The full-size decoder config shipped as `pid_models/data/codecs/<backbone>_rae_decoder.json`."""
    text = resources.files("pid_models.data").joinpath(f"codecs/{backbone}_rae_decoder.json")
    return json.loads(text.read_text())


def vit_mae_config(config: Mapping[str, Any], encoder_dim: int):
    """A `ViTMAEConfig` from a ViT-MAE JSON dict (upstream's defaults for absent fields).

    `hidden_size` is forced to the encoder's width, as both upstreams do; keys starting with
    `_` (comments, `_name_or_path`) are ignored.
    """
    from transformers import ViTMAEConfig

    fields = {k: v for k, v in config.items() if not k.startswith("_")}
    fields["hidden_size"] = int(encoder_dim)
    cfg = ViTMAEConfig(**fields)
    if not isinstance(cfg.patch_size, int) or isinstance(cfg.patch_size, bool):
        raise ValueError(f"decoder config: patch_size must be an integer, got {cfg.patch_size!r}")
    return cfg


class RAEDecoder(nn.Module):
    """The RAE / Scale-RAE `GeneralDecoder`, state-dict compatible with the released files.

    tokens (B, N, encoder_dim) -> decoder_embed -> (N != grid**2: bilinear resize to the grid)
    -> [trainable_cls_token; tokens] + decoder_pos_embed -> ViTMAELayer x L -> decoder_norm
    -> decoder_pred -> CLS row dropped -> (B, grid**2, patch**2 * channels).
    """

    def __init__(
        self,
        config: Mapping[str, Any],
        encoder_dim: int,
        grid: int,
        attn_implementation: str = "sdpa",
    ) -> None:
        super().__init__()
        from transformers import ViTMAEConfig
        from transformers.models.vit_mae.modeling_vit_mae import ViTMAELayer

        cfg = vit_mae_config(config, encoder_dim)
        hidden = int(cfg.decoder_hidden_size)
        self.encoder_dim = int(encoder_dim)
        self.hidden_size = hidden
        self.grid = int(grid)
        self.num_patches = self.grid**2
        self.patch_size = int(cfg.patch_size)
        self.num_channels = int(cfg.num_channels)
        layer_config = ViTMAEConfig(
            hidden_size=hidden,
            num_attention_heads=int(cfg.decoder_num_attention_heads),
            intermediate_size=int(cfg.decoder_intermediate_size),
            hidden_act=cfg.hidden_act,
            layer_norm_eps=float(cfg.layer_norm_eps),
            qkv_bias=bool(cfg.qkv_bias),
            hidden_dropout_prob=float(cfg.hidden_dropout_prob),
            attention_probs_dropout_prob=float(cfg.attention_probs_dropout_prob),
        )
        layer_config._attn_implementation = attn_implementation
        # Registration order follows upstream's, so state_dict() lists the keys as it does.
        self.decoder_embed = nn.Linear(self.encoder_dim, hidden)
        self.decoder_pos_embed = nn.Parameter(
            sincos_pos_embed(hidden, self.grid).unsqueeze(0), requires_grad=False
        )
        self.decoder_layers = nn.ModuleList(
            ViTMAELayer(layer_config) for _ in range(int(cfg.decoder_num_hidden_layers))
        )
        for layer in self.decoder_layers:
            layer.register_state_dict_post_hook(_state_dict_to_upstream)
            layer.register_load_state_dict_pre_hook(_load_from_upstream)
        self.decoder_norm = nn.LayerNorm(hidden, eps=float(cfg.layer_norm_eps))
        self.decoder_pred = nn.Linear(hidden, self.patch_size**2 * self.num_channels)
        self.trainable_cls_token = nn.Parameter(torch.zeros(1, 1, hidden))

    @property
    def image_size(self) -> int:
        return self.grid * self.patch_size

    def to_grid(self, x: torch.Tensor, hw: tuple[int, int] | None = None) -> torch.Tensor:
        """(B, N, D) embedded tokens on an (h, w) grid -> (B, grid**2, D), bilinear."""
        b, n, d = x.shape
        if n == self.num_patches:
            return x
        if hw is None:
            side = math.isqrt(n)
            hw = (side, side)
        h, w = hw
        if h * w != n:
            raise ValueError(f"RAE decoder: {n} tokens do not form a {h}x{w} grid")
        x = x.reshape(b, h, w, d).permute(0, 3, 1, 2)
        x = F.interpolate(x, size=(self.grid, self.grid), mode="bilinear", align_corners=False)
        return x.permute(0, 2, 3, 1).reshape(b, self.num_patches, d)

    def forward(
        self,
        tokens: torch.Tensor,
        hw: tuple[int, int] | None = None,
        cls_placeholder: bool = False,
    ) -> torch.Tensor:
        """Patch logits (B, grid**2, patch**2 * channels).

        `cls_placeholder`: the first token is a placeholder (Scale-RAE's `drop_cls_token=True`):
        it is embedded and then dropped, `trainable_cls_token` takes its place.
        """
        x = self.decoder_embed(tokens)
        if cls_placeholder:
            x = x[:, 1:]
        x = self.to_grid(x, hw)
        cls = self.trainable_cls_token.expand(x.shape[0], -1, -1)
        h = torch.cat([cls, x], dim=1) + self.decoder_pos_embed
        for layer in self.decoder_layers:
            h = layer(h)
        return self.decoder_pred(self.decoder_norm(h))[:, 1:]

    def unpatchify(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, G*G, p*p*C) -> (B, C, G*p, G*p): patch vectors laid out (p, q, c), einsum
        `nhwpqc->nchpwq`, so pixel (c, h*p + a, w*p + b) = logits[:, h*G + w, (a*p + b)*C + c]."""
        b, n, _ = logits.shape
        g, p, c = self.grid, self.patch_size, self.num_channels
        if n != g * g:
            raise ValueError(f"unpatchify: {n} patches, expected {g}x{g}")
        x = logits.reshape(b, g, g, p, p, c)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(b, c, g * p, g * p)


def load_decoder(
    state: Mapping[str, torch.Tensor],
    config: Mapping[str, Any],
    encoder_dim: int,
    grid: int,
    source: str,
    dtype: torch.dtype = torch.float32,
) -> RAEDecoder:
    """An `RAEDecoder` from an upstream-layout state dict, key-exact (see the module docstring).

    Built on the meta device and loaded with `assign=True`; float tensors are cast to `dtype`.
    """
    with torch.device("meta"):
        decoder = RAEDecoder(config, encoder_dim, grid)
    weights = dict(state)
    if "decoder_pos_embed" not in weights:  # upstream's non-strict load keeps the fixed table
        weights["decoder_pos_embed"] = sincos_pos_embed(decoder.hidden_size, grid).unsqueeze(0)
    check_state_dict(decoder, weights, source)
    weights = {k: v.to(dtype) if v.is_floating_point() else v for k, v in weights.items()}
    decoder.load_state_dict(weights, strict=True, assign=True)
    return decoder.eval().requires_grad_(False)


def latent_stats(
    stats: Mapping[str, torch.Tensor], channels: int, grid: int, source: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, var) from a `stat.pt` dict, float32, shaped (1, C, H, W) or (1, C, 1, 1)."""
    keys = set(stats)
    if keys != {"mean", "var"}:
        missing = sorted({"mean", "var"} - keys)
        extra = sorted(keys - {"mean", "var"})
        raise CheckpointError(
            f"{source}: latent statistics must hold exactly 'mean' and 'var'"
            + (f"; missing {missing}" if missing else "")
            + (f"; unexpected {extra}" if extra else "")
        )
    out = []
    for name in ("mean", "var"):
        value = stats[name].detach().float()
        shape = tuple(value.shape)
        if len(shape) == 4 and shape[0] == 1:
            value, shape = value[0], shape[1:]
        if shape == (channels,):
            value = value.view(channels, 1, 1)
        elif shape not in ((channels, 1, 1), (channels, grid, grid)):
            raise CheckpointError(
                f"{source}: {name!r} has shape {tuple(stats[name].shape)}; expected "
                f"({channels}, {grid}, {grid}), ({channels}, 1, 1) or ({channels},)"
            )
        if not torch.isfinite(value).all():
            raise CheckpointError(f"{source}: {name!r} has non-finite values")
        out.append(value.unsqueeze(0).contiguous())
    return out[0], out[1]


def _image_stats(values: tuple[float, ...]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).view(1, 3, 1, 1)


def _resize(x: torch.Tensor, size: int, antialias: bool) -> torch.Tensor:
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(
        x, size=(size, size), mode="bicubic", align_corners=False, antialias=antialias
    )


class _RAECodec:
    """What both RAE codecs share: a frozen encoder, an `RAEDecoder`, fixed geometry."""

    noise_form: NoiseForm = "flow"

    def __init__(
        self, encoder: nn.Module, decoder: RAEDecoder, identity: str, input_size: int
    ) -> None:
        self.encoder = encoder.eval().requires_grad_(False)
        self.decoder = decoder.eval().requires_grad_(False)
        self.identity = identity
        self.input_size = int(input_size)
        self.latent_channels = int(encoder.config.hidden_size)
        patch = int(encoder.config.patch_size)
        if self.input_size % patch:
            raise ValueError(f"{identity}: input size {input_size} is not a multiple of {patch}")
        self.grid = self.input_size // patch
        if decoder.grid != self.grid or decoder.encoder_dim != self.latent_channels:
            raise ValueError(
                f"{identity}: decoder expects {decoder.grid}x{decoder.grid} tokens of "
                f"{decoder.encoder_dim}, the encoder gives {self.grid}x{self.grid} of {self.latent_channels}"
            )
        self._tensors: dict[str, torch.Tensor] = {}

    @property
    def device(self) -> torch.device:
        return next(self.decoder.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.decoder.parameters()).dtype

    @property
    def native_size(self) -> int:
        """Side of every decoded image (pixels)."""
        return self.grid * self.spatial_factor

    def _t(self, name: str) -> torch.Tensor:
        return self._tensors[name].to(self.device)

    def to(self, device: str | torch.device):
        self.encoder.to(device)
        self.decoder.to(device)
        self._tensors = {k: v.to(device) for k, v in self._tensors.items()}
        return self

    def _tokens(self, latent: torch.Tensor) -> torch.Tensor:
        b, c, h, w = latent.shape
        if c != self.latent_channels:
            raise ValueError(
                f"{self.identity}: latent has {c} channels, expected {self.latent_channels}"
            )
        return latent.reshape(b, c, h * w).transpose(1, 2)

    def _to_grid(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, C) float tokens -> (B, C, grid, grid)."""
        b, n, c = tokens.shape
        if n != self.grid**2:
            raise ValueError(f"{self.identity}: encoder gave {n} tokens, expected {self.grid**2}")
        return tokens.transpose(1, 2).reshape(b, c, self.grid, self.grid)

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        return self.normalise(self.encode_raw(image))


class Dinov2RAECodec(_RAECodec):
    """DINOv2-B-with-registers encoder + RAE ViT-XL decoder; PiD latent (B, 768, 32, 32)."""

    def __init__(
        self,
        encoder: nn.Module,
        decoder: RAEDecoder,
        mean: torch.Tensor,
        var: torch.Tensor,
        identity: str = "dinov2-rae",
        input_size: int = DINOV2_INPUT,
    ) -> None:
        super().__init__(encoder, decoder, identity, input_size)
        self.spatial_factor = decoder.patch_size  # 16: 32 cells -> 512 px
        self.special_tokens = 1 + int(getattr(encoder.config, "num_register_tokens", 0))
        for name, stat in (("mean", mean), ("var", var)):
            if stat.shape[-2:] not in ((1, 1), (self.grid, self.grid)):
                raise ValueError(
                    f"{identity}: {name} of shape {tuple(stat.shape)} does not fit the grid"
                )
        self._tensors = {
            "mean": mean.float(),
            "std": (var.float() + STATS_EPS).sqrt(),
            "image_mean": _image_stats(IMAGENET_MEAN),
            "image_std": _image_stats(IMAGENET_STD),
        }

    @torch.no_grad()
    def encode_raw(self, image: torch.Tensor) -> torch.Tensor:
        """Patch tokens of the affine-free final layernorm, (B, 768, 32, 32), float32."""
        x = (image.to(self.device, torch.float32) + 1) / 2
        x = _resize(x, self.input_size, antialias=False)
        x = (x - self._t("image_mean")) / self._t("image_std")
        hidden = self.encoder(pixel_values=x.to(self.dtype)).last_hidden_state
        return self._to_grid(hidden[:, self.special_tokens :].float())

    def normalise(self, raw: torch.Tensor) -> torch.Tensor:
        """(raw - mean) / sqrt(var + 1e-5), float32."""
        return (raw.float() - self._t("mean")) / self._t("std")

    def denormalise(self, latent: torch.Tensor) -> torch.Tensor:
        """latent * sqrt(var + 1e-5) + mean, float32."""
        std = self._t("std")
        if std.shape[-2:] != (1, 1) and latent.shape[-2:] != std.shape[-2:]:
            raise ValueError(
                f"{self.identity}: per-position statistics are {tuple(std.shape[-2:])}, "
                f"the latent grid is {tuple(latent.shape[-2:])}"
            )
        return latent.float() * std + self._t("mean")

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """(B, 768, h, w) -> (B, 3, 512, 512) in [-1, 1] (clamped), float32."""
        raw = self.denormalise(latent.to(self.device))
        tokens = self._tokens(raw).to(self.dtype)
        logits = self.decoder(tokens, hw=tuple(raw.shape[-2:]))
        pixels = self.decoder.unpatchify(logits).float()
        pixels = pixels * self._t("image_std") + self._t("image_mean")
        return pixels.clamp(0.0, 1.0) * 2 - 1


class SiglipScaleRAECodec(_RAECodec):
    """SigLIP-2 So400M/14 @224 encoder + Scale-RAE ViT-XL decoder; PiD latent (B, 1152, 16, 16)."""

    def __init__(
        self,
        encoder: nn.Module,
        decoder: RAEDecoder,
        identity: str = "siglip-scale-rae",
        input_size: int = SIGLIP_INPUT,
    ) -> None:
        super().__init__(encoder, decoder, identity, input_size)
        self.spatial_factor = VIRTUAL_FACTOR  # 16 cells -> 256 px after the 224 -> 256 resize
        self._tensors = {
            "image_mean": _image_stats(SIGLIP_MEAN),
            "image_std": _image_stats(SIGLIP_STD),
        }

    @torch.no_grad()
    def encode_raw(self, image: torch.Tensor) -> torch.Tensor:
        """Last hidden state without post_layernorm, (B, 1152, 16, 16), float32."""
        x = (image.to(self.device, torch.float32) + 1) / 2
        x = _resize(x, self.input_size, antialias=True)
        x = (x - self._t("image_mean")) / self._t("image_std")
        hidden = self.encoder(pixel_values=x.to(self.dtype)).last_hidden_state
        return self._to_grid(hidden.float())

    def normalise(self, raw: torch.Tensor) -> torch.Tensor:
        """Affine-free layer norm over the channel axis, eps 1e-6, float32."""
        x = raw.float().permute(0, 2, 3, 1)
        x = F.layer_norm(x, (x.shape[-1],), weight=None, bias=None, eps=SIGLIP_LN_EPS)
        return x.permute(0, 3, 1, 2)

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """(B, 1152, h, w) -> (B, 3, 256, 256) in [-1, 1] (clamped), float32."""
        latent = latent.to(self.device)
        tokens = self._tokens(latent.float()).to(self.dtype)
        placeholder = torch.zeros_like(tokens[:, :1])
        logits = self.decoder(
            torch.cat([placeholder, tokens], dim=1),
            hw=tuple(latent.shape[-2:]),
            cls_placeholder=True,
        )
        pixels = self.decoder.unpatchify(logits).float()
        pixels = (pixels * self._t("image_std") + self._t("image_mean")).clamp(0.0, 1.0)
        size = self.native_size
        if pixels.shape[-1] != size:
            pixels = F.interpolate(pixels, size=(size, size), mode="bicubic", align_corners=False)
            pixels = pixels.clamp(0.0, 1.0)
        return pixels * 2 - 1


def prepare_encoder(backbone: str, encoder: nn.Module) -> nn.Module:
    """The encoder as upstream runs it: dinov2's final layernorm affine-free; siglip's vision
    tower (of a `SiglipModel`, if given one) with `post_layernorm` replaced by Identity."""
    from transformers import Dinov2WithRegistersModel, SiglipModel, SiglipVisionModel

    if backbone == "dinov2":
        if not isinstance(encoder, Dinov2WithRegistersModel):
            raise TypeError(
                f"dinov2 needs a Dinov2WithRegistersModel, got {type(encoder).__name__}"
            )
        norm = encoder.layernorm
        if norm.elementwise_affine:
            device = norm.weight.device
            encoder.layernorm = nn.LayerNorm(
                norm.normalized_shape, eps=norm.eps, elementwise_affine=False, device=device
            )
        return encoder
    if backbone == "siglip":
        if isinstance(encoder, SiglipModel):
            encoder = encoder.vision_model
        if not isinstance(encoder, SiglipVisionModel):
            raise TypeError(f"siglip needs a SiglipVisionModel, got {type(encoder).__name__}")
        encoder.post_layernorm = nn.Identity()
        return encoder
    raise ValueError(f"not an RAE backbone: {backbone!r}")


def build_rae_codec(
    backbone: str,
    decoder_state: Mapping[str, torch.Tensor],
    stats: Mapping[str, torch.Tensor] | None,
    decoder_config: Mapping[str, Any] | None,
    encoder: nn.Module,
    identity: str = "",
    dtype: torch.dtype = torch.float32,
    input_size: int | None = None,
    source: str | None = None,
    stats_source: str | None = None,
) -> Dinov2RAECodec | SiglipScaleRAECodec:
    """An RAE codec from its parts, the decoder loaded key-exact.

    Args:
        backbone: "dinov2" or "siglip".
        decoder_state: the decoder state dict in the upstream layout (module docstring).
        stats: dinov2: the `stat.pt` dict `{"mean", "var"}` (required); siglip: None.
        decoder_config: a ViT-MAE JSON dict (dinov2 default: the shipped full-size
            `dinov2_rae_decoder.json`; siglip: the released `XL_decoder_config.json`, required).
        encoder: `Dinov2WithRegistersModel` (dinov2) or `SiglipVisionModel` / `SiglipModel`
            (siglip); modified in place as upstream does (see `prepare_encoder`).
        dtype: encoder and decoder weights (upstream: bf16). Latents and images are float32.
        input_size: the encoder's input side (default 448 / 224).
        source / stats_source: what error messages call the decoder weights / the statistics
            (load_codec: their file paths).
    """
    source = source or identity or f"{backbone} RAE decoder"
    if backbone == "dinov2":
        if stats is None:
            raise ValueError("dinov2: the RAE latent statistics (stat.pt) are required")
        config = dict(decoder_config or shipped_decoder_config("dinov2"))
        size = input_size or DINOV2_INPUT
    elif backbone == "siglip":
        if stats is not None:
            raise ValueError("siglip has no latent statistics (its normalisation is a layer norm)")
        if decoder_config is None:
            raise ValueError("siglip: pass the released decoder config (XL_decoder_config.json)")
        config = dict(decoder_config)
        size = input_size or SIGLIP_INPUT
    else:
        raise ValueError(f"not an RAE backbone: {backbone!r}")
    encoder = prepare_encoder(backbone, encoder).to(dtype)
    channels = int(encoder.config.hidden_size)
    patch = int(encoder.config.patch_size)
    if size % patch:
        raise ValueError(f"{backbone}: input size {size} is not a multiple of the patch {patch}")
    grid = size // patch
    decoder = load_decoder(decoder_state, config, channels, grid, source, dtype)
    decoder.to(next(encoder.parameters()).device)
    if backbone == "dinov2":
        mean, var = latent_stats(stats, channels, grid, stats_source or f"{source} statistics")
        return Dinov2RAECodec(encoder, decoder, mean, var, identity or "dinov2-rae", size)
    return SiglipScaleRAECodec(encoder, decoder, identity or "siglip-scale-rae", size)


# --------------------------------------------------------------------------- loading


def resolve_encoder(backbone: str, name_or_path: str | os.PathLike | None = None) -> Path:
    """A local folder as given, else the HF cache snapshot of the repo id (local files only).

    The lookup never touches the network (with or without HF_HUB_OFFLINE); a miss is a
    CheckpointError naming the `hf download` command that fills the cache.
    """
    name = str(name_or_path or RAE_ENCODERS[backbone])
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, local_files_only=True))
    except Exception as err:  # LocalEntryNotFoundError, HFValidationError, OSError
        cache = (
            os.environ.get("HF_HUB_CACHE") or os.environ.get("HF_HOME") or "~/.cache/huggingface"
        )
        raise CheckpointError(
            f"{backbone} encoder {name!r} is neither a local folder nor in the HF cache ({cache}). "
            f"Fetch it once with: hf download {name}"
        ) from err


#: The encoder config's model_type each backbone accepts, and the class that loads it.
_ENCODER_TYPES = {
    "dinov2": ({"dinov2_with_registers"}, "Dinov2WithRegistersModel"),
    "siglip": ({"siglip", "siglip_vision_model"}, "SiglipVisionModel"),
}


def load_encoder(
    backbone: str,
    name_or_path: str | os.PathLike | None = None,
    dtype: torch.dtype = torch.float32,
) -> nn.Module:
    """The backbone's transformers encoder from a local folder or the HF cache, every weight
    it needs present (a missing or mis-shaped weight is an error, not a random init)."""
    import transformers

    folder = resolve_encoder(backbone, name_or_path)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{folder} has no config.json; not a transformers model folder")
    model_type = json.loads(config_file.read_text()).get("model_type")
    accepted, class_name = _ENCODER_TYPES[backbone]
    if model_type not in accepted:
        raise CheckpointError(
            f"{folder}: model_type {model_type!r} is not the {backbone} encoder PiD used "
            f"({RAE_ENCODERS[backbone]}, model_type {sorted(accepted)[0]!r})"
        )
    model, info = getattr(transformers, class_name).from_pretrained(
        folder, local_files_only=True, dtype=dtype, output_loading_info=True
    )
    problems = [f"{k}: {info[k]}" for k in ("missing_keys", "mismatched_keys") if info.get(k)]
    if problems:
        raise CheckpointError(f"{folder}: encoder weights incomplete ({'; '.join(problems)})")
    return model


def load_rae_codec(
    backbone: str,
    paths: Sequence[Path],
    encoder: str | os.PathLike | nn.Module | None = None,
    dtype: torch.dtype = torch.float32,
) -> Dinov2RAECodec | SiglipScaleRAECodec:
    """The released codec from its files, in `CODEC_FILES` order: dinov2 (model.pt, stat.pt),
    siglip (decoder .pt, XL_decoder_config.json).

    `encoder`: a module, a local folder, or an HF repo id in the cache (default: the one PiD
    used, `RAE_ENCODERS[backbone]`).
    """
    from pid_models.checkpoints import read_state_dict

    weights, second = (Path(p) for p in paths)
    if isinstance(encoder, nn.Module):
        module, encoder_id = encoder, f"module:{type(encoder).__name__}"
    else:
        from pid_models.caption import _folder_fingerprint

        folder = resolve_encoder(backbone, encoder)
        module = load_encoder(backbone, folder, dtype)
        encoder_id = f"{encoder or RAE_ENCODERS[backbone]}:{_folder_fingerprint(folder)}"
    files = ":".join(f"{p.name}:{p.stat().st_size}" for p in (weights, second))
    identity = f"{backbone}-rae:{files}:{encoder_id}"
    state = read_state_dict(weights)
    stats, config = None, None
    if backbone == "dinov2":
        stats = read_state_dict(second)
    else:
        try:
            config = json.loads(second.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CheckpointError(f"{second}: not a JSON decoder config ({err})") from err
    return build_rae_codec(
        backbone,
        state,
        stats,
        config,
        module,
        identity=identity,
        dtype=dtype,
        source=str(weights),
        stats_source=str(second),
    )
