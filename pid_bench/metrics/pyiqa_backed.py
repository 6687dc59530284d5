"""pyiqa-backed metrics, full-reference (lpips, dists) and no-reference (niqe, musiq, clipiqa,
maniqa, topiq_nr, any ``pyiqa:<name>``): creating their networks from local files only, and the
pass-through. The networks are declared in catalog (`PYIQA_MODELS`); nothing here looks a metric
up by name, so the registry can import this module without it importing the registry."""

from __future__ import annotations

import difflib
import importlib.util
import warnings
from pathlib import Path
from typing import Any

import torch

from pid_bench.metrics.base import Metric, MetricContext, MetricFn, needs_reference
from pid_bench.metrics.catalog import PYIQA_MODELS, PyiqaModel
from pid_bench.metrics.shared import MODEL_LOCK, offline_weights, set_hf_offline
from pid_bench.metrics.weights import require_weights

# ---- pyiqa-backed metrics ---------------------------------------------------------------------

#: (metric name, device) -> the created pyiqa network; guarded by MODEL_LOCK.
_models: dict[tuple[str, str], Any] = {}


def clear_cache() -> None:
    """Forget every created network (a changed TORCH_HOME, tests)."""
    with MODEL_LOCK:
        _models.clear()


def load_pyiqa_model(name: str, model: PyiqaModel, device: str | torch.device = "cpu") -> Any:
    """The pyiqa network `model` of metric `name` on `device`, created once per (name, device).

    Raises `MetricUnavailable` naming the exact path of a missing weight file.
    """
    device = torch.device(device)
    key = (name, str(device))
    with MODEL_LOCK:
        if key in _models:
            return _models[key]
        files = require_weights(model.weights)
        options = dict(model.options)
        pyiqa_dir = next(
            (files[w.filename].parent for w in model.weights if w.loader == "pyiqa"), None
        )
        clip = next((files[w.filename] for w in model.weights if w.loader == "clip"), None)
        if clip is not None:
            options["backbone"] = str(clip)
        set_hf_offline()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pyiqa's and timm's deprecation noise
            import pyiqa

        with offline_weights(pyiqa_dir, force_timm_random=model.pyiqa_name == "maniqa"):
            network = pyiqa.create_metric(model.pyiqa_name, device=device, **options)
        network.eval()
        _models[key] = network
        return network


def pyiqa_fn(name: str, model: PyiqaModel, full_reference: bool) -> MetricFn:
    """``fn(image, context) -> [B]`` scoring with network `model`, cached under metric `name`."""

    def fn(image: torch.Tensor, context: MetricContext) -> torch.Tensor:
        reference = needs_reference(image, context) if full_reference else None
        network = load_pyiqa_model(name, model, image.device)
        with torch.no_grad():
            x = image.float().clamp(0, 1)
            out = network(x, reference.clamp(0, 1)) if full_reference else network(x)
        return out.float().reshape(image.shape[0])

    return fn


# ---- pyiqa pass-through ------------------------------------------------------------------------

_pyiqa_configs: dict[str, dict] | None = None


def pyiqa_models() -> dict[str, dict]:
    """pyiqa's DEFAULT_CONFIGS (the table `pyiqa.list_models()` lists), read without importing
    pyiqa (which takes seconds); {} when pyiqa is not installed."""
    global _pyiqa_configs
    if _pyiqa_configs is None:
        spec = importlib.util.find_spec("pyiqa")
        if spec is None or not spec.submodule_search_locations:
            return {}
        path = Path(next(iter(spec.submodule_search_locations))) / "default_model_configs.py"
        # That one module alone, imported from its file: pyiqa/__init__ is not run.
        module_spec = importlib.util.spec_from_file_location("_pyiqa_default_configs", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        _pyiqa_configs = dict(module.DEFAULT_CONFIGS)
    return _pyiqa_configs


def pyiqa_passthrough(name: str) -> Metric:
    """The metric ``pyiqa:<name>`` stands for, validated against `pyiqa_models`; KeyError naming
    what is wrong. Not cached here: the registry keeps what it resolves."""
    pyiqa_name = name.split(":", 1)[1]
    configs = pyiqa_models()
    if pyiqa_name not in configs:
        close = difflib.get_close_matches(pyiqa_name, configs, n=1)
        hint = f"did you mean 'pyiqa:{close[0]}'? " if close else ""
        raise KeyError(
            f"unknown pyiqa metric {pyiqa_name!r} in {name!r}; {hint}pyiqa.list_models() has "
            f"{len(configs)}: {', '.join(sorted(configs))}"
        )
    config = configs[pyiqa_name]
    if "fid" in pyiqa_name or pyiqa_name == "inception_score":
        raise KeyError(f"{name!r} is set-level in pyiqa: use fid / kid")
    mode = config.get("metric_mode")
    if mode not in ("FR", "NR"):
        raise KeyError(f"{name!r}: pyiqa metric_mode {mode!r} is neither FR nor NR")
    declared = PYIQA_MODELS.get(pyiqa_name)
    # pyiqa's defaults: the declared files only where the declaration adds no options (with
    # options, e.g. topiq_nr's, the default network reads other files).
    weights = declared.weights if declared and not declared.options else ()
    model = PyiqaModel(pyiqa_name, {}, weights)
    return Metric(
        name,
        "full_reference" if mode == "FR" else "no_reference",
        not config.get("lower_better", False),
        pyiqa_fn(name, model, mode == "FR"),
        f"pyiqa {pyiqa_name!r} with its default options (metric_opts {config['metric_opts']}); "
        f"score range {config.get('score_range')}",
        weights=weights,
        backend="pyiqa",
        pyiqa_name=pyiqa_name,
    )
