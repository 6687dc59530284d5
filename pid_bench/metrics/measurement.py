"""`measure`: the one call the cell and `pid-bench score` make, every metric of a list on one
image, never raising for a metric (a null with its reason instead)."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from pid_bench.metrics.base import MetricContext, sharing
from pid_bench.metrics.errors import MetricUnavailable
from pid_bench.metrics.registry import expand_metric_names, get_metric
from pid_bench.metrics.shared import warn_once


@dataclass
class Measurement:
    """Values (None where not computed), the reason for each None, and the milliseconds each
    metric took (a group's shared computation counts for its first member)."""

    values: dict[str, float | None]
    reasons: dict[str, str]
    milliseconds: dict[str, float] = field(default_factory=dict)

    def columns(self, prefix: str = "metric_") -> dict[str, float | None]:
        return {f"{prefix}{name}": value for name, value in self.values.items()}


def measure(
    names: Iterable[str], image: torch.Tensor, context: MetricContext | None = None
) -> Measurement:
    """Every metric of `names` on one image ``[1, 3, H, W]`` in [0, 1]; never raises for a metric.

    A metric that cannot run (weights missing, input absent, set-level, its own error) is None
    with a reason; missing weights and failures also warn, once per metric per process. Metrics
    of one group (latent consistency) share one computation, and all of them share one
    `Conversions` of the image (its resize to the native size, LAB...). NaN becomes None
    ("not finite").
    """
    if image.dim() != 4 or image.shape[0] != 1:
        raise ValueError(f"measure takes one image [1, 3, H, W], got {tuple(image.shape)}")
    context = context or MetricContext()
    values: dict[str, float | None] = {}
    reasons: dict[str, str] = {}
    shared: dict[str, dict[str, torch.Tensor] | Exception] = {}
    milliseconds: dict[str, float] = {}
    with sharing(image, context):
        for name in expand_metric_names(names):
            metric = get_metric(name)
            started = time.perf_counter()
            try:
                if metric.group is not None and metric.kind != "set_level":
                    if metric.group not in shared:
                        try:
                            shared[metric.group] = metric.fn(image, context)
                        except Exception as exc:
                            shared[metric.group] = exc
                    result = shared[metric.group]
                    if isinstance(result, Exception):
                        raise result
                    value = float(result[name].reshape(-1)[0])
                else:
                    value = float(metric.evaluate(image, context)[0])
            except MetricUnavailable as exc:
                values[name], reasons[name] = None, exc.reason
            except Exception as exc:  # a metric's own failure leaves it null, not the row
                values[name], reasons[name] = None, f"failed: {type(exc).__name__}: {exc}"[:500]
            else:
                if math.isnan(value):
                    values[name], reasons[name] = None, "not finite (nan)"
                else:
                    values[name] = value
            milliseconds[name] = (time.perf_counter() - started) * 1000
            if name in reasons and reasons[name].startswith(("weights missing", "failed")):
                warn_once(name, reasons[name])  # absent inputs (no reference...) are no news
    return Measurement(values, reasons, milliseconds)
