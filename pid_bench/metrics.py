"""Metrics: one small interface and one registry.

Each metric declares its name, kind, whether higher is better, and a compute call on batched
tensors in [0, 1] (RGB, float32) on the cell's device. Full-reference metrics compare the decode
with the reference at the output size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

Kind = Literal["full_reference", "no_reference"]


@dataclass(frozen=True)
class Metric:
    name: str
    kind: Kind
    higher_is_better: bool
    compute: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]  # -> [B]
    doc: str


def _psnr(image: torch.Tensor, reference: torch.Tensor | None) -> torch.Tensor:
    from torchmetrics.functional.image import peak_signal_noise_ratio

    return torch.stack(
        [
            peak_signal_noise_ratio(i[None], r[None], data_range=1.0)
            for i, r in zip(image, reference, strict=True)
        ]
    )


def _ssim(image: torch.Tensor, reference: torch.Tensor | None) -> torch.Tensor:
    from torchmetrics.functional.image import structural_similarity_index_measure

    return structural_similarity_index_measure(
        image, reference, data_range=1.0, reduction="none"
    ).reshape(-1)


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("psnr", "full_reference", True, _psnr, "PSNR in dB, data range 1 (torchmetrics)"),
        Metric(
            "ssim", "full_reference", True, _ssim, "SSIM, Gaussian 11x11, sigma 1.5 (torchmetrics)"
        ),
    )
}


def get_metric(name: str) -> Metric:
    try:
        return METRICS[name]
    except KeyError:
        raise KeyError(f"unknown metric {name!r}; known: {', '.join(sorted(METRICS))}") from None


def to_unit_range(image: torch.Tensor) -> torch.Tensor:
    """[-1, 1] decoder output -> [0, 1], clamped: what every metric sees."""
    return ((image.float() + 1) / 2).clamp(0, 1)
