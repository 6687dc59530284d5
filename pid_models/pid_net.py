"""PiD network: a PixelDiT MMDiT with a ControlNet-style low-quality-latent branch.

Written from the architecture facts of the PiD reference oracle (`pid_reference/README.md`,
section 5); the parameter names match the released checkpoints key for key. All of it is in
this file, bottom-up: norms and position tables, the LQ projection, the MMDiT joint block, the
pixel (PiT) block, and `PidNet`.

Shapes: B batch, image H x W, patch size p (16), patch grid Hs x Ws, L = Hs * Ws image tokens,
D hidden size, Lt text tokens, d_pix pixel hidden size, D_a pixel-attention width, P2 = p * p.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pid_models.registry import BASE_NET_KWARGS

GATE_TYPES = ("sigma_aware_per_token_per_dim", "sigma_aware_per_token")
PADDING_MODES = ("zeros", "replicate")
ROPE_MODES = ("original", "ntk_aware")


# --------------------------------------------------------------------------------------------
# Norms, position tables
# --------------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """w * (u / sqrt(mean(u^2) + eps)): the normalisation in float32, rounded back to the input
    dtype, then times the (float32) weight, as upstream; under bf16 autocast the result is
    therefore float32, which keeps the pixel stream in float32 like upstream's."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * normed.to(x.dtype)


