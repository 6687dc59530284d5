"""Calibrate the activation constants of `pid_models.tiling.estimate_peak_bytes`.

    python benchmarks/calibrate_memory.py [--validate-released]

Measures, with `LiveTensorBytes` on the meta device (shapes only: nothing is computed or
allocated), the peak live tensor bytes of one PidNet forward for a grid of small configurations
(hidden size, pixel width, LQ trunk width, LQ channels, pixel-attention width) in float32 and
under emulated bf16 autocast, at two token counts. The slope in tokens is the per-token
activation; a least-squares fit of it on the config widths gives the ACT_* constants. It then
prints the model's relative error on every measurement and, with --validate-released, on the
released full-size configurations (meta, so it runs on a laptop). CUDA peaks differ (allocator
rounding, workspaces): compare with `benchmarks/decode.py`'s measured columns on a device.
Takes ~2 minutes on 2 CPU cores (+1 minute with --validate-released); not part of the tests.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pid_models import tiling  # noqa: E402
from pid_models.pid_net import PidNet  # noqa: E402
from pid_models.registry import EXPERIMENTS  # noqa: E402
from pid_models.tiny import TINY_NET_KWARGS  # noqa: E402


def forward_peak(config: dict, size: tuple[int, int], dtype: torch.dtype) -> int:
    """Peak live bytes of one forward at output `size` (weights excluded, tables included)."""
    with torch.device("meta"):
        net = PidNet(**config).eval().requires_grad_(False)
        per_latent = tiling.pixels_per_latent(net.config)
        h, w = size
        x = torch.empty(1, 3, h, w)
        t = torch.empty(1)
        y = torch.empty(1, net.config["txt_max_length"], net.config["txt_embed_dim"])
        z = torch.empty(1, net.config["lq_latent_channels"], h // per_latent, w // per_latent)
        s = torch.empty(1)
    autocast = None if dtype == torch.float32 else dtype
    with torch.no_grad(), tiling.LiveTensorBytes(autocast) as meter:
        net(x, t, y, z, s)
    return meter.peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--validate-released", action="store_true")
    args = parser.parse_args()

    rows = []
    grid = itertools.product((32, 96, 256), (4, 8, 16), (16, 64), (16, 64), (24, 96))
    for hidden, pix, lq_hidden, lq_channels, attn in grid:
        config = {
            **TINY_NET_KWARGS,
            "hidden_size": hidden,
            "pixel_hidden_size": pix,
            "lq_hidden_dim": lq_hidden,
            "lq_latent_channels": lq_channels,
            "pixel_attn_hidden_size": attn,
        }
        for dtype in (torch.float32, torch.bfloat16):
            small, large = (
                forward_peak(config, (256, 256), dtype),
                forward_peak(config, (512, 512), dtype),
            )
            slope = (large - small) / (1024 - 256)
            rows.append((config, dtype, slope, large))
    e = torch.tensor(
        [2.0 if d == torch.bfloat16 else 4.0 for _, d, _, _ in rows], dtype=torch.float64
    )
    feats = torch.tensor(
        [
            [
                256 * c["pixel_hidden_size"],
                c["hidden_size"],
                c["lq_hidden_dim"],
                c["lq_latent_channels"],
            ]
            for c, _, _, _ in rows
        ],
        dtype=torch.float64,
    )
    table = tiling.TABLE_BYTES * feats[:, 0]
    target = torch.tensor([s for _, _, s, _ in rows], dtype=torch.float64) - table
    coeffs = torch.linalg.lstsq(feats * e[:, None], target[:, None]).solution.flatten()
    print(
        "fitted elements per token: per P2*d_pix, per D, per Dq, per C_lq =",
        [round(v, 3) for v in coeffs.tolist()],
    )
    print(
        "in use:",
        tiling.ACT_PER_PIXEL_WIDTH,
        tiling.ACT_PER_HIDDEN,
        tiling.ACT_PER_LQ_HIDDEN,
        tiling.ACT_PER_LQ_CHANNEL,
    )
    worst = 0.0
    for config, dtype, _, measured in rows:
        act = tiling.estimate_memory(config, (512, 512), None, dtype)
        error = act.activations / measured - 1
        worst = max(worst, abs(error))
    print(
        f"{len(rows)} measurements at 512x512: worst relative error of the activation model {worst:.1%}"
    )
    if args.validate_released:
        for experiment in EXPERIMENTS.values():
            config = dict(experiment.net_kwargs)
            for size in (1024, 2048):
                for dtype in (torch.bfloat16, torch.float32):
                    measured = forward_peak(config, (size, size), dtype)
                    model = tiling.estimate_memory(config, (size, size), None, dtype).activations
                    print(
                        f"{experiment.name:55s} {size:5d}^2 {str(dtype)[6:]:9s} measured "
                        f"{measured / 2**30:6.2f} GiB  model {model / 2**30:6.2f} GiB  "
                        f"({model / measured - 1:+.1%})"
                    )


if __name__ == "__main__":
    main()
