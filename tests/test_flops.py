"""The analytic FLOP count of a PiD forward against torch's own FlopCounterMode."""

from __future__ import annotations

import pytest

from pid_models.flops import counted_forward_flops, decode_flops, forward_flops, peak_tflops
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


@pytest.mark.parametrize(
    "config, out_hw, text_len",
    [(TINY_NET_KWARGS, (64, 96), 7), (V1PT5_SMALL, (64, 128), 3)],
    ids=["tiny-2k", "small-v1pt5"],
)
def test_analytic_count_is_within_5_percent_of_flop_counter_mode(config, out_hw, text_len):
    counted = counted_forward_flops(config, out_hw, text_len)
    estimate = forward_flops(config, out_hw, text_len)
    assert counted > 0 and abs(estimate - counted) / counted < 0.05, (estimate, counted)


def test_full_size_flux_2k_at_2048_is_about_45_tflop_per_forward():
    flux = next(
        e for e in EXPERIMENTS.values() if e.name == "PiD_res2k_sr4x_official_flux_distill_4step"
    )
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
