"""The analytic FLOP count of a PiD forward against torch's own FlopCounterMode."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from pid_models.flops import decode_flops, forward_flops, peak_tflops
from pid_models.pid_net import PidNet
from pid_models.registry import EXPERIMENTS
from pid_models.tiny import TINY_NET_KWARGS

#: A small net with every counted branch switched on (v1.5 layout: PiT LQ inject, per-token gate,
#: a 2x2-packed latent) and widths unlike the tiny default's.
V1PT5_SMALL = {
    **TINY_NET_KWARGS,
    "hidden_size": 96, "num_groups": 4, "pixel_attn_hidden_size": 64, "pixel_num_groups": 4,
    "patch_depth": 3, "lq_interval": 2, "lq_latent_channels": 128,
    "lq_latent_unpatchify_factor": 2, "latent_spatial_down_factor": 16, "pit_lq_inject": True,
    "lq_gate_type": "sigma_aware_per_token", "lq_conv_padding_mode": "replicate",
}  # fmt: skip


def _matmul_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """`pid_net.attention` as explicit matmuls: FlopCounterMode does not count the CPU
    scaled_dot_product_attention kernel, and attention is half the FLOPs at full size."""
    weights = torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5, dim=-1)
    return (weights @ v).transpose(1, 2).flatten(2)


def _counted(config: dict, out_hw: tuple[int, int], text_len: int, monkeypatch) -> int:
    import pid_models.pid_net as pid_net

    monkeypatch.setattr(pid_net, "attention", _matmul_attention)
    net = PidNet(**config).eval()
    per_latent = net.pixels_per_latent
    x = torch.randn(1, 3, *out_hw)
    y = torch.randn(1, text_len, config["txt_embed_dim"])
    z = torch.randn(1, config["lq_latent_channels"], out_hw[0] // per_latent, out_hw[1] // per_latent)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(x, torch.full((1,), 500.0), y, z, torch.zeros(1))
    return counter.get_total_flops()


@pytest.mark.parametrize(
    "config, out_hw, text_len",
    [(TINY_NET_KWARGS, (64, 96), 7), (V1PT5_SMALL, (64, 128), 3)],
    ids=["tiny-2k", "small-v1pt5"],
)
def test_analytic_count_is_within_5_percent_of_flop_counter_mode(
    config, out_hw, text_len, monkeypatch
):
    counted = _counted(dict(config), out_hw, text_len, monkeypatch)
    estimate = forward_flops(config, out_hw, text_len)
    assert counted > 0 and abs(estimate - counted) / counted < 0.05, (estimate, counted)


def test_full_size_flux_2k_at_2048_is_about_45_tflop_per_forward():
    flux = next(e for e in EXPERIMENTS.values() if e.name == "PiD_res2k_sr4x_official_flux_distill_4step")
    per_forward = forward_flops(flux.net_kwargs, (2048, 2048))
    assert 40e12 < per_forward < 50e12
    assert decode_flops(flux.net_kwargs, (2048, 2048), steps=4) == 4 * per_forward


def test_a_tiled_decode_counts_every_tile():
    one = forward_flops(TINY_NET_KWARGS, (64, 64))
    assert decode_flops(TINY_NET_KWARGS, (64, 128), 2, tiles=[(64, 64), (64, 64)]) == 4 * one


def test_peak_table_knows_the_listed_gpus_and_not_others():
    assert peak_tflops("NVIDIA H100 80GB HBM3") == 989.4
    assert peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert peak_tflops("NVIDIA GB200") == 2500.0 and peak_tflops("NVIDIA B200") == 2250.0
    assert peak_tflops("NVIDIA GeForce RTX 4090") == 165.2
    assert peak_tflops("Tesla T4") is None
