"""pyiqa-backed metrics, full-reference (lpips, dists) and no-reference (niqe, musiq, clipiqa,
maniqa, topiq_nr, any ``pyiqa:<name>``): their weight files, loading from local files only and the
pass-through."""

from __future__ import annotations

import contextlib
import os
import threading
import warnings
from pathlib import Path
from typing import Any

import torch

from pid_bench.metrics.base import (
    _CLIP_RN50,
    Metric,
    MetricContext,
    MetricFn,
    MetricUnavailable,
    WeightFile,
    _needs_reference,
    _pyiqa_file,
    _require_weights,
    _torchvision_file,
)
from pid_bench.paths import hf_cache_dir, torch_hub_dir

# ---- pyiqa-backed metrics ---------------------------------------------------------------------

#: registry name -> (pyiqa name, extra create_metric options, weight files). The file names are
#: pyiqa 0.1.16's (tests check them against pyiqa's `default_model_urls`).
_PYIQA_SPECS: dict[str, tuple[str, dict[str, Any], tuple[WeightFile, ...]]] = {
    "lpips": (
        "lpips",
        {},
        (
            _pyiqa_file("LPIPS_v0.1_alex-df73285e.pth"),
            _torchvision_file("alexnet-owt-7be5be79.pth"),
        ),
    ),
    "dists": (
        "dists",
        {},
        (_pyiqa_file("DISTS_weights-f5e65c96.pth"), _torchvision_file("vgg16-397923af.pth")),
    ),
    "niqe": ("niqe", {}, (_pyiqa_file("niqe_modelparameters.mat"),)),
    "musiq": ("musiq", {}, (_pyiqa_file("musiq_koniq_ckpt-e95806b9.pth"),)),
    # CLIP RN50 is handed to pyiqa as a file path (no SHA check, no download attempt).
    "clipiqa": ("clipiqa", {}, (_CLIP_RN50,)),
    # The checkpoint is loaded strict over the whole net, ViT included: the ImageNet ViT that
    # pyiqa asks timm (HF hub) for would be overwritten, so it is built without it.
    "maniqa": ("maniqa", {}, (_pyiqa_file("ckpt_koniq10k.pt"),)),
    # Same: CFANet's checkpoint is strict over the ResNet-50 backbone too.
    "topiq_nr": (
        "topiq_nr",
        {"backbone_pretrain": False},
        (_pyiqa_file("cfanet_nr_koniq_res50-9a73138b.pth"),),
    ),
}

_pyiqa_models: dict[tuple[str, str], Any] = {}
_pyiqa_lock = threading.RLock()


class _DownloadBlocked(Exception):
    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path


