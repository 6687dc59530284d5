"""The registry: one `MetricRegistry`, `METRICS`, for every metric pid-bench computes, built-in,
pyiqa pass-through (``pyiqa:<name>``) or custom (``module.path:callable``); name lookup with
aliases and "did you mean"; `weight_status`, `describe`, `load_model`, `clear_caches`.

When it is frozen: at the end of this module's import. Importing it registers the built-in
metrics (catalog's declarations, each paired with its function below) and freezes the registry;
from then on `register` (and item assignment) raises `RegistryFrozenError`, so no metric appears,
disappears or changes under a run whose schema and report were built from the list.

After the freeze, names of the two open families enter through one door, `register_named_metric`
(`get_metric` and everything that validates a name call it): ``pyiqa:<name>`` is checked against
pyiqa's table, ``module.path:callable`` is imported from sys.path and the folders
`custom.add_search_path` added (the suite's folder and the working directory: `load_suite` in
the driver, each Ray worker at its start). Each name is resolved
once and kept; a name that fails to resolve is not kept (its module may become importable once
a search path is added), and no built-in name can be shadowed.

This module imports the implementation modules; none of them imports it.
"""

from __future__ import annotations

import difflib
import threading
from collections.abc import Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import Any

from pid_bench.metrics.base import Metric, MetricFn
from pid_bench.metrics.catalog import (
    BUILTIN_SPECS,
    KINDS,
    METRIC_ALIASES,
    PYIQA_MODELS,
    PyiqaModel,
)
from pid_bench.metrics.custom import is_custom_name, load_custom_metric
from pid_bench.metrics.errors import RegistryFrozenError
from pid_bench.metrics.failure_modes import (
    seam_score,
    speck_rate,
    speck_rate_skin,
    speck_ratio_bicubic,
)
from pid_bench.metrics.full_reference import ms_ssim, psnr, ssim
from pid_bench.metrics.pid_specific import hf_energy_ratio, latent_consistency, lq_color_de2000
from pid_bench.metrics.pyiqa_backed import clear_cache as clear_pyiqa_cache
from pid_bench.metrics.pyiqa_backed import load_pyiqa_model, pyiqa_fn, pyiqa_passthrough
from pid_bench.metrics.set_level import clear_cache as clear_inception_cache
from pid_bench.metrics.set_level import not_per_image
from pid_bench.metrics.shared import forget_warnings
from pid_bench.metrics.twin import (
    midtone_chroma_shift,
    shadow_green_bias,
    twin_lpips,
    twin_pass,
    twin_psnr,
    twin_ssim,
)
from pid_bench.metrics.weights import WeightStatus, files_status


