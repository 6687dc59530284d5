"""FLOPs of a PiD decode, counted from the network config and the output size.

Counted like `torch.utils.flop_counter.FlopCounterMode`: 2 FLOPs per multiply-add of every
matmul, convolution and attention product (QK^T and AV), nothing for elementwise work (norms,
activations, RoPE, modulation, the sampler's own arithmetic), which is well under 1 % here.
Written out term by term (as nanoGPT's `estimate_mfu`) so that each line can be read against
`pid_models.pid_net`. Batch rows scale everything linearly except the per-sample conditioning.

Scale: the FLUX 2k network at 2048^2 costs ~45 TFLOP per forward, four of them per decode.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


def _linear(rows: int, fan_in: int, fan_out: int) -> int:
    return 2 * rows * fan_in * fan_out


def _attention(tokens: int, width: int) -> int:
    """QK^T and AV over `tokens` positions, summed over heads of total `width`."""
    return 2 * 2 * tokens * tokens * width


def forward_flops(
    config: Mapping[str, Any], out_hw: tuple[int, int], text_len: int | None = None, batch: int = 1
) -> int:
    """FLOPs of one network forward producing a [batch, 3, H, W] velocity.

    Args:
        config: the network config (`PidNet.config`, a registry experiment's net_kwargs).
        out_hw: (H, W) of the output image (a tile's size for one tile of a tiled decode).
        text_len: caption tokens (default and cap: txt_max_length, what the net keeps).
        batch: samples per forward.
    """
    c = {**_DEFAULTS, **config}
    p, d = c["patch_size"], c["hidden_size"]
    height, width = out_hw
    tokens = (height // p) * (width // p)
    pixels = height * width
    text = min(text_len or c["txt_max_length"], c["txt_max_length"])
    d_pix, d_attn, p2 = c["pixel_hidden_size"], c["pixel_attn_hidden_size"], p * p
    d_lq, depth = c["lq_hidden_dim"], c["patch_depth"]
    gate_out = d if c["lq_gate_type"] == "sigma_aware_per_token_per_dim" else 1
    lq_in = c["lq_latent_channels"] // c["lq_latent_unpatchify_factor"] ** 2
    mlp = int(2 * 4 * d / 3)

    conditioning = _linear(1, 256, d) + _linear(1, d, d)  # timestep MLP
    conditioning += depth * 2 * _linear(1, d, 6 * d)  # adaLN of both streams, per block
    per_sample = _linear(text, c["txt_embed_dim"], d)  # caption embedder
    per_sample += _linear(tokens, 3 * p2, d)  # patch embedder
    # LQ trunk: convolutions on the patch grid (the latent is brought to it first)
    per_sample += _linear(tokens, 9 * lq_in, d_lq) + _linear(tokens, 9 * d_lq, d_lq)
    per_sample += c["lq_num_res_blocks"] * 2 * _linear(tokens, 9 * d_lq, d_lq)
    injections = math.ceil(depth / c["lq_interval"])
    per_sample += injections * (_linear(tokens, d_lq, d) + _linear(tokens, 2 * d, gate_out))
    if c["pit_lq_inject"]:
        per_sample += _linear(tokens, d_lq, d) + _linear(tokens, 2 * d, gate_out)
    # MMDiT blocks: both streams' QKV, projections and SwiGLU; one joint attention
    stream = _linear(1, d, 3 * d) + _linear(1, d, d) + 3 * _linear(1, d, mlp)
    per_sample += depth * ((tokens + text) * stream + _attention(tokens + text, d))
    # pixel blocks: per-pixel modulation and MLP, attention on compressed patch tokens
    pixel_block = _linear(tokens, d, 6 * d_pix * p2)
    pixel_block += _linear(tokens, p2 * d_pix, d_attn) + _linear(tokens, d_attn, p2 * d_pix)
    pixel_block += _linear(tokens, d_attn, 3 * d_attn) + _linear(tokens, d_attn, d_attn)
    pixel_block += _attention(tokens, d_attn)
    pixel_block += _linear(pixels, d_pix, 4 * d_pix) + _linear(pixels, 4 * d_pix, d_pix)
    per_sample += c["pixel_depth"] * pixel_block
    per_sample += _linear(pixels, 3, d_pix) + _linear(pixels, d_pix, 3)  # pixel in / out
    return batch * (conditioning + per_sample)


def decode_flops(
    config: Mapping[str, Any],
    out_hw: tuple[int, int],
    steps: int,
    tiles: list[tuple[int, int]] | None = None,
    text_len: int | None = None,
    batch: int = 1,
) -> int:
    """FLOPs of a whole decode: `steps` forwards, each over the image or over every tile
    (`tiles`: the (h, w) of each tile of a `pid_models.tiling` plan)."""
    shapes = tiles or [out_hw]
    return steps * sum(forward_flops(config, hw, text_len, batch) for hw in shapes)


def counted_forward_flops(
    config: Mapping[str, Any], out_hw: tuple[int, int], text_len: int, seed: int = 0
) -> int:
    """FLOPs of one forward of a randomly initialised PidNet as torch's `FlopCounterMode`
    counts them: the cross-check of `forward_flops`. Attention runs as explicit matmuls for the
    count, because FlopCounterMode does not count the CPU scaled_dot_product_attention kernel
    (half the FLOPs at full size)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from pid_models import pid_net

    def matmul_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        weights = torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5, dim=-1)
        return (weights @ v).transpose(1, 2).flatten(2)

    generator = torch.Generator().manual_seed(seed)
    net = pid_net.PidNet(**config).eval()
    per_latent = net.pixels_per_latent
    latent_hw = (out_hw[0] // per_latent, out_hw[1] // per_latent)
    inputs = (
        torch.randn(1, 3, *out_hw, generator=generator),
        torch.full((1,), 500.0),
        torch.randn(1, text_len, net.config["txt_embed_dim"], generator=generator),
        torch.randn(1, net.config["lq_latent_channels"], *latent_hw, generator=generator),
        torch.zeros(1),
    )
    original, pid_net.attention = pid_net.attention, matmul_attention
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            net(*inputs)
    finally:
        pid_net.attention = original
    return counter.get_total_flops()


#: PidNet's constructor defaults for the keys counted here (a manifest may omit them).
_DEFAULTS = {
    "patch_size": 16,
    "hidden_size": 1536,
    "pixel_hidden_size": 16,
    "pixel_attn_hidden_size": 1152,
    "patch_depth": 14,
    "pixel_depth": 2,
    "txt_embed_dim": 2304,
    "txt_max_length": 300,
    "lq_latent_channels": 16,
    "lq_hidden_dim": 512,
    "lq_num_res_blocks": 4,
    "lq_latent_unpatchify_factor": 1,
    "lq_gate_type": "sigma_aware_per_token_per_dim",
    "lq_interval": 2,
    "pit_lq_inject": False,
}

#: Dense (no sparsity) BF16 tensor-core peaks, TFLOP/s, from each vendor spec sheet; matched
#: against `torch.cuda.get_device_name` in this order (first substring wins).
DENSE_BF16_PEAK_TFLOPS: tuple[tuple[str, float, str], ...] = (
    ("GB200", 2500.0, "NVIDIA GB200 NVL72 datasheet: 5 PFLOPS FP16/BF16 sparse per GPU"),
    ("B200", 2250.0, "NVIDIA HGX B200 datasheet: 4.5 PFLOPS FP16/BF16 sparse per GPU"),
    ("H200", 989.4, "NVIDIA H200 datasheet (SXM): 1979 TFLOPS BF16 with sparsity"),
    ("H100 PCIe", 756.0, "NVIDIA H100 datasheet (PCIe): 1513 TFLOPS BF16 with sparsity"),
    ("H100", 989.4, "NVIDIA H100 datasheet (SXM): 1979 TFLOPS BF16 with sparsity"),
    ("A100", 312.0, "NVIDIA A100 datasheet: 312 TFLOPS BF16 dense"),
    ("L40S", 362.05, "NVIDIA L40S datasheet: 733 TFLOPS BF16 with sparsity"),
    ("RTX 5090", 209.5, "NVIDIA RTX Blackwell whitepaper: FP16/BF16, FP32 accumulate, dense"),
    ("RTX 4090", 165.2, "NVIDIA Ada Lovelace whitepaper: FP16/BF16, FP32 accumulate, dense"),
)


def peak_tflops(device_name: str) -> float | None:
    """The dense BF16 peak of a GPU by name, or None when it is not in the table."""
    for key, peak, _source in DENSE_BF16_PEAK_TFLOPS:
        if key.lower() in device_name.lower():
            return peak
    return None
