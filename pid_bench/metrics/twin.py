"""The VAE-twin check and colour QA (kind ``latent``): the decode brought down to the native
decode's size and compared with it. PiD should keep the latent's content and colours; where it
does not (noisy latents, outputs beyond the trained size), midtones drift pink and shadows green.
"""

from __future__ import annotations

import torch

from pid_bench.metrics.base import MetricContext, conversions
from pid_bench.metrics.catalog import (
    MIDTONE_L,
    PYIQA_MODELS,
    SHADOW_L_MAX,
    TWIN_PSNR_MIN,
    TWIN_SSIM_MIN,
)
from pid_bench.metrics.errors import MetricUnavailable
from pid_bench.metrics.full_reference import psnr, ssim
from pid_bench.metrics.pid_specific import srgb_to_lab
from pid_bench.metrics.pyiqa_backed import pyiqa_fn

# The acceptance bar (TWIN_*) and the L* bands are in catalog: the metrics' definitions quote them.

#: QA thresholds the report flags (not calibrated on released models; documented heuristics):
#: a chromatic shift of 6 (about 2.5 just-noticeable differences) and a green shift of 3.
MIDTONE_CHROMA_SHIFT_MAX = 6.0
SHADOW_GREEN_BIAS_MAX = 3.0


def twin_pair(image: torch.Tensor, context: MetricContext) -> tuple[torch.Tensor, torch.Tensor]:
    """(decode downsampled to the native size, native decode), both in [0, 1] (made once per
    `measure` call: `Conversions.down` / `native`)."""
    shared = conversions(image, context)
    native = shared.native()
    if tuple(image.shape[-2:]) == tuple(native.shape[-2:]):
        raise MetricUnavailable("scored at the native size: the native decode is its own twin")
    return shared.down(), native


def twin_psnr(image: torch.Tensor, context: MetricContext) -> torch.Tensor:
    def compute() -> torch.Tensor:
        down, native = twin_pair(image, context)
        return psnr(down, MetricContext(reference=native))

    return conversions(image, context).get(("value", "twin_psnr"), compute)


def twin_ssim(image: torch.Tensor, context: MetricContext) -> torch.Tensor:
    def compute() -> torch.Tensor:
        down, native = twin_pair(image, context)
        return ssim(down, MetricContext(reference=native))

    return conversions(image, context).get(("value", "twin_ssim"), compute)


def twin_pass(image: torch.Tensor, context: MetricContext) -> torch.Tensor:
    psnr, ssim = twin_psnr(image, context), twin_ssim(image, context)
    return ((psnr >= TWIN_PSNR_MIN) & (ssim >= TWIN_SSIM_MIN)).double()


# The same network (and model cache entry) as the lpips metric.
_lpips = pyiqa_fn("lpips", PYIQA_MODELS["lpips"], full_reference=True)


def twin_lpips(image: torch.Tensor, context: MetricContext) -> torch.Tensor:
    down, native = twin_pair(image, context)
    return _lpips(down, MetricContext(reference=native))


def _lab_pair(image: torch.Tensor, context: MetricContext):
    twin_pair(image, context)  # its checks
    shared = conversions(image, context)
    return shared.lab("down", srgb_to_lab), shared.lab("native", srgb_to_lab)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor, what: str) -> torch.Tensor:
    counts = mask.flatten(1).sum(1)
    if bool((counts == 0).any()):
        raise MetricUnavailable(f"no {what} pixels in the native decode")
    return (values * mask).flatten(1).sum(1) / counts


def midtone_chroma_shift(image: torch.Tensor, context: MetricContext) -> torch.Tensor:
    lab, lab_native = _lab_pair(image, context)
    light = lab_native[:, 0]
    mask = ((light >= MIDTONE_L[0]) & (light <= MIDTONE_L[1])).double()
    shift = (lab[:, 1:] - lab_native[:, 1:]).pow(2).sum(1).sqrt()
    return _masked_mean(shift, mask, f"midtone (L* {MIDTONE_L[0]:g}-{MIDTONE_L[1]:g})")


def shadow_green_bias(image: torch.Tensor, context: MetricContext) -> torch.Tensor:
    lab, lab_native = _lab_pair(image, context)
    mask = (lab_native[:, 0] < SHADOW_L_MAX).double()
    greener = lab_native[:, 1] - lab[:, 1]  # a* < 0 is green: positive = greener than native
    return _masked_mean(greener, mask, f"shadow (L* < {SHADOW_L_MAX:g})")