class MetricRegistry(Mapping[str, Metric]):
    """Metrics by name: registered ones (the built-ins) and resolved named ones (pyiqa pass-through
    and custom), plus aliases that stand for several registered metrics.

    As a mapping it holds the registered metrics only, in registration order (the order of the
    row's ``metric_<name>`` columns); `lookup` answers for any name.
    """

    def __init__(self, aliases: Mapping[str, tuple[str, ...]] | None = None) -> None:
        self._registered: dict[str, Metric] = {}
        self._named: dict[str, Metric] = {}
        self._aliases: dict[str, tuple[str, ...]] = dict(aliases or {})
        self._frozen = False
        # Only the named table changes after the freeze; two threads resolving one name must
        # end up with one Metric object.
        self._lock = threading.Lock()

    # ---- the mapping: registered metrics ------------------------------------------------------

    def __getitem__(self, name: str) -> Metric:
        return self._registered[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._registered)

    def __len__(self) -> int:
        return len(self._registered)

    def __setitem__(self, name: str, metric: Metric) -> None:
        if name != metric.name:
            raise ValueError(f"metric {metric.name!r} registered as {name!r}")
        self.register(metric)

    def __delitem__(self, name: str) -> None:
        raise RegistryFrozenError(f"metric {name!r}: metrics are never removed from the registry")

    def __repr__(self) -> str:
        state = "frozen" if self._frozen else "open"
        return f"<MetricRegistry {state}: {', '.join(self._registered)}>"

    # ---- registering --------------------------------------------------------------------------

    @property
    def frozen(self) -> bool:
        return self._frozen

    @property
    def aliases(self) -> Mapping[str, tuple[str, ...]]:
        return MappingProxyType(self._aliases)

    def register(self, metric: Metric) -> Metric:
        """Add `metric` under its name; only before `freeze` (RegistryFrozenError after)."""
        if self._frozen:
            raise RegistryFrozenError(
                f"cannot register metric {metric.name!r}: the metric registry is frozen (at the "
                "import of pid_bench.metrics.registry). Custom metrics are named "
                "'module.path:callable' in a suite or passed to register_named_metric()."
            )
        if metric.kind not in KINDS:
            raise ValueError(f"metric {metric.name!r}: kind {metric.kind!r} is not one of {KINDS}")
        if metric.name in self._registered or metric.name in self._aliases:
            raise ValueError(f"metric {metric.name!r} is already registered")
        self._registered[metric.name] = metric
        return metric

    def freeze(self) -> None:
        """No more `register`; named metrics still enter through `register_named`."""
        self._frozen = True

    def register_named(self, name: str) -> Metric:
        """The metric a ``pyiqa:<name>`` or ``module.path:callable`` name stands for, resolved on
        the first call and kept (the same object every time); KeyError naming what is wrong."""
        with self._lock:
            if name in self._named:
                return self._named[name]
        if name.startswith("pyiqa:"):
            metric = pyiqa_passthrough(name)
        elif is_custom_name(name):
            metric = load_custom_metric(name)  # imports: not under the lock
        else:
            raise KeyError(f"{name!r} is neither pyiqa:<name> nor module.path:callable")
        with self._lock:
            return self._named.setdefault(name, metric)

    def named(self) -> Mapping[str, Metric]:
        """The pass-through and custom metrics resolved so far."""
        with self._lock:
            return MappingProxyType(dict(self._named))

    def with_metrics(self, *metrics: Metric) -> MetricRegistry:
        """A new frozen registry: this one's metrics, aliases and resolved names plus `metrics`
        (tests swap it in for a stand-in metric; this registry stays as it is)."""
        out = MetricRegistry(self._aliases)
        for metric in [*self._registered.values(), *metrics]:
            out.register(metric)
        out._named = dict(self.named())
        out.freeze()
        return out

    # ---- lookup -------------------------------------------------------------------------------

    def lookup(self, name: str) -> Metric:
        """A registered metric, or a named one (`register_named`); KeyError with "did you mean"
        for an unknown name. Aliases are not metrics: `expand` them first."""
        if name in self._registered:
            return self._registered[name]
        if name.startswith("pyiqa:") or is_custom_name(name):
            return self.register_named(name)
        known = [*sorted(self._registered), *sorted(self._aliases)]
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise KeyError(f"unknown metric {name!r}; {hint}known: {', '.join(known)}, or pyiqa:<name>")

    def expand(self, names: Iterable[str]) -> list[str]:
        """Aliases expanded, order kept, duplicates dropped; KeyError for an unknown name."""
        out: list[str] = []
        for name in names:
            for each in self._aliases.get(name, (name,)):
                self.lookup(each)
                if each not in out:
                    out.append(each)
        return out


# ---- the built-in metrics ---------------------------------------------------------------------


def _pyiqa(name: str) -> MetricFn:
    return pyiqa_fn(name, PYIQA_MODELS[name], BUILTIN_SPECS[name].kind == "full_reference")


#: name -> the function computing it; catalog declares the rest.
_FUNCTIONS: dict[str, MetricFn] = {
    "psnr": psnr,
    "ssim": ssim,
    "ms_ssim": ms_ssim,
    **{name: _pyiqa(name) for name in PYIQA_MODELS},
    "fid": not_per_image,
    "kid": not_per_image,
    "latent_consistency_mse": latent_consistency,
    "latent_consistency_cos": latent_consistency,
    "lq_color_de2000": lq_color_de2000,
    "hf_energy_ratio": hf_energy_ratio,
    "twin_psnr": twin_psnr,
    "twin_ssim": twin_ssim,
    "twin_pass": twin_pass,
    "twin_lpips": twin_lpips,
    "midtone_chroma_shift": midtone_chroma_shift,
    "shadow_green_bias": shadow_green_bias,
    "speck_rate": speck_rate,
    "speck_rate_skin": speck_rate_skin,
    "speck_ratio_bicubic": speck_ratio_bicubic,
    "seam_score": seam_score,
}


