"""Metrics: one small interface and one registry (torchmetrics' style).

Each metric is a `Metric`: its name, `kind`, `higher_is_better`, the weight files it needs, a doc
string with its exact definition, and a compute call on batched RGB tensors ``[B, 3, H, W]``,
float, in ``[0, 1]``, on the cell's device. Kinds:

* ``full_reference``: the decode against the reference at the output size (psnr, ssim, ms_ssim,
  lpips, dists).
* ``no_reference``: the decode alone (niqe, musiq, clipiqa, maniqa, topiq_nr, and any pyiqa
  metric passed through as ``pyiqa:<name>``).
* ``set_level``: a distance between two sets of images (fid, kid); computed over a whole run by
  `compute_set_metrics`, never per row.
* ``latent``: PiD-specific, reading the cell's context (`MetricContext`: codec, clean latent,
  PiD's scale, native decode): latent_consistency_mse / _cos, lq_color_de2000, hf_energy_ratio.

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
#   set_level       FID and KID
#   custom          module.path:callable metrics, their search paths
#   registry        the one registry METRICS (frozen at its import), lookups, weight_status
#   measurement     `measure`: every metric of a list on one image, nulls with reasons

from pid_bench.metrics.base import (
    Metric,
    MetricContext,
    MetricFn,
    bicubic_resize,
    resize,
    to_unit_range,
)
from pid_bench.metrics.catalog import (
    COLOR_SPACE,
    CROP_BORDER,
    KINDS,
    LUMA_WEIGHTS,
    METRIC_ALIASES,
    PATCH_SEED,
    PATCH_SIZE,
    PATCH_THRESHOLD,
    PATCHES_PER_IMAGE,
    RESIZE_KERNEL,
    ROW_METRICS,
    Kind,
    MetricSpec,
    protocol_fields,
)
from pid_bench.metrics.errors import (
    MetricUnavailable,
    MetricUnavailableWarning,
    RegistryFrozenError,
)
from pid_bench.metrics.measurement import (
    Measurement,
    measure,
)
from pid_bench.metrics.pid_specific import (
    D65_WHITE,
    XYZ_FROM_RGB,
    ciede2000,
    hf_cutoff,
    hf_energy,
    luma,
    mean_ciede2000,
    srgb_to_lab,
)
from pid_bench.metrics.pyiqa_backed import (
    pyiqa_models,
)
from pid_bench.metrics.registry import (
    METRICS,
    MetricRegistry,
    clear_caches,
    describe,
    expand_metric_names,
    get_metric,
    is_known_metric,
    is_set_level,
    load_model,
    register_named_metric,
    weight_status,
)
from pid_bench.metrics.set_level import (
    InceptionFeatures,
    SetResult,
    compute_set_metrics,
    load_inception,
    random_patches,
)
from pid_bench.metrics.set_level import random_patches as _patches  # noqa: F401  (old name; tests)
from pid_bench.metrics.shared import (
    offline_weights,
    set_hf_offline,
)
from pid_bench.metrics.weights import (
    INCEPTION_WEIGHTS,
    WeightFile,
    WeightStatus,
)

__all__ = [
    "COLOR_SPACE",
    "CROP_BORDER",
    "D65_WHITE",
    "INCEPTION_WEIGHTS",
    "InceptionFeatures",
    "KINDS",
    "Kind",
    "LUMA_WEIGHTS",
    "METRICS",
    "METRIC_ALIASES",
    "Measurement",
    "Metric",
    "MetricContext",
    "MetricFn",
    "MetricRegistry",
    "MetricSpec",
    "MetricUnavailable",
    "MetricUnavailableWarning",
    "PATCHES_PER_IMAGE",
    "PATCH_SEED",
    "PATCH_SIZE",
    "PATCH_THRESHOLD",
    "RESIZE_KERNEL",
    "ROW_METRICS",
    "RegistryFrozenError",
    "SetResult",
    "WeightFile",
    "WeightStatus",
    "XYZ_FROM_RGB",
    "bicubic_resize",
    "ciede2000",
    "clear_caches",
    "compute_set_metrics",
    "describe",
    "expand_metric_names",
    "get_metric",
    "hf_cutoff",
    "hf_energy",
    "is_known_metric",
    "is_set_level",
    "load_inception",
    "load_model",
    "luma",
    "mean_ciede2000",
    "measure",
    "offline_weights",
    "protocol_fields",
    "pyiqa_models",
    "random_patches",
    "register_named_metric",
    "resize",
    "set_hf_offline",
    "srgb_to_lab",
    "to_unit_range",
    "weight_status",
]
