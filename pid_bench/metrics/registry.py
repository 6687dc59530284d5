"""The registry: the one list of metrics (`METRICS`), name lookup and aliases, `measure` (the
one call the cell makes), `weight_status`, `describe`, `clear_caches`."""

from __future__ import annotations

import math
import threading
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from pid_bench.metrics.base import (
    INCEPTION_WEIGHTS,
    KINDS,
    Metric,
    MetricContext,
    MetricUnavailable,
    MetricUnavailableWarning,
    WeightStatus,
)
from pid_bench.metrics.custom import custom_metric, is_custom_name
from pid_bench.metrics.full_reference import _ms_ssim, _psnr, _ssim
from pid_bench.metrics.pid_specific import (
    _hf_energy_ratio,
    _latent_consistency,
    _lq_color_de2000,
)
from pid_bench.metrics.pyiqa_backed import (
    _PYIQA_SPECS,
    _pyiqa_fn,
    _pyiqa_lock,
    _pyiqa_models,
    _pyiqa_passthrough,
)
from pid_bench.metrics.set_level import (
    PATCH_SEED,
    PATCH_SIZE,
    PATCHES_PER_IMAGE,
    _inception,
    _set_level,
)
from pid_bench.metrics.twin import (
    MIDTONE_L,
    SHADOW_L_MAX,
    TWIN_PSNR_MIN,
    TWIN_SSIM_MIN,
    _midtone_chroma_shift,
    _shadow_green_bias,
    _twin_lpips,
    _twin_pass,
    _twin_psnr,
    _twin_ssim,
)

# ---- the registry -----------------------------------------------------------------------------

_PYIQA_DOCS = {
    "lpips": "LPIPS v0.1, AlexNet trunk with the learned linear heads (Zhang et al. 2018), pyiqa "
    "'lpips'; inputs in [0, 1] (pyiqa maps to [-1, 1]); lower is better.",
    "dists": "DISTS (Ding et al. 2020), VGG16 trunk, pyiqa 'dists'; lower is better.",
    "niqe": "NIQE (Mittal et al. 2012) on the Y channel with the original pristine model "
    "(niqe_modelparameters.mat), pyiqa 'niqe'; lower is better.",
    "musiq": "MUSIQ (Ke et al. 2021) trained on KonIQ-10k, pyiqa 'musiq'; ~0-100, higher is better.",
    "clipiqa": "CLIP-IQA (Wang et al. 2023), OpenAI CLIP RN50 with pyiqa's prompt pairs, pyiqa "
    "'clipiqa'; 0-1, higher is better.",
    "maniqa": "MANIQA (Yang et al. 2022) trained on KonIQ-10k, pyiqa 'maniqa' (20 uniform 224 px "
    "crops); higher is better.",
    "topiq_nr": "TOPIQ no-reference (Chen et al. 2024), ResNet-50, KonIQ-10k, pyiqa 'topiq_nr'; "
    "higher is better.",
}


