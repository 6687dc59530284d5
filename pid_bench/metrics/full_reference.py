"""Full-reference metrics: psnr and ssim (torchmetrics' definitions, computed here in one
vectorised pass / a separable valid-window SSIM), ms_ssim (torchmetrics) (their declarations
are in catalog; lpips and dists are pyiqa's, in pyiqa_backed). Each is ``fn(image, context) ->
[B]`` on ``[B, 3, H, W]`` in [0, 1]."""

from __future__ import annotations

import math

import torch

from pid_bench.metrics.base import MetricContext, conversions, needs_reference
from pid_bench.metrics.errors import MetricUnavailable

# ---- psnr, ssim (torchmetrics' definitions, computed here), ms_ssim (torchmetrics) ------------


def psnr(image: torch.Tensor, context: MetricContext) -> torch.Tensor:
    """torchmetrics' `peak_signal_noise_ratio` (data range 1) of each image, all at once: the
    squared error summed in float32, ``10 / ln 10 * (2 ln 1 - ln(sse / n))``."""
    reference = conversions(image, context).reference()
    sse = (image.float() - reference).square_().sum((1, 2, 3))
    n = image[0].numel()
    return (2 * math.log(1.0) - torch.log(sse / n)) * (10 / math.log(10.0))


#: torchmetrics' SSIM window: Gaussian, sigma 1.5, int(3.5 sigma + 0.5) * 2 + 1 = 11 taps.
SSIM_SIGMA = 1.5
SSIM_TAPS = int(3.5 * SSIM_SIGMA + 0.5) * 2 + 1
SSIM_K1, SSIM_K2 = 0.01, 0.03
#: Values of one of SSIM's five maps a row band holds on a CPU (1 MiB of float32: in cache).
SSIM_BAND_ELEMENTS = 1 << 18


def gaussian_taps(taps: int = SSIM_TAPS, sigma: float = SSIM_SIGMA) -> list[float]:
    """torchmetrics' 1-D Gaussian (float32, normalised to sum 1) as Python floats."""
    dist = torch.arange((1 - taps) / 2, (1 + taps) / 2, 1, dtype=torch.float32)
    gauss = torch.exp(-torch.pow(dist / sigma, 2) / 2)
    return (gauss / gauss.sum()).tolist()


def _blur_valid(maps: torch.Tensor, taps: list[float]) -> torch.Tensor:
    """The separable Gaussian of ``[..., R, W]`` over its valid window: ``[..., R - k + 1,
    W - k + 1]`` (rows, then columns; shifted multiply-adds in the maps' dtype)."""
    k = len(taps)
    rows = maps.shape[-2] - k + 1
    out = maps[..., :rows, :] * taps[0]
    for i in range(1, k):
        out.add_(maps[..., i : i + rows, :], alpha=taps[i])
    cols = out.shape[-1] - k + 1
    valid = out[..., :cols] * taps[0]
    for i in range(1, k):
        valid.add_(out[..., i : i + cols], alpha=taps[i])
    return valid


def ssim_valid(image: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``[B]`` float32: the mean SSIM over the channels and the valid map (windows inside the
    image) of ``[B, C, H, W]`` float32 images with data range 1.

    torchmetrics' SSIM map (Gaussian 11 x 11, sigma 1.5, K1 0.01, K2 0.03; variances clamped
    at 0) restricted to its valid part, computed with the separable window and in row bands
    (on a CPU), never on a padded image; the mean is taken in float64.
    """
    taps = gaussian_taps()
    k = len(taps)
    b, c, h, w = image.shape
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    out_h = h - k + 1
    rows = out_h if image.device.type != "cpu" else max(8, SSIM_BAND_ELEMENTS // (b * c * w))
    total = torch.zeros(b, dtype=torch.float64, device=image.device)
    for top in range(0, out_h, rows):
        stop = min(out_h, top + rows)
        # Centred at 0.5 (the variances are shift-invariant): less cancellation in float32.
        x = image[..., top : stop + k - 1, :] - 0.5
        y = reference[..., top : stop + k - 1, :] - 0.5
        mu_x, mu_y, xx, yy, xy = _blur_valid(torch.stack((x, y, x * x, y * y, x * y)), taps)
        var_x = xx.sub_(mu_x * mu_x).clamp_(min=0.0)
        var_y = yy.sub_(mu_y * mu_y).clamp_(min=0.0)
        upper = xy.sub_(mu_x * mu_y).mul_(2).add_(c2)
        mu_x, mu_y = mu_x.add_(0.5), mu_y.add_(0.5)
        mu_xx, mu_yy, mu_xy = mu_x * mu_x, mu_y * mu_y, mu_x * mu_y
        lower = var_x.add_(var_y).add_(c2)
        numerator = mu_xy.mul_(2).add_(c1).mul_(upper)
        denominator = mu_xx.add_(mu_yy).add_(c1).mul_(lower)
        total += numerator.div_(denominator).sum((1, 2, 3), dtype=torch.float64)
    return (total / (c * out_h * (w - k + 1))).float()


def ssim(image: torch.Tensor, context: MetricContext) -> torch.Tensor:
    reference = conversions(image, context).reference()
    pad = (SSIM_TAPS - 1) // 2
    if min(image.shape[-2:]) <= 2 * pad:
        raise MetricUnavailable(f"ssim needs both sides > {2 * pad} px")
    # torchmetrics >= 1.x averages the reflect-padded map; the valid part is the classic SSIM.
    return ssim_valid(image.float(), reference)


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
