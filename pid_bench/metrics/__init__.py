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

# The package, one concept a module (base has no imports from its siblings; the registry imports
# the kind modules):
#   base            kinds, the protocol, errors and context, weight files, `Metric`, resizes
#   full_reference  psnr, ssim, ms_ssim (torchmetrics)
#   pyiqa_backed    the pyiqa metrics (lpips, dists and the no-reference ones), offline loading,
#                   pyiqa:<name> pass-through
#   pid_specific    latent consistency, CIEDE2000 colour drift, high-frequency energy
#   set_level       FID and KID
#   registry        the one list of metrics, name lookup, `measure`, `weight_status`, `describe`

from pid_bench.metrics.base import (
    COLOR_SPACE,
    CROP_BORDER,
    INCEPTION_WEIGHTS,
    KINDS,
    LUMA_WEIGHTS,
    RESIZE_KERNEL,
    Kind,
    Metric,
    MetricContext,
    MetricFn,
    MetricUnavailable,
    MetricUnavailableWarning,
    WeightFile,
    WeightStatus,
    bicubic_resize,
    protocol_fields,
    resize,
    to_unit_range,
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
    load_model,
    offline_weights,
    pyiqa_models,
    set_hf_offline,
)
from pid_bench.metrics.registry import (
    METRIC_ALIASES,
    METRICS,
    ROW_METRICS,
    Measurement,
    clear_caches,
    describe,
    expand_metric_names,
    get_metric,
    is_known_metric,
    is_set_level,
    measure,
    weight_status,
)
from pid_bench.metrics.set_level import (
    PATCH_SEED,
    PATCH_SIZE,
    PATCH_THRESHOLD,
    PATCHES_PER_IMAGE,
    InceptionFeatures,
    SetResult,
    _patches,
    compute_set_metrics,
    load_inception,
)

__all__ = [
    "COLOR_SPACE",
    "CROP_BORDER",
    "D65_WHITE",
    "INCEPTION_WEIGHTS",
    "KINDS",
    "LUMA_WEIGHTS",
    "METRICS",
    "METRIC_ALIASES",
    "PATCHES_PER_IMAGE",
    "PATCH_SEED",
    "PATCH_SIZE",
    "PATCH_THRESHOLD",
    "RESIZE_KERNEL",
    "ROW_METRICS",
    "XYZ_FROM_RGB",
    "InceptionFeatures",
    "Kind",
    "Measurement",
    "Metric",
    "MetricContext",
    "MetricFn",
    "MetricUnavailable",
    "MetricUnavailableWarning",
    "SetResult",
    "WeightFile",
    "WeightStatus",
    "_patches",
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
    "resize",
    "set_hf_offline",
    "srgb_to_lab",
    "to_unit_range",
    "weight_status",
]