def _builtin_registry() -> MetricRegistry:
    if set(_FUNCTIONS) != set(BUILTIN_SPECS):
        raise AssertionError(f"declared vs computed: {set(_FUNCTIONS) ^ set(BUILTIN_SPECS)}")
    registry = MetricRegistry(METRIC_ALIASES)
    for name, spec in BUILTIN_SPECS.items():  # the catalog's order: the schema's column order
        registry.register(Metric.from_spec(spec, _FUNCTIONS[name]))
    registry.freeze()
    return registry


#: The registry of this process (built-ins registered, frozen).
METRICS: MetricRegistry = _builtin_registry()


# ---- the functions the rest of pid-bench calls ------------------------------------------------
# They read the module's METRICS at each call, so a test may swap in `METRICS.with_metrics(...)`.


def get_metric(name: str) -> Metric:
    """A registered metric, ``pyiqa:<name>`` for any `pyiqa.list_models()` name, or a custom
    ``module.path:callable``; KeyError (with "did you mean") for an unknown name."""
    return METRICS.lookup(name)


def register_named_metric(name: str) -> Metric:
    """Resolve and keep a ``pyiqa:<name>`` or custom ``module.path:callable`` metric: the one way
    a metric enters the frozen registry (`get_metric` calls it for such names)."""
    return METRICS.register_named(name)


def expand_metric_names(names: Iterable[str]) -> list[str]:
    """Aliases expanded, order kept, duplicates dropped; raises KeyError for an unknown name."""
    return METRICS.expand(names)


def is_set_level(name: str) -> bool:
    """A registered set-level metric (fid, kid): one value per set of images, never per row."""
    return name in METRICS and METRICS[name].kind == "set_level"


def is_known_metric(name: str) -> bool:
    """A metric or alias `get_metric` / `expand_metric_names` accepts (custom ones importable)."""
    try:
        expand_metric_names([name])
    except KeyError:
        return False
    return True


def weight_status(name: str) -> WeightStatus:
    """Which files metric `name` needs and whether each is on this machine (no pyiqa import)."""
    metric = get_metric(name)
    if metric.name.startswith("pyiqa:") and not metric.weights:
        hint = (
            f"pyiqa names the files of {metric.pyiqa_name!r} when it creates the metric; a "
            "missing one is reported as 'weights missing: <path>' at run time. Fetch them once "
            f"with network access: python -c \"import pyiqa; pyiqa.create_metric('"
            f"{metric.pyiqa_name}', device='cpu')\""
        )
        return WeightStatus("unknown", (), (), hint)
    return files_status(metric.weights)


def load_model(name: str, device: Any = "cpu") -> Any:
    """The pyiqa network behind metric `name` on `device` (str or torch.device), created once
    per (name, device). Raises `MetricUnavailable` naming the exact path of a missing file."""
    metric = get_metric(name)
    if metric.pyiqa_name is None:
        raise KeyError(f"{name!r} is not a pyiqa metric")
    declared = PYIQA_MODELS.get(metric.name)
    model = PyiqaModel(metric.pyiqa_name, declared.options if declared else {}, metric.weights)
    return load_pyiqa_model(metric.name, model, device)


def clear_caches() -> None:
    """Forget created models and issued warnings (tests; a changed TORCH_HOME)."""
    clear_pyiqa_cache()
    clear_inception_cache()
    forget_warnings()


def describe(names: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """One dict per metric (name, kind, higher_is_better, backend, weight files, doc)."""
    out = []
    for name in names if names is not None else METRICS:
        m = get_metric(name)
        out.append(
            {
                "name": m.name,
                "kind": m.kind,
                "higher_is_better": m.higher_is_better,
                "backend": m.backend,
                "weights": [w.filename for w in m.weights],
                "doc": m.doc,
            }
        )
    return out