def timestep_sinusoid(t: torch.Tensor, dim: int = 256, max_period: float = 10.0) -> torch.Tensor:
    """[B] -> [B, dim]: cosines first, then sines; frequencies and products in float32.

    max_period is 10, not the usual 10000: t arrives already multiplied by 1000.
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def pixel_sincos_table(height: int, width: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sin-cos table over every pixel, [H, W, dim], computed in float64.

    The first dim/2 channels encode the column, the last dim/2 the row; each half is
    [sin(pos * w_k)] + [cos(pos * w_k)] with w_k = 10000^(-k/n), n = dim/4.
    """
    n = dim // 4
    omega = 1.0 / 10000.0 ** (torch.arange(n, dtype=torch.float64) / n)

    def axis(size: int) -> torch.Tensor:
        angles = torch.arange(size, dtype=torch.float64)[:, None] * omega[None]
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)  # [size, dim/2]

    col = axis(width)[None].expand(height, width, dim // 2)
    row = axis(height)[:, None].expand(height, width, dim // 2)
    return torch.cat([col, row], dim=-1)


def ntk_theta(grid: int, ref_grid: int, head_dim: int, base: float = 10000.0) -> float:
    """NTK-aware RoPE base for one axis, in double precision."""
    d_a = head_dim // 2
    if d_a <= 2:
        return base
    return base * (grid / ref_grid) ** (d_a / (d_a - 2))


def rope_2d_angles(
    grid_h: int, grid_w: int, head_dim: int, theta_h: float, theta_w: float
) -> torch.Tensor:
    """Rotation angles [Hs * Ws, head_dim / 2] for the patch grid, float32.

    Positions are normalised to linspace(0, 16, n) per axis. Pair m of the head dimension
    rotates by the column angle (m even) or the row angle (m odd).
    """
    n = head_dim // 4
    exponents = torch.arange(0, head_dim // 2, 2, dtype=torch.float32)[:n] / (head_dim // 2)
    freq_w = 1.0 / (theta_w**exponents)
    freq_h = 1.0 / (theta_h**exponents)
    pos_w = torch.linspace(0, 16, grid_w, dtype=torch.float32)
    pos_h = torch.linspace(0, 16, grid_h, dtype=torch.float32)
    ang_w = (pos_w[:, None] * freq_w[None])[None].expand(grid_h, grid_w, n)
    ang_h = (pos_h[:, None] * freq_h[None])[:, None].expand(grid_h, grid_w, n)
    return torch.stack([ang_w, ang_h], dim=-1).reshape(grid_h * grid_w, 2 * n)


def rope_1d_angles(length: int, head_dim: int, theta: float) -> torch.Tensor:
    """Text RoPE angles [length, head_dim / 2]: position n times theta^(-2m/hd), float32."""
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    return torch.arange(length, dtype=torch.float32)[:, None] * freqs[None]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive pairs (2m, 2m+1) of the last dim. x [B, nh, L, hd]; cos/sin [L, hd/2]."""
    pairs = x.float().unflatten(-1, (-1, 2))
    a, b = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1)
    return rotated.flatten(-2).to(x.dtype)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Softmax attention with scale 1/sqrt(hd), no mask. [B, nh, L, hd] -> [B, L, nh * hd]."""
    out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2).flatten(2)


# --------------------------------------------------------------------------------------------
# Embedders
# --------------------------------------------------------------------------------------------


class LinearEmbedder(nn.Module):
    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden_size: int, freq_dim: int = 256) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(
            nn.Linear(freq_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """t [B] (flow time x 1000) -> pre-SiLU embedding [B, 1, D]."""
        emb = timestep_sinusoid(t, self.freq_dim).to(self.mlp[0].weight.dtype)
        return self.mlp(emb)[:, None]


class CaptionEmbedder(nn.Module):
    def __init__(self, in_dim: int, hidden_size: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, hidden_size)
        self.norm = RMSNorm(hidden_size)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(y))


# --------------------------------------------------------------------------------------------
# LQ latent branch
# --------------------------------------------------------------------------------------------


class ResBlock(nn.Module):
    def __init__(self, dim: int, padding_mode: str) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.GroupNorm(4, dim, eps=1e-5),
            nn.SiLU(),
            nn.Conv2d(dim, dim, 3, padding=1, padding_mode=padding_mode),
            nn.GroupNorm(4, dim, eps=1e-5),
            nn.SiLU(),
            nn.Conv2d(dim, dim, 3, padding=1, padding_mode=padding_mode),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class SigmaAwareGate(nn.Module):
    """x <- x + sigmoid(Linear([x; l]) - exp(log_alpha) * sigma) * l.

    `per_dim` gives one gate per token and channel (v1), otherwise one per token (v1.5).
    """

    def __init__(self, hidden_size: int, per_dim: bool) -> None:
        super().__init__()
        self.log_alpha = nn.Parameter(torch.tensor(math.log(5.0)))
        self.content_proj = nn.Linear(2 * hidden_size, hidden_size if per_dim else 1)

    def forward(self, x: torch.Tensor, lq: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        logits = self.content_proj(torch.cat([x, lq], dim=-1))
        penalty = self.log_alpha.exp() * sigma.float()[:, None, None]
        gated = x + torch.sigmoid(logits - penalty) * lq
        # The float32 sigma promotes the result. Under autocast that is upstream's behaviour and
        # is kept; with weights stored in bf16 (no autocast) the stream must stay bf16.
        if x.dtype == torch.bfloat16 and not torch.is_autocast_enabled(x.device.type):
            return gated.to(x.dtype)
        return gated


class LQProjection(nn.Module):
    """Low-quality latent -> per-injection features on the patch grid (+ PiT and aux heads)."""

    def __init__(
        self,
        latent_channels: int,
        hidden_dim: int,
        out_dim: int,
        num_heads: int,
        num_res_blocks: int,
        unpatchify_factor: int,
        padding_mode: str,
        gate_per_dim: bool,
        pit_head: bool,
        aux_rgb_head: bool,
        aux_rgb_pixels: int,
    ) -> None:
        super().__init__()
        if latent_channels % (unpatchify_factor**2):
            raise ValueError(
                f"lq_latent_channels={latent_channels} is not divisible by "
                f"lq_latent_unpatchify_factor^2={unpatchify_factor**2}"
            )
        self.unpatchify_factor = unpatchify_factor
        self.aux_rgb_pixels = aux_rgb_pixels
        in_channels = latent_channels // unpatchify_factor**2
        self.latent_proj = nn.Sequential(
            nn.Conv2d(in_channels, hidden_dim, 3, padding=1, padding_mode=padding_mode),
            nn.SiLU(),
            nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1, padding_mode=padding_mode),
            *[ResBlock(hidden_dim, padding_mode) for _ in range(num_res_blocks)],
        )
        self.output_heads = nn.ModuleList(nn.Linear(hidden_dim, out_dim) for _ in range(num_heads))
        self.pit_head = nn.Linear(hidden_dim, out_dim) if pit_head else None
        self.lq_aux_rgb_head = (
            nn.Sequential(
                nn.LayerNorm(hidden_dim, eps=1e-5),
                nn.Linear(hidden_dim, hidden_dim),
                nn.SiLU(),
                nn.Linear(hidden_dim, 3 * aux_rgb_pixels**2),
            )
            if aux_rgb_head
            else None
        )
        self.gate_modules = nn.ModuleList(
            SigmaAwareGate(out_dim, gate_per_dim) for _ in range(num_heads)
        )

    def unpatchify(self, z: torch.Tensor) -> torch.Tensor:
        """Inverse 2x2 (f x f) patch packing: channel c*f^2 + fy*f + fx -> (c, y*f+fy, x*f+fx)."""
        f = self.unpatchify_factor
        if f == 1:
            return z
        b, c, h, w = z.shape
        z = z.reshape(b, c // f**2, f, f, h, w).permute(0, 1, 4, 2, 5, 3)
        return z.reshape(b, c // f**2, h * f, w * f)

    def features(self, z: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
        """[B, C, h, w] -> trunk features as tokens [B, L, Dq] on the (Hs, Ws) patch grid."""
        z = self.unpatchify(z)
        if z.shape[-2:] != (grid_h, grid_w):
            if z.shape[-2] > grid_h or z.shape[-1] > grid_w:
                raise ValueError(
                    f"LQ latent grid {tuple(z.shape[-2:])} is finer than the patch grid "
                    f"{(grid_h, grid_w)}; no released PiD config folds latents"
                )
            z = F.interpolate(z, size=(grid_h, grid_w), mode="nearest")
        z = z.to(self.latent_proj[0].weight.dtype)
        return self.latent_proj(z).flatten(2).transpose(1, 2)

    def aux_rgb(self, tokens: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
        """Training-only LQ-RGB head: tokens [B, L, Dq] -> [B, 3, Hs * a, Ws * a]."""
        a = self.aux_rgb_pixels
        rgb = self.lq_aux_rgb_head(tokens).reshape(-1, grid_h, grid_w, 3, a, a)
        return rgb.permute(0, 3, 1, 4, 2, 5).reshape(-1, 3, grid_h * a, grid_w * a)


# --------------------------------------------------------------------------------------------
# MMDiT joint block (image + text streams)
# --------------------------------------------------------------------------------------------


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class JointAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.qkv_x = nn.Linear(dim, 3 * dim, bias=False)
        self.qkv_y = nn.Linear(dim, 3 * dim, bias=False)
        self.q_norm_x = RMSNorm(head_dim)
        self.k_norm_x = RMSNorm(head_dim)
        self.q_norm_y = RMSNorm(head_dim)
        self.k_norm_y = RMSNorm(head_dim)
        self.proj_x = nn.Linear(dim, dim)
        self.proj_y = nn.Linear(dim, dim)

    def _heads(self, qkv: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # [B, N, 3D] -> 3 x [B, nh, N, hd]; feature index = which * D + head * hd + d
        b, n, _ = qkv.shape
        return qkv.reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)

    def forward(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        rope_x: tuple[torch.Tensor, torch.Tensor],
        rope_y: tuple[torch.Tensor, torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        qx, kx, vx = self._heads(self.qkv_x(x))
        qy, ky, vy = self._heads(self.qkv_y(y))
        qx, kx = apply_rope(self.q_norm_x(qx), *rope_x), apply_rope(self.k_norm_x(kx), *rope_x)
        qy, ky = apply_rope(self.q_norm_y(qy), *rope_y), apply_rope(self.k_norm_y(ky), *rope_y)
        # Text first, then image, in one joint sequence.
        out = attention(
            torch.cat([qy, qx], dim=2), torch.cat([ky, kx], dim=2), torch.cat([vy, vx], dim=2)
        )
        text_len = y.shape[1]
        return self.proj_x(out[:, text_len:]), self.proj_y(out[:, :text_len])


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class PatchBlock(nn.Module):
    """MMDiT joint block with separate adaLN modulation (6 chunks) for each stream."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        mlp_hidden = int(2 * 4 * dim / 3)
        self.norm_x1 = RMSNorm(dim)
        self.norm_y1 = RMSNorm(dim)
        self.attn = JointAttention(dim, num_heads)
        self.norm_x2 = RMSNorm(dim)
        self.norm_y2 = RMSNorm(dim)
        self.mlp_x = SwiGLU(dim, mlp_hidden)
        self.mlp_y = SwiGLU(dim, mlp_hidden)
        self.adaLN_modulation_img = nn.Sequential(nn.Linear(dim, 6 * dim))
        self.adaLN_modulation_txt = nn.Sequential(nn.Linear(dim, 6 * dim))

    def forward(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        c: torch.Tensor,
        rope_x: tuple[torch.Tensor, torch.Tensor],
        rope_y: tuple[torch.Tensor, torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        sa_x, ca_x, ga_x, sf_x, cf_x, gf_x = self.adaLN_modulation_img(c).chunk(6, dim=-1)
        sa_y, ca_y, ga_y, sf_y, cf_y, gf_y = self.adaLN_modulation_txt(c).chunk(6, dim=-1)
        attn_x, attn_y = self.attn(
            modulate(self.norm_x1(x), sa_x, ca_x),
            modulate(self.norm_y1(y), sa_y, ca_y),
            rope_x,
            rope_y,
        )
        x = x + ga_x * attn_x
        y = y + ga_y * attn_y
        x = x + gf_x * self.mlp_x(modulate(self.norm_x2(x), sf_x, cf_x))
        y = y + gf_y * self.mlp_y(modulate(self.norm_y2(y), sf_y, cf_y))
        return x, y


# --------------------------------------------------------------------------------------------
# Pixel (PiT) block
# --------------------------------------------------------------------------------------------


class PixelAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_norm = RMSNorm(dim // num_heads)
        self.k_norm = RMSNorm(dim // num_heads)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = apply_rope(self.q_norm(q), *rope), apply_rope(self.k_norm(k), *rope)
        return self.proj(attention(q, k, v))


class PixelMlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()  # exact erf form; the tanh approximation is a measurable bug
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class PixelBlock(nn.Module):
    """Per-pixel modulated block; attention runs over patch tokens after compressing each patch."""

    def __init__(
        self, cond_dim: int, pixel_dim: int, attn_dim: int, num_heads: int, patch_pixels: int
    ) -> None:
        super().__init__()
        self.pixel_dim = pixel_dim
        self.patch_pixels = patch_pixels
        self.compress_to_attn = nn.Linear(patch_pixels * pixel_dim, attn_dim)
        self.expand_from_attn = nn.Linear(attn_dim, patch_pixels * pixel_dim)
        self.norm1 = RMSNorm(pixel_dim)
        self.attn = PixelAttention(attn_dim, num_heads)
        self.norm2 = RMSNorm(pixel_dim)
        self.mlp = PixelMlp(pixel_dim, 4 * pixel_dim)
        self.adaLN_modulation = nn.Sequential(nn.Linear(cond_dim, 6 * pixel_dim * patch_pixels))

    def forward(
        self,
        u: torch.Tensor,
        s: torch.Tensor,
        batch: int,
        rope: tuple[torch.Tensor, torch.Tensor],
    ) -> torch.Tensor:
        """u [B*L, P2, d_pix], s [B*L, D] -> [B*L, P2, d_pix]."""
        # Every pixel position of the patch has its own six modulation vectors.
        mod = self.adaLN_modulation(s).unflatten(-1, (self.patch_pixels, 6 * self.pixel_dim))
        shift_a, scale_a, gate_a, shift_f, scale_f, gate_f = mod.chunk(6, dim=-1)
        a = modulate(self.norm1(u), shift_a, scale_a)
        a = self.compress_to_attn(a.reshape(batch, -1, self.patch_pixels * self.pixel_dim))
        a = self.expand_from_attn(self.attn(a, rope)).reshape(u.shape)
        u = u + gate_a * a
        return u + gate_f * self.mlp(modulate(self.norm2(u), shift_f, scale_f))


class FinalLayer(nn.Module):
    def __init__(self, pixel_dim: int, out_channels: int) -> None:
        super().__init__()
        self.norm = RMSNorm(pixel_dim)
        self.linear = nn.Linear(pixel_dim, out_channels)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(u))


# --------------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------------

# Constructor arguments that exist upstream but do not change parameters or the inference
# output of any released configuration; accepted so manifests' net_kwargs load unchanged.
_INERT_NAMES = (
    "num_text_blocks",
    "repa_encoder_index",
    "ed_compress_ratio",
    "ed_depth_per_stage",
    "ed_window_size",
    "ed_num_heads",
    "ed_hidden_size",
    "ed_use_token_shuffle",
    "zero_init_lq",
    "train_lq_proj_only",
)
#: Their values in the released configurations (declared once, in the registry).
_INERT_KWARGS = {name: BASE_NET_KWARGS[name] for name in _INERT_NAMES}


class PidNet(nn.Module):
    r"""PiD: pixel-space velocity predictor conditioned on a caption and a low-quality latent.

    The constructor kwargs are the config (the same names and values as the manifests'
    `net_kwargs`); `self.config` keeps them, every default filled in.

    Args:
        in_channels: image channels (3).
        hidden_size: MMDiT width D (1536).
        num_groups: MMDiT attention heads (24; head dim D / heads).
        pixel_hidden_size: per-pixel width d_pix (16).
        pixel_attn_hidden_size: pixel-block attention width D_a (1152).
        pixel_num_groups: pixel-block attention heads (16).
        patch_depth: MMDiT blocks (14). pixel_depth: pixel blocks (2). patch_size: p (16).
        txt_embed_dim: caption embedding width (2304). txt_max_length: text tokens kept (300).
        use_text_rope, text_rope_theta: 1-D RoPE on text tokens (must be True / 10000).
        rope_mode: "ntk_aware" (released) or "original"; rope_ref_h/w: NTK reference in pixels.
        lq_latent_channels: C of the LQ latent; lq_hidden_dim: trunk width Dq;
        lq_num_res_blocks: residual blocks of the trunk; lq_latent_unpatchify_factor: f (1 or 2);
        lq_conv_padding_mode: "zeros" (v1) or "replicate" (v1.5);
        lq_gate_type: "sigma_aware_per_token_per_dim" (v1) or "sigma_aware_per_token" (v1.5);
        lq_interval: inject the LQ feature before every lq_interval-th MMDiT block;
        lq_aux_rgb_head: the training-only LQ-RGB head (v1.5); pit_lq_inject: LQ into the pixel
        condition (v1.5); sr_scale: PiD upscale (4 or 8); latent_spatial_down_factor: the codec's
        spatial compression (8 or 16).
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_groups: int = 24,
        hidden_size: int = 1536,
        pixel_hidden_size: int = 16,
        pixel_attn_hidden_size: int = 1152,
        pixel_num_groups: int = 16,
        patch_depth: int = 14,
        pixel_depth: int = 2,
        patch_size: int = 16,
        txt_embed_dim: int = 2304,
        txt_max_length: int = 300,
        use_text_rope: bool = True,
        text_rope_theta: float = 10000.0,
        rope_mode: str = "ntk_aware",
        rope_ref_h: int = 1024,
        rope_ref_w: int = 1024,
        enable_ed: bool = False,
        lq_inject_mode: str = "controlnet",
        lq_in_channels: int = 0,
        lq_latent_channels: int = 16,
        lq_hidden_dim: int = 512,
        lq_num_res_blocks: int = 4,
        lq_latent_unpatchify_factor: int = 1,
        lq_aux_rgb_head: bool = False,
        lq_aux_rgb_head_latent_block_idx: int = -1,
        lq_conv_padding_mode: str = "zeros",
        lq_gate_type: str = "sigma_aware_per_token_per_dim",
        lq_interval: int = 2,
        sr_scale: int = 4,
        latent_spatial_down_factor: int = 8,
        pit_lq_inject: bool = False,
        **inert_kwargs: Any,
    ) -> None:
        super().__init__()
        config = {
            k: v for k, v in locals().items() if k not in ("self", "inert_kwargs", "__class__")
        }
        unknown = sorted(set(inert_kwargs) - set(_INERT_KWARGS))
        if unknown:
            raise TypeError(f"PidNet got unknown kwargs {unknown}")
        self.config: dict[str, Any] = {**config, **_INERT_KWARGS, **inert_kwargs}
        _check_supported(self.config)

        self.patch_size = patch_size
        self.num_heads = num_groups
        self.pixel_num_heads = pixel_num_groups
        self.pixel_dim = pixel_hidden_size
        self.txt_max_length = txt_max_length
        self.text_rope_theta = text_rope_theta
        self.rope_mode = rope_mode
        self.rope_ref_grid = (rope_ref_h // patch_size, rope_ref_w // patch_size)
        self.lq_interval = lq_interval
        self.sr_scale = sr_scale
        self.latent_spatial_down_factor = latent_spatial_down_factor
        self.pit_lq_inject = pit_lq_inject
        patch_pixels = patch_size**2
        num_lq_heads = math.ceil(patch_depth / lq_interval)
        self._table_cache: dict[tuple, Any] = {}

        self.y_pos_embedding = nn.Parameter(torch.zeros(1, txt_max_length, hidden_size))
        self.pixel_embedder = LinearEmbedder(in_channels, pixel_hidden_size)
        self.s_embedder = LinearEmbedder(in_channels * patch_pixels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = CaptionEmbedder(txt_embed_dim, hidden_size)
        self.patch_blocks = nn.ModuleList(
            PatchBlock(hidden_size, num_groups) for _ in range(patch_depth)
        )
        self.pixel_blocks = nn.ModuleList(
            PixelBlock(
                hidden_size,
                pixel_hidden_size,
                pixel_attn_hidden_size,
                pixel_num_groups,
                patch_pixels,
            )
            for _ in range(pixel_depth)
        )
        self.final_layer = FinalLayer(pixel_hidden_size, in_channels)
        self.lq_proj = LQProjection(
            latent_channels=lq_latent_channels,
            hidden_dim=lq_hidden_dim,
            out_dim=hidden_size,
            num_heads=num_lq_heads,
            num_res_blocks=lq_num_res_blocks,
            unpatchify_factor=lq_latent_unpatchify_factor,
            padding_mode=lq_conv_padding_mode,
            gate_per_dim=lq_gate_type == "sigma_aware_per_token_per_dim",
            pit_head=pit_lq_inject,
            aux_rgb_head=lq_aux_rgb_head,
            aux_rgb_pixels=patch_size // sr_scale,
        )
        self.pit_lq_gate = (
            SigmaAwareGate(hidden_size, lq_gate_type == "sigma_aware_per_token_per_dim")
            if pit_lq_inject
            else None
        )

    # ---- size helpers ----------------------------------------------------------------------

    @property
    def pixels_per_latent(self) -> int:
        """Output pixels per LQ latent cell along each axis (down factor x sr scale)."""
        return self.latent_spatial_down_factor * self.sr_scale

    def output_size(self, latent_hw: tuple[int, int]) -> tuple[int, int]:
        """(h, w) of the LQ latent -> (H, W) of the decoded image."""
        return latent_hw[0] * self.pixels_per_latent, latent_hw[1] * self.pixels_per_latent

    # ---- cached position tables ------------------------------------------------------------

    def _cached(self, key: tuple, build) -> Any:
        table = self._table_cache.get(key)
        if table is None:
            table = self._table_cache[key] = build()
        return table

    def _rope_2d(self, grid_h: int, grid_w: int, head_dim: int, device) -> tuple:
        def build() -> tuple[torch.Tensor, torch.Tensor]:
            if self.rope_mode == "ntk_aware":
                ref_h, ref_w = self.rope_ref_grid
                theta_h = ntk_theta(grid_h, ref_h, head_dim)
                theta_w = ntk_theta(grid_w, ref_w, head_dim)
            else:
                theta_h = theta_w = 10000.0
            angles = rope_2d_angles(grid_h, grid_w, head_dim, theta_h, theta_w).to(device)
            return angles.cos(), angles.sin()

        return self._cached(("rope2d", grid_h, grid_w, head_dim, str(device)), build)

    def _rope_text(self, length: int, head_dim: int, device) -> tuple:
        def build() -> tuple[torch.Tensor, torch.Tensor]:
            angles = rope_1d_angles(length, head_dim, self.text_rope_theta).to(device)
            return angles.cos(), angles.sin()

        return self._cached(("rope1d", length, head_dim, str(device)), build)

    def _pixel_pos(self, height: int, width: int, device, dtype) -> torch.Tensor:
        def build() -> torch.Tensor:
            return pixel_sincos_table(height, width, self.pixel_dim).to(device, torch.float32)

        return self._cached(("pixpos", height, width, str(device)), build).to(dtype)

    # ---- forward ---------------------------------------------------------------------------

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor,
        lq_latent: torch.Tensor,
        degrade_sigma: torch.Tensor,
        return_lq_aux: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Predict the velocity v = eps - x0.

        Args:
            x: noisy image [B, 3, H, W]; H and W multiples of patch_size.
            t: [B] flow time already multiplied by 1000.
            y: caption embeddings [B, Ly, txt_embed_dim]; the first txt_max_length are used.
            lq_latent: [B, C, h, w] with H = h * latent_spatial_down_factor * sr_scale.
            degrade_sigma: [B] noise level of lq_latent.
            return_lq_aux: also return {"pred_lq_rgb": [B, 3, H/sr, W/sr]} (training-only head).

        Returns:
            [B, 3, H, W], or (output, aux dict) with return_lq_aux.
        """
        batch, _, height, width = x.shape
        p = self.patch_size
        if height % p or width % p:
            raise ValueError(f"image size {height}x{width} is not a multiple of patch size {p}")
        grid_h, grid_w = height // p, width // p
        num_tokens = grid_h * grid_w
        dtype = self.s_embedder.proj.weight.dtype
        x = x.to(dtype)

        t_emb = self.t_embedder(t)  # [B, 1, D], pre-SiLU
        c = F.silu(t_emb)
        y = y[:, : self.txt_max_length].to(dtype)
        y = self.y_embedder(y) + self.y_pos_embedding[:, : y.shape[1]]

        # Patch tokens, channel-major within a patch: index ch * P2 + py * p + px.
        patches = x.reshape(batch, -1, grid_h, p, grid_w, p).permute(0, 2, 4, 1, 3, 5)
        s = self.s_embedder(patches.reshape(batch, num_tokens, -1))

        lq_tokens = self.lq_proj.features(lq_latent, grid_h, grid_w)  # [B, L, Dq]
        head_dim = s.shape[-1] // self.num_heads
        rope_x = self._rope_2d(grid_h, grid_w, head_dim, x.device)
        rope_y = self._rope_text(y.shape[1], head_dim, x.device)
        for i, block in enumerate(self.patch_blocks):
            if i % self.lq_interval == 0:
                k = i // self.lq_interval
                lq_feature = self.lq_proj.output_heads[k](lq_tokens)
                s = self.lq_proj.gate_modules[k](s, lq_feature, degrade_sigma)
            s, y = block(s, y, c, rope_x, rope_y)

        s = F.silu(t_emb + s)
        if self.pit_lq_inject:
            s = self.pit_lq_gate(s, self.lq_proj.pit_head(lq_tokens), degrade_sigma)
        s = s.reshape(batch * num_tokens, -1)

        u = self._pixel_tokens(x, grid_h, grid_w)
        pixel_head_dim = self.pixel_blocks[0].attn.qkv.in_features // self.pixel_num_heads
        rope_pix = self._rope_2d(grid_h, grid_w, pixel_head_dim, x.device)
        for block in self.pixel_blocks:
            u = block(u, s, batch, rope_pix)

        out = self.final_layer(u)  # [B*L, P2, 3]
        out = out.reshape(batch, grid_h, grid_w, p, p, -1).permute(0, 5, 1, 3, 2, 4)
        out = out.reshape(batch, -1, height, width)
        if return_lq_aux:
            if self.lq_proj.lq_aux_rgb_head is None:
                raise ValueError("return_lq_aux=True needs lq_aux_rgb_head=True")
            return out, {"pred_lq_rgb": self.lq_proj.aux_rgb(lq_tokens, grid_h, grid_w)}
        return out

    def _pixel_tokens(self, x: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
        """[B, 3, H, W] -> [B*L, P2, d_pix]: per-pixel Linear plus the full-image sin-cos table."""
        batch, _, height, width = x.shape
        p = self.patch_size
        u = self.pixel_embedder(x.permute(0, 2, 3, 1))
        # The table joins in the input's dtype (float32), as upstream's PixelTokenEmbedder: under
        # autocast the bf16 projection is promoted, and the pixel blocks run on float32 tokens.
        u = u + self._pixel_pos(height, width, x.device, x.dtype)
        u = u.reshape(batch, grid_h, p, grid_w, p, -1).permute(0, 1, 3, 2, 4, 5)
        return u.reshape(batch * grid_h * grid_w, p * p, -1)


def _check_supported(cfg: dict[str, Any]) -> None:
    """Refuse configurations no released checkpoint uses, rather than computing something else."""
    problems = []
    if cfg["enable_ed"]:
        problems.append("enable_ed=True (encoder-decoder variant) is not implemented")
    if cfg["lq_inject_mode"] != "controlnet":
        problems.append(f"lq_inject_mode={cfg['lq_inject_mode']!r}: only 'controlnet'")
    if cfg["lq_in_channels"] != 0:
        problems.append("lq_in_channels != 0 (LQ image branch) is not implemented")
    if not cfg["use_text_rope"]:
        problems.append("use_text_rope=False is not implemented")
    if cfg["lq_aux_rgb_head_latent_block_idx"] != -1:
        problems.append("lq_aux_rgb_head_latent_block_idx must be -1 (final trunk features)")
    if cfg["lq_gate_type"] not in GATE_TYPES:
        problems.append(f"lq_gate_type={cfg['lq_gate_type']!r}: one of {GATE_TYPES}")
    if cfg["lq_conv_padding_mode"] not in PADDING_MODES:
        problems.append(
            f"lq_conv_padding_mode={cfg['lq_conv_padding_mode']!r}: one of {PADDING_MODES}"
        )
    if cfg["rope_mode"] not in ROPE_MODES:
        problems.append(f"rope_mode={cfg['rope_mode']!r}: one of {ROPE_MODES}")
    if cfg["patch_size"] % cfg["sr_scale"]:
        problems.append("patch_size must be a multiple of sr_scale")
    if problems:
        raise ValueError("unsupported PidNet config: " + "; ".join(problems))
