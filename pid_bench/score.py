"""Score image files with the registry's metrics: the compute path the runner uses, on files.

`score_images` reads PNG/JPEG (any format PIL opens) with `pid_bench.manifests.load_image`,
maps [-1, 1] to [0, 1] with `to_unit_range`, and calls `pid_bench.metrics.measure` per image, so
a value here is the value a run would record for the same pixels. `score_sets` gives the
set-level metrics (fid, kid) of two lists of files.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pid_bench.metrics import (
    MetricContext,
    SetResult,
    compute_set_metrics,
    expand_metric_names,
    get_metric,
    measure,
    protocol_fields,
    to_unit_range,
)

PathLike = str | Path


@dataclass
class ScoreResult:
    """values: {image: {metric: value or None}}; reasons: {image: {metric: why None}}."""

    values: dict[str, dict[str, float | None]]
    reasons: dict[str, dict[str, str]]
    reference: str | None = None
    protocol: dict[str, Any] = field(default_factory=protocol_fields)

    def __getitem__(self, image: str) -> dict[str, float | None]:
        return self.values[image]

    def to_json(self) -> str:
        return json.dumps(
            {
                "reference": self.reference,
                "protocol": self.protocol,
                "values": self.values,
                "reasons": self.reasons,
            },
            indent=2,
            allow_nan=True,
        )


def _read(path: PathLike, device: torch.device) -> torch.Tensor:
    from pid_bench.manifests import load_image

    return to_unit_range(load_image(path))[None].to(device)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def score_images(
    images: Sequence[PathLike],
    metrics: Sequence[str],
    reference: PathLike | None = None,
    *,
    device: str | torch.device | None = None,
    scale: int | None = None,
) -> ScoreResult:
    """Every per-image metric of `metrics` on each of `images` (against `reference`, if given).

    Keys are the image paths as given (str). A metric that cannot run (no reference, weights
    missing, sizes differ, set-level) is None with its reason in `reasons`. `scale` (PiD's
    upscale factor) is what hf_energy_ratio needs. A file that cannot be read raises
    `pid_bench.manifests.ManifestError` naming it.
    """
    names = expand_metric_names(metrics)
    dev = torch.device(device or default_device())
    ref = _read(reference, dev) if reference is not None else None
    context = MetricContext(reference=ref, scale=scale)
    values: dict[str, dict[str, float | None]] = {}
    reasons: dict[str, dict[str, str]] = {}
    for path in images:
        image = _read(path, dev)
        result = measure(names, image, context)
        values[str(path)] = result.values
        reasons[str(path)] = result.reasons
    return ScoreResult(values, reasons, str(reference) if reference is not None else None)


def _lazy(paths: Sequence[PathLike], device: torch.device) -> Iterator[torch.Tensor]:
    for path in paths:
        yield _read(path, device)


def score_sets(
    images: Sequence[PathLike],
    references: Sequence[PathLike],
    metrics: Sequence[str] = ("fid", "kid"),
    *,
    device: str | torch.device | None = None,
    **options: Any,
) -> dict[str, SetResult]:
    """Set-level metrics of `images` against `references` (files read one at a time).

    `options` go to `pid_bench.metrics.compute_set_metrics` (patch, crop_size, seed, ...).
    """
    names = expand_metric_names(metrics)
    wrong = [n for n in names if get_metric(n).kind != "set_level"]
    if wrong:
        raise KeyError(f"not set-level metrics: {wrong}")
    dev = torch.device(device or default_device())
    return compute_set_metrics(
        names, _lazy(images, dev), _lazy(references, dev), device=dev, **options
    )
