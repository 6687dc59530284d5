"""Custom metrics: a suite names ``module.path:callable`` and pid-bench imports it.

The named object is either a `Metric` (used as it is, renamed to the suite's name) or a
function ``fn(image, context) -> [B] tensor or float`` with ``image`` ``[B, 3, H, W]`` in
[0, 1] and ``context`` a `MetricContext` (reference, native decode, codec, clean latent, PiD's
scale); it may raise `MetricUnavailable(reason)` to leave its value null with that reason.
Optional attributes on the function: ``kind`` (``no_reference`` by default, or
``full_reference``: it then gets the reference at the scored size, or a withheld reason) and
``higher_is_better`` (True, False or None). The module is imported from sys.path (a package
you installed), the suite's folder or the directory `pid-bench` runs in (`add_search_path`;
the workers get the same folders); its values land in the row's
``extra_metrics`` and in the report like any other metric. This is how the paper's VLM scorers
(DeQA-Score, UniPercept, VisualQuality-R1), which pyiqa lacks, plug in without editing
pid-bench.
"""

from __future__ import annotations

import dataclasses
import re
import sys

import torch

from pid_bench.metrics.base import Metric, MetricContext, MetricFn, needs_reference
from pid_bench.metrics.catalog import KINDS
from pid_bench.paths import import_named

#: ``module.path:callable``, e.g. ``my_scorers.deqa:score``.
CUSTOM_PATTERN = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def add_search_path(folder: str) -> None:
    """Let custom metric modules import from `folder` (like lm-eval's --include_path).

    Call it before the metric is first named: the registry imports a custom metric once and
    keeps it; a name that failed to import is tried again on its next lookup."""
    if folder not in sys.path:
        sys.path.append(folder)


def is_custom_name(name: str) -> bool:
    """``module.path:callable`` (and not ``pyiqa:<name>``)."""
    return bool(CUSTOM_PATTERN.fullmatch(name)) and not name.startswith("pyiqa:")


def load_custom_metric(name: str) -> Metric:
    """The metric a ``module.path:callable`` name stands for, imported now; KeyError naming what
    is wrong. Not cached here: the registry keeps what it resolves (`register_named_metric`)."""
    target, why = import_named(name)
    if why is not None:
        raise KeyError(
            f"custom metric {name!r}: {why}; "
            "install the module or run pid-bench where it is importable"
        )
    if isinstance(target, Metric):
        metric = dataclasses.replace(target, name=name)
    elif callable(target):
        kind = getattr(target, "kind", "no_reference")
        if kind not in KINDS or kind == "set_level":
            raise KeyError(f"custom metric {name!r}: kind {kind!r} is not a per-image kind")
        metric = Metric(
            name,
            kind,
            getattr(target, "higher_is_better", None),
            _wrap(target, kind == "full_reference"),
            (target.__doc__ or "").strip() or f"custom metric {name}",
            backend="custom",
        )
    else:
        raise KeyError(f"custom metric {name!r}: {type(target).__name__} is not callable")
    return metric


def _wrap(fn, full_reference: bool) -> MetricFn:
    def evaluate(image: torch.Tensor, context: MetricContext) -> torch.Tensor:
        if full_reference:
            needs_reference(image, context)  # withheld or absent reference: its reason
        out = fn(image, context)
        return torch.as_tensor(out, dtype=torch.float64).reshape(image.shape[0])

    return evaluate