def set_hf_offline() -> None:
    """HF_HUB_OFFLINE=1 for this process (also in an already imported huggingface_hub)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        from huggingface_hub import constants

        constants.HF_HUB_OFFLINE = True
    except Exception:  # huggingface_hub absent: nothing to tell
        pass


@contextlib.contextmanager
def offline_weights(pyiqa_dir: Path | None = None, force_timm_random: bool = False):
    """While pyiqa builds a network: read weights from local files only.

    pyiqa's download folder (frozen at its import) is pointed at `pyiqa_dir` (default: the hub's
    pyiqa folder as the environment says now); pyiqa's, torch.hub's and CLIP's downloaders raise
    instead of fetching; HF is offline. `force_timm_random` builds timm backbones without their
    pretrained weights (for checkpoints that overwrite them).
    """
    import sys
    from unittest import mock

    set_hf_offline()
    target = str(pyiqa_dir or torch_hub_dir() / "pyiqa")

    def blocked(url, dst, *args, **kwargs):
        raise _DownloadBlocked(str(dst))

    def clip_local(url: str, root: str) -> str:
        path = os.path.join(root, os.path.basename(url))
        if not os.path.isfile(path):
            raise _DownloadBlocked(path)
        return path

    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch("torch.hub.download_url_to_file", blocked))
        download_util = sys.modules.get("pyiqa.utils.download_util")
        if download_util is not None:
            old = download_util.DEFAULT_CACHE_DIR
            for module in [m for k, m in list(sys.modules.items()) if k.startswith("pyiqa")]:
                if getattr(module, "DEFAULT_CACHE_DIR", None) == old:
                    stack.enter_context(mock.patch.object(module, "DEFAULT_CACHE_DIR", target))
            stack.enter_context(mock.patch.object(download_util, "download_url_to_file", blocked))
        clip_model = sys.modules.get("pyiqa.archs.clip_model")
        if clip_model is not None:
            stack.enter_context(mock.patch.object(clip_model, "_download", clip_local))
        if force_timm_random:
            import timm

            create = timm.create_model

            def create_random(*args, **kwargs):
                kwargs["pretrained"] = False
                return create(*args, **kwargs)

            stack.enter_context(mock.patch.object(timm, "create_model", create_random))
        try:
            yield
        except _DownloadBlocked as exc:
            raise MetricUnavailable(f"weights missing: {exc.path}") from None
        except Exception as exc:
            if type(exc).__name__ in ("LocalEntryNotFoundError", "OfflineModeIsEnabled"):
                raise MetricUnavailable(
                    f"weights missing: not in the HF cache {hf_cache_dir()} ({exc})"
                ) from None
            raise


def load_model(name: str, device: str | torch.device = "cpu"):
    """The pyiqa model behind metric `name` on `device`, created once per (name, device).

    Raises `MetricUnavailable` naming the exact path of a missing weight file.
    """
    from pid_bench.metrics.registry import get_metric  # the registry imports this module

    metric = get_metric(name)
    if metric.pyiqa_name is None:
        raise KeyError(f"{name!r} is not a pyiqa metric")
    device = torch.device(device)
    key = (metric.name, str(device))
    with _pyiqa_lock:
        if key in _pyiqa_models:
            return _pyiqa_models[key]
        files = _require_weights(metric)
        options = dict(_PYIQA_SPECS.get(metric.name, (None, {}, ()))[1])
        pyiqa_dir = next(
            (files[w.filename].parent for w in metric.weights if w.loader == "pyiqa"), None
        )
        clip = next((files[w.filename] for w in metric.weights if w.loader == "clip"), None)
        if clip is not None:
            options["backbone"] = str(clip)
        set_hf_offline()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pyiqa's and timm's deprecation noise
            import pyiqa

        with offline_weights(pyiqa_dir, force_timm_random=metric.pyiqa_name == "maniqa"):
            model = pyiqa.create_metric(metric.pyiqa_name, device=device, **options)
        model.eval()
        _pyiqa_models[key] = model
        return model


def _pyiqa_fn(name: str, full_reference: bool) -> MetricFn:
    def fn(image: torch.Tensor, context: MetricContext) -> torch.Tensor:
        reference = _needs_reference(image, context) if full_reference else None
        model = load_model(name, image.device)
        with torch.no_grad():
            x = image.float().clamp(0, 1)
            out = model(x, reference.clamp(0, 1)) if full_reference else model(x)
        return out.float().reshape(image.shape[0])

    return fn


# ---- pyiqa pass-through ------------------------------------------------------------------------

_pyiqa_configs: dict[str, dict] | None = None


def pyiqa_models() -> dict[str, dict]:
    """pyiqa's DEFAULT_CONFIGS (the table `pyiqa.list_models()` lists), read without importing
    pyiqa (which takes seconds); {} when pyiqa is not installed."""
    global _pyiqa_configs
    if _pyiqa_configs is None:
        import importlib.util

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


_passthrough: dict[str, Metric] = {}


def _pyiqa_passthrough(name: str) -> Metric:
    pyiqa_name = name.split(":", 1)[1]
    if name in _passthrough:
        return _passthrough[name]
    configs = pyiqa_models()
    if pyiqa_name not in configs:
        raise KeyError(
            f"unknown pyiqa metric {pyiqa_name!r} in {name!r}; pyiqa.list_models() has "
            f"{len(configs)}: {', '.join(sorted(configs))}"
        )
    config = configs[pyiqa_name]
    if "fid" in pyiqa_name or pyiqa_name == "inception_score":
        raise KeyError(f"{name!r} is set-level in pyiqa: use fid / kid")
    mode = config.get("metric_mode")
    if mode not in ("FR", "NR"):
        raise KeyError(f"{name!r}: pyiqa metric_mode {mode!r} is neither FR nor NR")
    spec = _PYIQA_SPECS.get(pyiqa_name)
    metric = Metric(
        name,
        "full_reference" if mode == "FR" else "no_reference",
        not config.get("lower_better", False),
        _pyiqa_fn(name, mode == "FR"),
        f"pyiqa {pyiqa_name!r} with its default options (metric_opts {config['metric_opts']}); "
        f"score range {config.get('score_range')}",
        weights=spec[2] if spec and not spec[1] else (),
        backend="pyiqa",
        pyiqa_name=pyiqa_name,
    )
    _passthrough[name] = metric
    return metric