def _registry() -> dict[str, Metric]:
    metrics = [
        Metric(
            "psnr",
            "full_reference",
            True,
            _psnr,
            "PSNR in dB = 10 log10(1 / MSE), MSE over all pixels and the 3 channels, data range "
            "1 (torchmetrics peak_signal_noise_ratio); +inf for identical images.",
            backend="torchmetrics",
        ),
        Metric(
            "ssim",
            "full_reference",
            True,
            _ssim,
            "SSIM (Wang et al. 2004): Gaussian window 11x11, sigma 1.5, K1 0.01, K2 0.03, data "
            "range 1, per channel; the mean over the channels and the valid map (a 5 px border, "
            "where the window leaves the image, excluded). torchmetrics' SSIM map, cropped; "
            "= skimage structural_similarity(gaussian_weights=True, sigma=1.5, "
            "use_sample_covariance=False, data_range=1).",
            backend="torchmetrics",
        ),
        Metric(
            "ms_ssim",
            "full_reference",
            True,
            _ms_ssim,
            "MS-SSIM (Wang et al. 2003): 5 scales, weights (0.0448, 0.2856, 0.3001, 0.2363, "
            "0.1333), Gaussian 11x11 sigma 1.5, data range 1, relu-normalised "
            "(torchmetrics multiscale_structural_similarity_index_measure); needs sides >= 161.",
            backend="torchmetrics",
        ),
    ]
    for name in ("lpips", "dists", "niqe", "musiq", "clipiqa", "maniqa", "topiq_nr"):
        pyiqa_name, _, weights = _PYIQA_SPECS[name]
        full_reference = name in ("lpips", "dists")
        metrics.append(
            Metric(
                name,
                "full_reference" if full_reference else "no_reference",
                name not in ("lpips", "dists", "niqe"),
                _pyiqa_fn(name, full_reference),
                _PYIQA_DOCS[name],
                weights=weights,
                backend="pyiqa",
                pyiqa_name=pyiqa_name,
            )
        )
    set_doc = (
        "{name} between the run's decodes and references (torchmetrics {cls} on pytorch-fid's "
        "Inception pool3 features; whole images resized to 299, or, for images >= 2048 px, "
        f"{PATCHES_PER_IMAGE} random {PATCH_SIZE} px patches per image at seed {PATCH_SEED}); "
        "set-level: pid_bench.metrics.compute_set_metrics."
    )
    metrics += [
        Metric(
            name,
            "set_level",
            False,
            _set_level,
            set_doc.format(name=label, cls=cls),
            weights=(INCEPTION_WEIGHTS,),
            backend="torchmetrics",
        )
        for name, label, cls in (
            ("fid", "FID", "FrechetInceptionDistance"),
            ("kid", "KID (mean over subsets)", "KernelInceptionDistance"),
        )
    ]
    consistency = (
        "Decode downsampled by PiD's scale to the native size (antialiased bicubic), re-encoded "
        "with the backbone codec (codec.encode of the image in [-1, 1]) and compared with the "
        "clean latent (before noise): "
    )
    metrics += [
        Metric(
            "latent_consistency_mse",
            "latent",
            False,
            _latent_consistency,
            consistency + "mean squared difference over all latent elements.",
            group="latent_consistency",
        ),
        Metric(
            "latent_consistency_cos",
            "latent",
            True,
            _latent_consistency,
            consistency + "cosine similarity of the flattened latents.",
            group="latent_consistency",
        ),
        Metric(
            "lq_color_de2000",
            "latent",
            False,
            _lq_color_de2000,
            "Decode resized to the native decode's size (antialiased bicubic, clamped), then the "
            "mean over pixels of CIEDE2000 (kL=kC=kH=1) against the native decode; sRGB -> "
            "linear -> XYZ (D65) -> CIELAB with skimage's constants; colour drift from the "
            "latent's own colours.",
        ),
        Metric(
            "hf_energy_ratio",
            "latent",
            None,  # 1 is ideal against a reference; above it can be invented detail or noise
            _hf_energy_ratio,
            "E(decode) / E(baseline), E = spectral energy of the Hann-windowed, mean-removed "
            "BT.709 luma above the radial cutoff 1 / (2 scale) cycles per pixel (the native "
            "image's Nyquist, i.e. 1/scale of the output's); baseline = the reference, else the "
            "native decode bicubic-upscaled to the decode's size. 1 = as much fine detail as the "
            "reference; with the bicubic baseline values are >> 1.",
        ),
    ]
    twin = (
        "VAE-twin check: the decode downsampled (antialiased bicubic, clamped) to the native "
        "decode's size and compared with the native decode: "
    )
    metrics += [
        Metric("twin_psnr", "latent", True, _twin_psnr, twin + "PSNR (as psnr), dB."),
        Metric("twin_ssim", "latent", True, _twin_ssim, twin + "SSIM (as ssim)."),
        Metric(
            "twin_pass",
            "latent",
            True,
            _twin_pass,
            twin + f"1 when SSIM >= {TWIN_SSIM_MIN:g} and PSNR >= {TWIN_PSNR_MIN:g} dB "
            "(vLLM-Omni's PiD acceptance bar), else 0; its mean is the pass rate.",
        ),
        Metric(
            "twin_lpips",
            "latent",
            False,
            _twin_lpips,
            twin + "LPIPS (as lpips).",
            weights=_PYIQA_SPECS["lpips"][2],
            backend="pyiqa",
        ),
        Metric(
            "midtone_chroma_shift",
            "latent",
            False,
            _midtone_chroma_shift,
            twin + f"mean sqrt(da*^2 + db*^2) in CIELAB (D65) over the pixels whose native L* "
            f"is in [{MIDTONE_L[0]:g}, {MIDTONE_L[1]:g}]: midtones turning pink or any tint.",
        ),
        Metric(
            "shadow_green_bias",
            "latent",
            None,  # signed: 0 is ideal; the report flags large positive (greener) values
            _shadow_green_bias,
            twin + f"mean a*(native) - a*(decode) over the pixels whose native L* < "
            f"{SHADOW_L_MAX:g}: positive when the decode's shadows are greener.",
        ),
    ]
    return {m.name: m for m in metrics}


