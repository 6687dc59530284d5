"""Metrics: one small interface and one registry (torchmetrics' style).

Each metric is a `Metric`: its name, `kind`, `higher_is_better`, the weight files it needs, a doc
string with its exact definition, and a compute call on batched RGB tensors ``[B, 3, H, W]``,
float, in ``[0, 1]``, on the cell's device. Kinds:

* ``full_reference``: the decode against the reference at the output size (psnr, ssim, ms_ssim,
  lpips, dists).
* ``no_reference``: the decode alone (niqe, musiq, clipiqa, maniqa, topiq_nr, speck_rate,
  speck_rate_skin, and any pyiqa metric passed through as ``pyiqa:<name>``).
* ``set_level``: a distance between two sets of images (fid, kid); computed over a whole run by
  `compute_set_metrics`, never per row.
* ``latent``: PiD-specific, reading the cell's context (`MetricContext`: codec, clean latent,
  PiD's scale, native decode, tile plan): latent_consistency_mse / _cos, lq_color_de2000,
  hf_energy_ratio, the twin check, speck_ratio_bicubic, seam_score.

A metric whose inputs or weight files are absent raises `MetricUnavailable(reason)`; `measure`
(the one call the cell and `pid-bench score` make) turns that into a null value with the reason
(missing weights and failures also warn, once per metric per process) and never returns a made-up
number. Weights are read from
local files only (torch hub folders and the HF cache); nothing is downloaded. `weight_status`
says, for the doctor, which files each metric needs and whether they are there.

The exact definitions are in each metric's ``doc`` and in docs/metrics.md.
"""

# The package, one concept a module. Imports point down this list only (no module imports one
# above it, not even inside a function), so there is no import circle:
#   errors          MetricUnavailable, its warning, RegistryFrozenError            (no imports)
#   weights         weight files, where they are looked for, their status          (errors)
#   catalog         the built-in metrics' declarations as plain data, protocol     (weights)
#   shared          model lock, warn-once, offline weight loading                  (errors)
#   base            MetricContext, Metric, resizes                          (catalog, errors, weights)
#   full_reference  psnr, ssim, ms_ssim (torchmetrics)                             (base, errors)
#   pid_specific    latent consistency, CIEDE2000 colour drift, high-frequency energy
#   pyiqa_backed    the pyiqa networks (lpips, dists, the no-reference ones), pyiqa:<name>
#   twin            the VAE-twin check and colour QA
#   failure_modes   bright specks (all, on skin, vs bicubic) and seams at tile boundaries
#   set_level       FID and KID
#   custom          module.path:callable metrics, their search paths
#   registry        the one registry METRICS (frozen at its import), lookups, weight_status
#   measurement     `measure`: every metric of a list on one image, nulls with reasons
# errors, weights, catalog and shared do not import torch, and neither does this file: names
# are imported from their module when first read (PEP 562), so `pid_bench.schema`, which reads
# catalog, stays torch-free.

from __future__ import annotations

import importlib
from typing import Any

#: public name -> the module of this package that defines it.
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(
        ("MetricUnavailable", "MetricUnavailableWarning", "RegistryFrozenError"), "errors"
    ),
    **dict.fromkeys(("INCEPTION_WEIGHTS", "WeightFile", "WeightStatus"), "weights"),
    **dict.fromkeys(
        (
            "COLOR_SPACE",
            "CROP_BORDER",
            "KINDS",
            "LUMA_WEIGHTS",
            "METRIC_ALIASES",
            "PATCHES_PER_IMAGE",
            "PATCH_SEED",
            "PATCH_SIZE",
            "PATCH_THRESHOLD",
            "RESIZE_KERNEL",
            "ROW_METRICS",
            "Kind",
            "MetricSpec",
            "protocol_fields",
        ),
        "catalog",
    ),
    **dict.fromkeys(("offline_weights", "set_hf_offline"), "shared"),
    **dict.fromkeys(
        (
            "Metric",
            "MetricContext",
            "MetricFn",
            "bicubic_resize",
            "resize",
            "to_unit_range",
        ),
        "base",
    ),
    **dict.fromkeys(
        (
            "D65_WHITE",
            "XYZ_FROM_RGB",
            "ciede2000",
            "hf_cutoff",
            "hf_energy",
            "luma",
            "mean_ciede2000",
            "srgb_to_lab",
        ),
        "pid_specific",
    ),
    "pyiqa_models": "pyiqa_backed",
    **dict.fromkeys(
        (
            "SpeckCount",
            "count_specks",
            "local_median",
            "seam_positions",
            "skin_mask",
            "small_components",
            "speck_candidates",
        ),
        "failure_modes",
    ),
    **dict.fromkeys(
        (
            "InceptionFeatures",
            "SetResult",
            "compute_set_metrics",
            "load_inception",
            "random_patches",
        ),
        "set_level",
    ),
    **dict.fromkeys(
        (
            "METRICS",
            "MetricRegistry",
            "clear_caches",
            "describe",
            "expand_metric_names",
            "get_metric",
            "is_known_metric",
            "is_set_level",
            "load_model",
            "register_named_metric",
            "weight_status",
        ),
        "registry",
    ),
    **dict.fromkeys(("Measurement", "measure"), "measurement"),
}
# No module may be named like an export: importing it would set the package attribute to the
# module (why `measure` lives in measurement).
#: Old names kept readable: tests call `pid_bench.metrics._patches`.
_RENAMED = {"_patches": "random_patches"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    target = _RENAMED.get(name, name)
    module = _EXPORTS.get(target)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    # Not cached in this module's globals: a test that swaps `registry.METRICS` is seen here too.
    return getattr(importlib.import_module(f"{__name__}.{module}"), target)


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
