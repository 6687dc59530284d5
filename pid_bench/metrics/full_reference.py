"""Full-reference metrics computed with torchmetrics: psnr, ssim, ms_ssim (their declarations
are in catalog; lpips and dists are pyiqa's, in pyiqa_backed). Each is ``fn(image, context) ->
[B]`` on ``[B, 3, H, W]`` in [0, 1]."""

from __future__ import annotations

import torch

from pid_bench.metrics.base import MetricContext, needs_reference
from pid_bench.metrics.errors import MetricUnavailable

# ---- torchmetrics: psnr, ssim, ms_ssim ---------------------------------------------------------


def psnr(image: torch.Tensor, context: MetricContext) -> torch.Tensor:
    from torchmetrics.functional.image import peak_signal_noise_ratio

    reference = needs_reference(image, context)
    return torch.stack(
        [
            peak_signal_noise_ratio(i[None].float(), r[None], data_range=1.0)
            for i, r in zip(image, reference, strict=True)
        ]
    )


def ssim(image: torch.Tensor, context: MetricContext) -> torch.Tensor:
    from torchmetrics.functional.image import structural_similarity_index_measure

    reference = needs_reference(image, context)
    pad = (int(3.5 * 1.5 + 0.5) * 2 + 1 - 1) // 2  # torchmetrics' Gaussian radius for sigma 1.5
    if min(image.shape[-2:]) <= 2 * pad:
        raise MetricUnavailable(f"ssim needs both sides > {2 * pad} px")
    # torchmetrics >= 1.x averages the reflect-padded map; the valid part is the classic SSIM.
    _, full = structural_similarity_index_measure(
        image.float(), reference, data_range=1.0, reduction="none", return_full_image=True
    )
    return full[..., pad:-pad, pad:-pad].double().mean((1, 2, 3)).float()


_MS_SSIM_MIN_SIDE = (11 - 1) * 2**4 + 1  # kernel 11, 5 scales: torchmetrics' bound


def ms_ssim(image: torch.Tensor, context: MetricContext) -> torch.Tensor:
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

    reference = needs_reference(image, context)
    if min(image.shape[-2:]) < _MS_SSIM_MIN_SIDE:
        raise MetricUnavailable(
            f"ms_ssim needs both sides >= {_MS_SSIM_MIN_SIDE} px (got {tuple(image.shape[-2:])})"
        )
    return multiscale_structural_similarity_index_measure(
        image.float(), reference, data_range=1.0, reduction="none"
    ).reshape(-1)