METRICS: dict[str, Metric] = _registry()

#: Names that stand for several metrics computed together.
METRIC_ALIASES: dict[str, tuple[str, ...]] = {
    "latent_consistency": ("latent_consistency_mse", "latent_consistency_cos"),
    "twin": ("twin_psnr", "twin_ssim", "twin_lpips", "twin_pass"),
}

#: Every metric with a per-row value (the schema's `metric_<name>` columns); set-level and
#: pyiqa pass-through metrics have none.
ROW_METRICS: tuple[str, ...] = tuple(n for n, m in METRICS.items() if m.kind != "set_level")


def get_metric(name: str) -> Metric:
    """A registered metric, or ``pyiqa:<name>`` for any `pyiqa.list_models()` name."""
    if name in METRICS:
        return METRICS[name]
    if name.startswith("pyiqa:"):
        return _pyiqa_passthrough(name)
    if is_custom_name(name):
        return custom_metric(name)
    known = ", ".join([*sorted(METRICS), *sorted(METRIC_ALIASES)])
    raise KeyError(f"unknown metric {name!r}; known: {known}, or pyiqa:<name>")


def expand_metric_names(names: Iterable[str]) -> list[str]:
    """Aliases expanded, order kept, duplicates dropped; raises KeyError for an unknown name."""
    out: list[str] = []
    for name in names:
        for each in METRIC_ALIASES.get(name, (name,)):
            get_metric(each)
            if each not in out:
                out.append(each)
    return out


def is_set_level(name: str) -> bool:
    """A registered set-level metric (fid, kid): one value per set of images, never per row."""
    return name in METRICS and METRICS[name].kind == "set_level"


def is_known_metric(name: str) -> bool:
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
    if not metric.weights:
        return WeightStatus("no weights needed", (), (), None)
    found, searched, missing = [], [], []
    for weight in metric.weights:
        candidates = weight.candidates()
        searched += [str(p) for p in candidates]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            missing.append(weight)
        else:
            found.append(str(path))
    if not missing:
        return WeightStatus("present", tuple(found), tuple(searched), None)
    hint = "; ".join(f"download {w.url} to {w.expected()}" for w in missing)
    return WeightStatus("missing", tuple(found), tuple(searched), hint)


# ---- the one call the cell makes --------------------------------------------------------------

_warned: set[str] = set()
_warn_lock = threading.Lock()


def _warn_once(name: str, reason: str) -> None:
    with _warn_lock:
        if name in _warned:
            return
        _warned.add(name)
    warnings.warn(f"metric {name} left null: {reason}", MetricUnavailableWarning, stacklevel=3)


@dataclass
class Measurement:
    """Values (None where not computed) and the reason for each None."""

    values: dict[str, float | None]
    reasons: dict[str, str]

    def columns(self, prefix: str = "metric_") -> dict[str, float | None]:
        return {f"{prefix}{name}": value for name, value in self.values.items()}


def measure(
    names: Iterable[str], image: torch.Tensor, context: MetricContext | None = None
) -> Measurement:
    """Every metric of `names` on one image ``[1, 3, H, W]`` in [0, 1]; never raises for a metric.

    A metric that cannot run (weights missing, input absent, set-level, its own error) is None
    with a reason; missing weights and failures also warn, once per metric per process. Metrics of one group (latent
    consistency) share one computation. NaN becomes None ("not finite").
    """
    if image.dim() != 4 or image.shape[0] != 1:
        raise ValueError(f"measure takes one image [1, 3, H, W], got {tuple(image.shape)}")
    context = context or MetricContext()
    values: dict[str, float | None] = {}
    reasons: dict[str, str] = {}
    shared: dict[str, dict[str, torch.Tensor] | Exception] = {}
    for name in expand_metric_names(names):
        metric = get_metric(name)
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
        if name in reasons and reasons[name].startswith(("weights missing", "failed")):
            _warn_once(name, reasons[name])  # absent inputs (no reference...) are no news
    return Measurement(values, reasons)


def clear_caches() -> None:
    """Forget created models and issued warnings (tests; a changed TORCH_HOME)."""
    with _pyiqa_lock:
        _pyiqa_models.clear()
        _inception.clear()
    with _warn_lock:
        _warned.clear()


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


def _check_mapping(mapping: Mapping[str, Metric]) -> None:
    for name, metric in mapping.items():
        assert name == metric.name and metric.kind in KINDS, name


_check_mapping(METRICS)
